"""Label-free EM sweep on a toy regime: EM-FT, EM-RL-sequence, EM-RL-token over lr / steps / aggregation.

    OMP_NUM_THREADS=1 python recipes/sweep_toy_em.py --regime shortcut --n 400 --output sweep.json
    python recipes/sweep_toy_em.py --only em_ft --lrs 1e-5,3e-5 --steps 40,100 --output ft.json

Each run trains the regime's bundled checkpoint on unlabeled train-split prompts (`train_on_toy`), then
evaluates greedy and T = 1.0 accuracy (95% Wilson intervals) with route fractions and per-route accuracy
on ``--n`` held-out problems. The base model's figures (incl. the forced step-by-step ceiling) come
first. Results are written to ``--output`` after every run, and runs already there are skipped, so an
interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from emreason import toy
from emreason.atomic_io import write_json_atomic
from emreason.toy.evaluate import evaluate_toy
from emreason.toy.measure import describe, measure_model

# The default grid: every method at two learning rates (both aggregations for EM-RL), 40 steps,
# plus EM-FT at a lower lr / more steps / colder samples (its failure mode is sharpening toward the
# shortcut, so those are the knobs that could avoid it).
DEFAULT_GRID: list[dict[str, Any]] = [
    *(
        {"method": m, "steps": 40, "learning_rate": lr, "reward_aggregation": agg}
        for m, agg, lr in itertools.product(("em_rl_sequence", "em_rl_token"), ("mean", "sum"), (3e-5, 1e-4))
    ),
    *({"method": "em_ft", "steps": 40, "learning_rate": lr} for lr in (1e-5, 3e-5, 1e-4)),
    {"method": "em_ft", "steps": 100, "learning_rate": 1e-5},
    {"method": "em_ft", "steps": 40, "learning_rate": 3e-5, "temperature": 0.5},
]


def run_key(run: dict[str, Any]) -> str:
    """A stable name of one run's settings, e.g. ``em_rl_token|steps=40|learning_rate=3e-05|...``."""
    return "|".join([run["method"], *(f"{k}={run[k]}" for k in sorted(run) if k != "method")])


def _grid(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.grid_json:
        return json.loads(args.grid_json)
    methods = args.only.split(",") if args.only else ["em_ft", "em_rl_sequence", "em_rl_token"]
    if not (args.lrs or args.steps or args.aggregations):
        return [run for run in DEFAULT_GRID if run["method"] in methods]
    lrs = [float(x) for x in args.lrs.split(",")] if args.lrs else [3e-5, 1e-4]
    steps = [int(x) for x in args.steps.split(",")] if args.steps else [40]
    aggregations = args.aggregations.split(",") if args.aggregations else ["mean", "sum"]
    grid = []
    for method, lr, n_steps in itertools.product(methods, lrs, steps):
        if n_steps > 100:
            raise ValueError(f"the issue's budget is <= 100 optimizer steps, got {n_steps}")
        if method == "em_ft":
            grid.append({"method": method, "steps": n_steps, "learning_rate": lr})
        else:
            grid += [
                {"method": method, "steps": n_steps, "learning_rate": lr, "reward_aggregation": agg}
                for agg in aggregations
            ]
    return grid


def main(argv: list[str] | None = None) -> dict:
    from emreason.trainers.toy_runs import train_on_toy

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--regime", default="shortcut")
    parser.add_argument("--n", type=int, default=400, help="held-out problems per evaluation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, required=True, help="JSON file (resumed if it exists)")
    parser.add_argument(
        "--only", default=None, help="comma-separated methods (alone: their part of the default grid)"
    )
    parser.add_argument(
        "--grid-json", default=None, help='explicit runs, e.g. \'[{"method": "em_ft", "steps": 40, ...}]\''
    )
    parser.add_argument("--lrs", default=None, help="comma-separated learning rates")
    parser.add_argument("--steps", default=None, help="comma-separated step counts (<= 100)")
    parser.add_argument("--aggregations", default=None, help="EM-RL reward aggregations: mean,sum")
    args = parser.parse_args(argv)
    regime = toy.get_regime(args.regime)
    problems = toy.make_problems("heldout", args.n, seed=args.seed, levels=regime.levels)
    results: dict[str, Any] = {"regime": regime.name, "n": args.n, "seed": args.seed, "runs": {}}
    if args.output.is_file():
        previous = json.loads(args.output.read_text())
        same = (previous.get("regime"), previous.get("n"), previous.get("seed"))
        if same == (regime.name, args.n, args.seed):
            results = previous
    if "base" not in results:
        model, tokenizer = toy.load_model(regime=regime.name)
        results["base"] = measure_model(model, tokenizer, problems, seed=args.seed)
        write_json_atomic(args.output, results)
    grid = [run for run in _grid(args) if run_key(run) not in results["runs"]]
    for run in tqdm(grid, desc=f"sweep {regime.name}"):
        settings = dict(run)
        method = settings.pop("method")
        scratch = Path(tempfile.mkdtemp(prefix="sweep-"))
        try:
            start = time.perf_counter()
            tuned_dir = train_on_toy(
                method, scratch / "model", regime=regime.name, seed=args.seed, quiet=True, **settings
            )
            train_seconds = time.perf_counter() - start
            model, tokenizer = toy.load_model(tuned_dir)
            greedy = evaluate_toy(model, tokenizer, problems, temperature=0.0)
            sampled = evaluate_toy(model, tokenizer, problems, temperature=1.0, seed=args.seed)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        results["runs"][run_key(run)] = {
            **run,
            "train_seconds": round(train_seconds, 1),
            "greedy": describe(greedy),
            "T=1.0": describe(sampled),
        }
        write_json_atomic(args.output, results)
        g = greedy.accuracy
        tqdm.write(f"{run_key(run)}: greedy {100 * g:.1f}% T=1 {100 * sampled.accuracy:.1f}%")
    return results


if __name__ == "__main__":
    main()
