"""Atomic writes of reproduction results (JSON + PNG) under ``extras/reproduce/results/<method>/``."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

RESULTS_ROOT = Path(__file__).resolve().parent / "results"


def default_output_dir(method: str) -> Path:
    """Git-ignored default output folder of one reproduction script."""
    return RESULTS_ROOT / method


def _atomic_target(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return tmp


def write_json_atomic(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` as indented JSON to ``path`` via a temporary file and ``os.replace``."""
    path = Path(path)
    tmp = _atomic_target(path)
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, sort_keys=False)
            handle.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_figure_atomic(figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save a matplotlib ``figure`` as PNG to ``path`` atomically, then close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = _atomic_target(path)
    try:
        figure.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(figure)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
