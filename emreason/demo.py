"""`emreason demo`: every EM method on the bundled toy model, beside the honest baselines.

Evaluates held-out toy accuracy with greedy decoding and sampling at T = 0.5 / 0.7 / 1.0 (the baselines
the paper's Table 3 compares against), then EM-INF at T = 1.0 (no training), then EM-FT and EM-RL
(a few label-free steps on unlabeled training prompts), each with greedy and T = 1.0. Writes
``results.json`` and ``accuracy.png`` to the output folder and prints one comparison table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from emreason import toy
from emreason.atomic_io import write_json_atomic
from emreason.toy.evaluate import ToyEvalResult, evaluate_toy

METHODS = ("em_inf", "em_ft", "em_rl_sequence", "em_rl_token")
LABELS = {
    "em_inf": "EM-INF",
    "em_ft": "EM-FT",
    "em_rl_sequence": "EM-RL-sequence",
    "em_rl_token": "EM-RL-token",
}
BASELINE_TEMPERATURES = (0.0, 0.5, 0.7, 1.0)


@dataclass
class DemoRow:
    method: str
    decoding: str
    result: ToyEvalResult
    note: str = ""

    def as_dict(self) -> dict:
        return {"method": self.method, "decoding": self.decoding, **self.result.summary(), "note": self.note}


def _decoding_name(temperature: float) -> str:
    return "greedy" if temperature == 0 else f"T={temperature:g}"


def run_demo(
    output: Path,
    *,
    n_problems: int = 500,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    methods: tuple[str, ...] = METHODS,
    model_path: str | None = None,
    train_steps: int | None = None,
) -> dict:
    """Run the demo; returns the results dict that is also written to ``output/results.json``."""
    from rich.console import Console
    from transformers import LogitsProcessorList

    from emreason.integrations.transformers import EMInfLogitsProcessor
    from emreason.trainers.toy_runs import TOY_DEFAULTS, train_on_toy

    # A fixed minimum width so the table is not wrapped into an unreadable column when piped.
    console = Console(width=max(120, Console().width))
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    if n_problems < 1:
        raise ValueError(f"n_problems must be >= 1, got {n_problems}")
    output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model, tokenizer = toy.load_model(model_path, device=device, dtype=dtype)
    problems = toy.make_problems("heldout", n_problems, seed=seed)
    rows: list[DemoRow] = []

    def evaluate(label: str, m, temperature: float, processor=None, note: str = "") -> None:
        with console.status(f"{label}: {_decoding_name(temperature)} on {n_problems} held-out problems"):
            result = evaluate_toy(
                m, tokenizer, problems, temperature=temperature, seed=seed, logits_processor=processor
            )
        rows.append(DemoRow(label, _decoding_name(temperature), result, note))
        console.log(f"{label:>16} {_decoding_name(temperature):>7}: {100 * result.accuracy:5.1f}%")

    for temperature in BASELINE_TEMPERATURES:
        evaluate("base", model, temperature)

    if "em_inf" in methods:
        evaluate(
            "EM-INF",
            model,
            1.0,
            LogitsProcessorList([EMInfLogitsProcessor()]),
            note="3 steps, threshold 0.3 (defaults)",
        )
        evaluate(
            "EM-INF (10 steps)",
            model,
            1.0,
            LogitsProcessorList([EMInfLogitsProcessor(steps=10, threshold=0.1)]),
            note="10 steps, threshold 0.1",
        )

    for method in (m for m in methods if m != "em_inf"):
        settings = dict(TOY_DEFAULTS[method])
        if train_steps is not None:
            settings["steps"] = train_steps
        with console.status(f"training {method} ({settings['steps']} label-free steps)"):
            tuned_dir = train_on_toy(
                method, output / "models" / method, model_path=model_path, seed=seed, **settings
            )
        tuned, _ = toy.load_model(tuned_dir, device=device, dtype=dtype)
        note = f"{settings['steps']} steps, lr {settings['learning_rate']:g}"
        evaluate(LABELS[method], tuned, 0.0, note=note)
        evaluate(LABELS[method], tuned, 1.0, note=note)

    results = {
        "model": str(model_path or toy.model_path()),
        "n_problems": n_problems,
        "seed": seed,
        "device": device,
        "dtype": dtype,
        "rows": [row.as_dict() for row in rows],
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    write_json_atomic(output / "results.json", results)
    _plot(rows, output / "accuracy.png")
    _print_table(console, rows, results)
    return results


def _print_table(console, rows: list[DemoRow], results: dict) -> None:
    from rich.table import Table

    table = Table(title=f"Held-out toy accuracy ({results['n_problems']} problems, 95% Wilson CI)")
    for column in ("method", "decoding", "accuracy", "95% CI", "model entropy (nats/token)", "note"):
        table.add_column(column)
    for row in rows:
        r = row.result
        table.add_row(
            row.method,
            row.decoding,
            f"{100 * r.accuracy:.1f}%",
            f"[{100 * r.ci_low:.1f}, {100 * r.ci_high:.1f}]",
            f"{r.mean_entropy:.3f}",
            row.note,
        )
    console.print(table)
    console.print(f"wall time {results['wall_seconds']} s")


def _plot(rows: list[DemoRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{row.method}\n{row.decoding}" for row in rows]
    acc = [100 * row.result.accuracy for row in rows]
    # Clamp at 0: at 100% accuracy the Wilson bound can sit a rounding error below the point estimate.
    err = [
        [max(0.0, 100 * (row.result.accuracy - row.result.ci_low)) for row in rows],
        [max(0.0, 100 * (row.result.ci_high - row.result.accuracy)) for row in rows],
    ]
    colors = [
        "tab:gray" if row.method == "base" else "tab:blue" if row.decoding == "greedy" else "tab:orange"
        for row in rows
    ]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4))
    ax.bar(range(len(rows)), acc, yerr=err, color=colors, capsize=3)
    ax.set_xticks(range(len(rows)), labels, rotation=45, ha="right", fontsize=8)
    sampled_base = [row.result.accuracy for row in rows if row.method == "base" and row.decoding == "T=1"]
    if sampled_base:
        ax.axhline(100 * sampled_base[0], color="tab:gray", linestyle="--", linewidth=1, label="base, T=1")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("emreason demo: entropy minimization on the toy reasoning model")
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
