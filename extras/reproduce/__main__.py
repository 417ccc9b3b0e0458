"""Run every extras reproduction in turn and time it: ``python -m emreason.extras.reproduce``.

    python -m emreason.extras.reproduce                       # all eight, full settings
    python -m emreason.extras.reproduce --quick               # the scripts' smoke modes
    python -m emreason.extras.reproduce --only ngvi,jala_em --output /tmp/repro

Each script runs in its own process (``python -m emreason.extras.reproduce.<name> --output DIR/<name>``),
so one failure does not stop the others and its CPU time is measured on its own (children's user + system
time from ``resource``). One progress bar over the scripts, then a table; ``timings.json`` in ``--output``
holds the same rows (wall and CPU seconds, exit status, machine load at the start and the end). The issue's
budget is 20 minutes for all eight on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from emreason.extras.reproduce.result_files import RESULTS_ROOT, write_json_atomic

# Heterogeneous corruption has no --quick mode: its smoke run is fewer trials.
SCRIPTS: dict[str, list[str]] = {
    "pessimistic_integration": ["--quick"],
    "ngvi": ["--quick"],
    "heterogeneous_corruption": ["--trials", "10"],
    "jala_em": ["--quick"],
    "diffusion_molrg": ["--quick"],
    "serial_dependence": ["--quick"],
    "data_attribution": ["--quick"],
    "grokking_flatness": ["--quick"],
}


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_one(name: str, output: Path, quick: bool, verbose: bool) -> dict:
    """Run one reproduction script; its wall and CPU seconds and exit status. Output goes to a log."""
    command = [sys.executable, "-m", f"emreason.extras.reproduce.{name}", "--output", str(output / name)]
    command += SCRIPTS[name] if quick else []
    (output / name).mkdir(parents=True, exist_ok=True)
    log = output / name / "run.log"
    cpu0, wall0 = children_cpu_seconds(), time.perf_counter()
    with open(log, "w") as stream:
        sink = None if verbose else stream
        status = subprocess.run(command, stdout=sink, stderr=sink, check=False).returncode
    return {
        "method": name,
        "wall_s": round(time.perf_counter() - wall0, 1),
        "cpu_s": round(children_cpu_seconds() - cpu0, 1),
        "exit_status": status,
        "log": str(log),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=RESULTS_ROOT, help="one folder per script")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {', '.join(SCRIPTS)}")
    parser.add_argument("--quick", action="store_true", help="each script's smoke mode")
    parser.add_argument("--verbose", action="store_true", help="show the scripts' own output")
    args = parser.parse_args(argv)
    names = list(SCRIPTS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(names) - set(SCRIPTS))
        if unknown:
            parser.error(f"unknown script(s) {unknown}; known: {list(SCRIPTS)}")

    from rich.console import Console
    from rich.table import Table
    from tqdm import tqdm

    load_start = os.getloadavg()[0]
    rows = []
    for name in tqdm(names, desc="reproductions", unit="script", disable=args.verbose):
        rows.append(run_one(name, args.output, args.quick, args.verbose))
    summary = {
        "quick": args.quick,
        "cpu_count": os.cpu_count(),
        "load_average_start": round(load_start, 2),
        "load_average_end": round(os.getloadavg()[0], 2),
        "total_wall_s": round(sum(r["wall_s"] for r in rows), 1),
        "total_cpu_s": round(sum(r["cpu_s"] for r in rows), 1),
        "rows": rows,
    }
    write_json_atomic(args.output / "timings.json", summary)

    table = Table(title=f"extras reproductions ({'quick' if args.quick else 'full'})")
    for column in ("method", "wall s", "CPU s", "status"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for r in rows:
        status = "ok" if r["exit_status"] == 0 else f"failed ({r['exit_status']}): {r['log']}"
        table.add_row(r["method"], f"{r['wall_s']:.0f}", f"{r['cpu_s']:.0f}", status)
    table.add_row("total", f"{summary['total_wall_s']:.0f}", f"{summary['total_cpu_s']:.0f}", "")
    Console().print(table)
    return summary


if __name__ == "__main__":
    result = main()
    raise SystemExit(0 if all(r["exit_status"] == 0 for r in result["rows"]) else 1)
