"""Locate and read benchmark files: the shared offline copy, a user-given path, or the Hugging Face hub.

The offline copy lives in ``$EMREASON_DATA_DIR`` or, by default, ``../shared/data`` next to the repository
checkout (see that folder's README.md and MANIFEST.tsv). Readers return plain lists of dicts; JSON only,
never pickle.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path
from typing import Any

_REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path | None:
    """The offline benchmark folder, or None when it is absent."""
    configured = os.environ.get("EMREASON_DATA_DIR")
    candidates = [Path(configured)] if configured else []
    candidates += [_REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return None


def require_data_file(relative: str) -> Path:
    """Path of ``relative`` inside :func:`data_dir`; FileNotFoundError naming what is missing."""
    root = data_dir()
    if root is None:
        raise FileNotFoundError(
            "benchmark data folder not found: set EMREASON_DATA_DIR or place it at ../shared/data "
            f"(needed: {relative}); or pass --data-path / use the hub"
        )
    path = root / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return path


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a ``.jsonl``, ``.jsonl.gz``, JSON list or pandas column-dict ``.json`` file.

    JSON-lines content is detected by content, not by name (LeetCode's ``.json`` is JSON lines).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        text = handle.read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        records = json.loads(text)
    elif stripped.startswith("{"):
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, dict) and whole and all(isinstance(v, dict) for v in whole.values()):
            columns = list(whole)
            rows = list(whole[columns[0]])
            records = [{c: whole[c][r] for c in columns} for r in rows]
        elif isinstance(whole, dict):
            records = [whole]
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        raise ValueError(f"{path}: not JSON or JSON lines")
    if not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path}: every record must be a JSON object")
    return records


def load_from_hub(name: str, split: str, config: str | None = None) -> list[dict[str, Any]]:
    """Rows of a hub dataset via ``datasets`` (needs network or a populated HF cache)."""
    import datasets

    dataset = datasets.load_dataset(name, config, split=split)
    return [dict(row) for row in dataset]


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_of_records(records: list[dict[str, Any]]) -> str:
    """Content hash of records loaded from somewhere without a single file (the hub)."""
    return hashlib.sha256(json.dumps(records, sort_keys=True, default=str).encode()).hexdigest()
