"""`emreason demo`: every EM method on both bundled toy regimes, beside the honest baselines.

For each regime (see `emreason.toy.regimes`):

* ``default`` (regime 1): greedy and sampling at T = 0.5 / 0.7 / 1.0 (the paper's Table 3 baselines),
  EM-INF at T = 1.0, then EM-FT / EM-RL-sequence / EM-RL-token, each evaluated greedy and at T = 1.0.
  Greedy is already right; EM sharpens sampling toward it.
* ``shortcut`` (regime 2): greedy, T = 1.0 and the ceiling (greedy forced onto the step-by-step route),
  EM-INF, then the three label-free trainers. Greedy takes a usually-wrong shortcut; EM-RL with
  per-token mean rewards moves greedy onto the step-by-step route, with no labels.

Writes ``results.json`` (``{"regimes": {NAME: {"rows": [...]}}}``) and ``accuracy.png`` (one panel per
regime) and prints one table per regime. Output is one progress bar per phase and the tables; library
warnings, trainer log dicts and weight-loading bars are hidden unless ``verbose``.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from emreason import toy
from emreason.atomic_io import write_json_atomic
from emreason.toy.evaluate import ToyEvalResult, evaluate_toy
from emreason.toy.measure import route_breakdown

METHODS = ("em_inf", "em_ft", "em_rl_sequence", "em_rl_token")
LABELS = {
    "em_inf": "EM-INF",
    "em_ft": "EM-FT",
    "em_rl_sequence": "EM-RL-sequence",
    "em_rl_token": "EM-RL-token",
}
# Baseline temperatures per regime (0 = greedy). Regime 2 adds the forced step-by-step ceiling.
BASELINE_TEMPERATURES = {"default": (0.0, 0.5, 0.7, 1.0), "shortcut": (0.0, 1.0)}
CEILING = "base, forced step-by-step"


@dataclass
class DemoRow:
    method: str
    decoding: str
    result: ToyEvalResult
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        r = self.result
        return {
            "method": self.method,
            "decoding": self.decoding,
            "accuracy": round(r.accuracy, 4),
            "ci_low": round(r.ci_low, 4),
            "ci_high": round(r.ci_high, 4),
            "n": r.n,
            # extras
            "ci95": [round(r.ci_low, 4), round(r.ci_high, 4)],
            "mean_token_entropy": round(r.mean_entropy, 4),
            "routes": {
                route: {"fraction": round(v["fraction"], 4), "accuracy": v["accuracy"]}
                for route, v in route_breakdown(r.completions, r.correct).items()
            },
            "note": self.note,
        }


def decoding_name(temperature: float) -> str:
    """``"greedy"`` for 0, else ``"T=0.5"``, ``"T=1.0"``."""
    return "greedy" if temperature == 0 else f"T={temperature:.1f}"


@contextlib.contextmanager
def quiet_libraries(verbose: bool) -> Iterator[None]:
    """Hide library warnings, info logs and weight-loading/saving bars (unless ``verbose``)."""
    if verbose:
        yield
        return
    import datasets
    import transformers

    tf_logging = transformers.utils.logging
    old_verbosity = tf_logging.get_verbosity()
    old_levels = {name: logging.getLogger(name).level for name in ("trl", "accelerate", "datasets")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tf_logging.set_verbosity_error()
        tf_logging.disable_progress_bar()
        datasets.disable_progress_bars()
        for name in old_levels:
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            yield
        finally:
            tf_logging.set_verbosity(old_verbosity)
            tf_logging.enable_progress_bar()
            datasets.enable_progress_bars()
            for name, level in old_levels.items():
                logging.getLogger(name).setLevel(level)


def run_demo(
    output: Path,
    *,
    regimes: Sequence[str] = toy.REGIME_NAMES,
    n_problems: int = 500,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    methods: tuple[str, ...] = METHODS,
    model_path: str | None = None,
    train_steps: int | None = None,
    verbose: bool = False,
) -> dict:
    """Run the demo on ``regimes``; returns the results dict also written to ``output/results.json``.

    ``model_path`` replaces the checkpoint of every selected regime (each is still evaluated on its own
    problem levels); ``train_steps`` overrides the trainers' chosen step counts.
    """
    from rich.console import Console

    specs = [toy.get_regime(name) for name in regimes]  # ValueError listing valid names
    if not specs:
        raise ValueError(f"no regime selected; choose from {list(toy.REGIME_NAMES)}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    if n_problems < 1:
        raise ValueError(f"n_problems must be >= 1, got {n_problems}")
    if train_steps is not None and train_steps < 1:
        raise ValueError(f"train_steps must be >= 1, got {train_steps}")
    if model_path is not None and not Path(model_path).is_dir():
        raise FileNotFoundError(f"model directory not found: {model_path}")
    # A fixed minimum width so the table is not wrapped into an unreadable column when piped.
    console = Console(width=max(130, Console().width))
    output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results: dict[str, Any] = {
        "n_problems": n_problems,
        "seed": seed,
        "device": device,
        "dtype": dtype,
        "regimes": {},
    }
    all_rows: dict[str, list[DemoRow]] = {}
    with quiet_libraries(verbose):
        for spec in specs:
            regime_start = time.perf_counter()
            rows = _run_regime(
                spec, output, n_problems, seed, device, dtype, methods, model_path, train_steps, verbose
            )
            all_rows[spec.name] = rows
            results["regimes"][spec.name] = {
                "regime": spec.number,
                "description": spec.description,
                "model": str(model_path or toy.model_path(spec.name)),
                "levels": list(spec.levels),
                "rows": [row.as_dict() for row in rows],
                "wall_seconds": round(time.perf_counter() - regime_start, 1),
            }
    results["wall_seconds"] = round(time.perf_counter() - start, 1)
    write_json_atomic(output / "results.json", results)
    _plot(all_rows, results, output / "accuracy.png")
    for spec in specs:
        _print_table(console, spec, all_rows[spec.name], results)
    console.print(f"wall time {results['wall_seconds']} s")
    return results


def _run_regime(
    spec: toy.Regime,
    output: Path,
    n_problems: int,
    seed: int,
    device: str,
    dtype: str,
    methods: tuple[str, ...],
    model_path: str | None,
    train_steps: int | None,
    verbose: bool,
) -> list[DemoRow]:
    from tqdm.auto import tqdm
    from transformers import LogitsProcessorList

    from emreason.integrations.transformers import EMInfLogitsProcessor
    from emreason.trainers.toy_runs import toy_defaults, train_on_toy

    model, tokenizer = toy.load_model(model_path, device=device, dtype=dtype, regime=spec.name)
    problems = toy.make_problems("heldout", n_problems, seed=seed, levels=spec.levels)
    rows: list[DemoRow] = []
    name = f"regime {spec.number} ({spec.name})"

    def evaluate(label: str, m, temperature: float, processor=None, note: str = "", decoding=None):
        result = evaluate_toy(
            m, tokenizer, problems, temperature=temperature, seed=seed, logits_processor=processor
        )
        rows.append(DemoRow(label, decoding or decoding_name(temperature), result, note))

    # Phase 1: the base model's decodings (and EM-INF, which needs no training).
    baseline = list(BASELINE_TEMPERATURES.get(spec.name, (0.0, 1.0)))
    evaluations = len(baseline) + (spec.name == "shortcut") + ("em_inf" in methods)
    with tqdm(total=evaluations, desc=f"{name}: base model + EM-INF", unit="eval") as bar:
        for temperature in baseline:
            evaluate("base", model, temperature)
            bar.update(1)
        if spec.name == "shortcut":
            evaluate(
                CEILING,
                model,
                0.0,
                LogitsProcessorList([toy.ForceStepByStep(tokenizer)]),
                note="ceiling",
            )
            bar.update(1)
        if "em_inf" in methods:
            evaluate(
                "EM-INF",
                model,
                1.0,
                LogitsProcessorList([EMInfLogitsProcessor()]),
                note="defaults: 3 steps, thr. 0.3",
            )
            bar.update(1)

    # Phase 2..: one per label-free trainer (its optimizer steps, then its two evaluations).
    for method in (m for m in methods if m != "em_inf"):
        settings = toy_defaults(method, spec.name)
        if train_steps is not None:
            settings["steps"] = train_steps
        with tqdm(total=settings["steps"] + 2, desc=f"{name}: {LABELS[method]}", unit="step") as bar:
            tuned_dir = train_on_toy(
                method,
                output / "models" / spec.name / method,
                model_path=model_path,
                seed=seed,
                regime=spec.name,
                quiet=not verbose,
                progress=bar,
                **settings,
            )
            tuned, _ = toy.load_model(tuned_dir, device=device, dtype=dtype)
            note = f"{settings['steps']} steps, lr {settings['learning_rate']:g}"
            if "reward_aggregation" in settings:
                note += f", {settings['reward_aggregation']}"
            evaluate(LABELS[method], tuned, 0.0, note=note)
            bar.update(1)
            evaluate(LABELS[method], tuned, 1.0, note=note)
            bar.update(1)
    return rows


def _print_table(console, spec: toy.Regime, rows: list[DemoRow], results: dict) -> None:
    from rich.table import Table

    table = Table(
        title=f"Regime {spec.number} ({spec.name}): held-out toy accuracy, levels "
        f"{'-'.join(map(str, spec.levels))}, {results['n_problems']} problems, 95% Wilson CI"
    )
    for column in ("method", "decoding", "accuracy", "95% CI", "step-by-step", "entropy", "note"):
        table.add_column(column)
    for row in rows:
        r = row.result
        routes = route_breakdown(r.completions, r.correct)
        table.add_row(
            row.method,
            row.decoding,
            f"{100 * r.accuracy:.1f}%",
            f"[{100 * r.ci_low:.1f}, {100 * r.ci_high:.1f}]",
            f"{100 * routes['step-by-step']['fraction']:.0f}%",
            f"{r.mean_entropy:.3f}",
            row.note,
        )
    console.print(table)


def _plot(all_rows: dict[str, list[DemoRow]], results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(all_rows)
    widths = [max(4.0, 0.7 * len(all_rows[n])) for n in names]
    fig, axes = plt.subplots(
        1, len(names), figsize=(sum(widths) + 1, 4.5), squeeze=False, gridspec_kw={"width_ratios": widths}
    )
    for ax, name in zip(axes[0], names):
        rows = all_rows[name]
        labels = [f"{row.method}\n{row.decoding}" for row in rows]
        acc = [100 * row.result.accuracy for row in rows]
        # Clamp at 0: at 100% accuracy the Wilson bound can sit a rounding error below the estimate.
        err = [
            [max(0.0, 100 * (row.result.accuracy - row.result.ci_low)) for row in rows],
            [max(0.0, 100 * (row.result.ci_high - row.result.accuracy)) for row in rows],
        ]
        colors = [
            "tab:green"
            if row.method == CEILING
            else "tab:gray"
            if row.method == "base"
            else "tab:blue"
            if row.decoding == "greedy"
            else "tab:orange"
            for row in rows
        ]
        ax.bar(range(len(rows)), acc, yerr=err, color=colors, capsize=3)
        ax.set_xticks(range(len(rows)), labels, rotation=50, ha="right", fontsize=7)
        base_greedy = [r.result.accuracy for r in rows if r.method == "base" and r.decoding == "greedy"]
        if base_greedy:
            ax.axhline(100 * base_greedy[0], color="tab:gray", linestyle="--", lw=1)
            ax.text(len(rows) - 0.5, 100 * base_greedy[0] + 1, "base greedy", ha="right", fontsize=7)
        ax.set_ylim(0, 105)
        spec = toy.get_regime(name)
        ax.set_title(f"regime {spec.number} ({name})", fontsize=10)
    axes[0][0].set_ylabel("held-out accuracy (%)")
    fig.suptitle("emreason demo: label-free entropy minimization on the toy reasoning models", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def check_device(device: str) -> None:
    """Raise ValueError for an unparsable or unavailable device string."""
    try:
        parsed = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"bad device {device!r}: {err}") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    if parsed.type not in ("cpu", "cuda", "mps", "xpu"):
        raise ValueError(f"unsupported device {device!r}")
