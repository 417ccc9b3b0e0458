"""Atomic file writes: a reader never sees a half-written result file (standard library only, so that
`emreason.extras` can use it without touching the LLM stack)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def write_json_atomic(
    path: str | os.PathLike,
    payload: Any,
    *,
    sort_keys: bool = False,
    indent: int | None = 2,
    opener: Callable[..., IO[str]] = open,
) -> Path:
    """Write ``payload`` as indented JSON to ``path`` via a temporary file in the same folder, fsync and
    ``os.replace``. ``opener`` may be e.g. ``gzip.open`` (called as ``opener(tmp, "wt", encoding=...)``).
    Values JSON cannot encode are written as ``str(value)``."""
    path = Path(path)
    with atomic_target(path) as temporary:
        with opener(temporary, "wt", encoding="utf-8") as stream:
            json.dump(payload, stream, indent=indent, sort_keys=sort_keys, default=str)
            stream.write("\n")
    return path


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike) -> Iterator[str]:
    """A temporary file name beside ``path`` to write to (close it before the block ends); on success it
    is fsynced and ``os.replace``d onto ``path``, on error removed. For writers that take a file name
    (h5py, numpy, ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield temporary
        with open(temporary, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
