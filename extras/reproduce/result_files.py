"""Atomic writes of reproduction results (JSON + PNG) under ``extras/reproduce/results/<method>/``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from emreason.atomic_io import write_json_atomic  # noqa: F401  (re-exported for the scripts)

RESULTS_ROOT = Path(__file__).resolve().parent / "results"


def default_output_dir(method: str) -> Path:
    """Git-ignored default output folder of one reproduction script."""
    return RESULTS_ROOT / method


def _atomic_target(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return tmp


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
