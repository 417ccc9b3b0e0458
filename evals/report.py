"""``emreason eval report DIR [DIR...]``: a comparison table (terminal + Markdown) and a bar plot with CIs."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def load_run(directory: str | Path) -> dict[str, dict[str, Any]]:
    """Task name -> metrics of one output folder (from ``*/metrics.json``, falling back to the summary)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a folder")
    runs: dict[str, dict[str, Any]] = {}
    summary = directory / "metrics.json"
    if summary.is_file():
        runs.update(json.loads(summary.read_text()).get("tasks", {}))
    for path in sorted(directory.glob("*/metrics.json")):
        metrics = json.loads(path.read_text())
        runs[metrics.get("task", path.parent.name)] = metrics
    if not runs:
        raise FileNotFoundError(f"no metrics.json under {directory}")
    return runs


def comparison(directories: Sequence[str | Path]) -> tuple[list[str], list[str], dict]:
    """(run labels, task names, {(label, task): (mean, low, high, n)}) for pass@1."""
    labels, cells, tasks = [], {}, []
    for directory in directories:
        label = Path(directory).name or str(directory)
        while label in labels:
            label += "'"
        labels.append(label)
        for task, metrics in load_run(directory).items():
            if task not in tasks:
                tasks.append(task)
            score = metrics.get("scores", {}).get("pass@1")
            if score:
                cells[(label, task)] = (score["mean"], *score["ci95"], metrics.get("n_problems_complete"))
    return labels, tasks, cells


def markdown_table(labels: list[str], tasks: list[str], cells: dict) -> str:
    lines = ["| task | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for task in tasks:
        row = []
        for label in labels:
            cell = cells.get((label, task))
            row.append(
                "-" if cell is None else f"{100 * cell[0]:.1f} [{100 * cell[1]:.1f}, {100 * cell[2]:.1f}]"
            )
        lines.append(f"| {task} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(labels: list[str], tasks: list[str], cells: dict, path: str | Path) -> Path:
    """Grouped bars of pass@1 (%) per task and run, with 95% CI whiskers; saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    width = 0.8 / max(1, len(labels))
    figure, axes = plt.subplots(figsize=(max(5, 1.4 * len(tasks) * max(1, len(labels)) ** 0.5), 3.6))
    positions = np.arange(len(tasks))
    for offset, label in enumerate(labels):
        means, errors = [], [[], []]
        for task in tasks:
            mean, low, high, _ = cells.get((label, task), (np.nan, np.nan, np.nan, 0))
            means.append(100 * mean)
            errors[0].append(100 * (mean - low))
            errors[1].append(100 * (high - mean))
        axes.bar(positions + offset * width, means, width, yerr=errors, capsize=3, label=label)
    axes.set_xticks(positions + width * (len(labels) - 1) / 2, tasks, rotation=20)
    axes.set_ylabel("pass@1 (%)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emreason eval report", description=__doc__)
    parser.add_argument("dirs", nargs="+", help="output folders of `emreason eval`")
    parser.add_argument("--plot", default=None, help="PNG path (default: <first dir>/comparison.png)")
    parser.add_argument("--markdown", default=None, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    try:
        labels, tasks, cells = comparison(args.dirs)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    from rich.console import Console
    from rich.table import Table

    table = Table(title="pass@1 (%) [95% CI]")
    table.add_column("task")
    for label in labels:
        table.add_column(label, justify="right")
    for task in tasks:
        row = []
        for label in labels:
            cell = cells.get((label, task))
            row.append(
                "-" if cell is None else f"{100 * cell[0]:.1f} [{100 * cell[1]:.1f}, {100 * cell[2]:.1f}]"
            )
        table.add_row(task, *row)
    Console().print(table)
    text = markdown_table(labels, tasks, cells)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    figure = plot(labels, tasks, cells, args.plot or Path(args.dirs[0]) / "comparison.png")
    print(f"plot: {figure}")
    return 0
