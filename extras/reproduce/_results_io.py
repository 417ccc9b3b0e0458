"""Atomic writers for the reproduction scripts' JSON and PNG outputs (part 1 of emreason.extras)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]


def default_output_dir(method: str) -> Path:
    """``extras/reproduce/results/<method>/`` inside the repository (git-ignored)."""
    return REPO_ROOT / "extras" / "reproduce" / "results" / method


def write_json_atomic(payload: dict[str, Any], path: Path) -> None:
    """Write ``payload`` as indented JSON via a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        json.dump(payload, handle, indent=2, sort_keys=False)
        temp_name = handle.name
    os.replace(temp_name, path)


def save_figure_atomic(figure: plt.Figure, path: Path) -> None:
    """Save ``figure`` as PNG via a temporary file and ``os.replace``, then close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".png", delete=False) as handle:
        temp_name = handle.name
    figure.savefig(temp_name, dpi=120, bbox_inches="tight", format="png")
    plt.close(figure)
    os.replace(temp_name, path)
