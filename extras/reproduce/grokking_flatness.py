"""Reproduce "flatness is necessary, neural collapse is not" at CPU scale: grokking of a small transformer on
(a + b) mod p, with a plain run, a collapse run (loss + lambda NC), an anti-collapse run (loss - lambda NC)
and an anti-flatness run (loss - lambda kappa), the regularisers in the paper's linear form.

Writes ``grokking_flatness.json`` and ``grokking_flatness.png`` to ``--output``
(default ``extras/reproduce/results/grokking_flatness/``).

Usage: ``python -m emreason.extras.reproduce.grokking_flatness [--output DIR] [--steps 4000] [--quick]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from emreason.extras.grokking_flatness import GrokkingConfig, first_step_reaching, train_grokking  # noqa: E402
from emreason.extras.reproduce.result_files import (  # noqa: E402
    default_output_dir,
    save_figure_atomic,
    write_json_atomic,
)
from tqdm import tqdm  # noqa: E402

METHOD = "grokking_flatness"


def _summary(log: dict) -> dict:
    """Memorisation / generalisation steps and how far flatness and collapse moved before generalising."""
    steps = np.asarray(log["step"])
    t_mem = first_step_reaching(log, "train_acc", 0.99)
    t_onset = first_step_reaching(log, "val_acc", 0.1)
    t_gen = first_step_reaching(log, "val_acc", 0.9)
    out = {
        "memorized_step": t_mem,
        "generalization_onset_step": t_onset,
        "generalized_step": t_gen,
        "final_val_acc": log["val_acc"][-1],
        "final_train_acc": log["train_acc"][-1],
    }
    for key in ("flatness", "collapse"):
        values = np.asarray(log[key])
        peak = int(np.argmax(values[: max(1, np.searchsorted(steps, t_mem or steps[-1]) + 1)]))
        total_drop = values[peak] - values[-1]
        if t_onset is not None and total_drop > 0:
            at_onset = values[np.searchsorted(steps, t_onset)]
            out[f"{key}_drop_done_before_onset"] = float((values[peak] - at_onset) / total_drop)
        out[f"{key}_final"] = float(values[-1])
        out[f"{key}_peak"] = float(values[peak])
    return out


TRANSFORMER = dict(
    p=23,
    train_fraction=0.5,
    architecture="transformer",
    embed_dim=64,
    n_heads=2,
    n_layers=1,
    lr=3e-3,
    weight_decay=3.0,
    adam_beta2=0.98,
    grad_clip=1.0,
)


def run(
    steps: int, seed: int = 0, collapse: float = 0.01, anti_collapse: float = 0.01, anti_flatness: float = 1e-3
) -> dict:
    torch.set_num_threads(1)
    base = dict(TRANSFORMER, steps=steps, log_every=max(steps // 60, 1), seed=seed)
    configs = {
        "plain": GrokkingConfig(**base),
        "collapse": GrokkingConfig(**base, regularizer="collapse", reg_strength=collapse),
        "anti_collapse": GrokkingConfig(**base, regularizer="anti_collapse", reg_strength=anti_collapse),
        "anti_flatness": GrokkingConfig(**base, regularizer="anti_flatness", reg_strength=anti_flatness),
    }
    logs = {name: train_grokking(cfg, progress=False) for name, cfg in tqdm(configs.items(), desc="runs")}
    return {"runs": logs, "summary": {name: _summary(log) for name, log in logs.items()}}


def plot(result: dict):
    names = list(result["runs"])
    fig, axes = plt.subplots(3, len(names), figsize=(5 * len(names), 9), sharex=True)
    for col, name in enumerate(names):
        log = result["runs"][name]
        ax = axes[0, col]
        ax.plot(log["step"], log["train_acc"], label="train acc")
        ax.plot(log["step"], log["val_acc"], label="val acc")
        ax.set_title(name)
        ax.legend(fontsize=8)
        axes[1, col].plot(log["step"], log["flatness"], color="tab:green", label="relative flatness")
        axes[1, col].plot(log["step"], log["flatness_bound"], color="tab:olive", ls="--", label="upper bound")
        axes[1, col].set_yscale("log")
        axes[1, col].legend(fontsize=8)
        axes[2, col].plot(
            log["step"], log["collapse"], color="tab:purple", label="NC metric (low = collapsed)"
        )
        axes[2, col].set_yscale("log")
        axes[2, col].set_xlabel("step")
        axes[2, col].legend(fontsize=8)
        until = log["config"]["regularizer_until"]
        if log["config"]["regularizer"] == "anti_flatness" and until:
            for row in range(3):
                axes[row, col].axvline(until, color="red", lw=0.8, ls=":")
    fig.suptitle("Grokking on (a+b) mod 47, MLP, AdamW wd 1.0")
    fig.tight_layout()
    return fig


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=default_output_dir(METHOD))
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--anti-collapse", type=float, default=0.05, help="lambda of loss - lambda * log NC")
    parser.add_argument(
        "--anti-flatness", type=float, default=0.05, help="lambda of loss - lambda * log kappa"
    )
    parser.add_argument("--quick", action="store_true", help="600 steps (smoke run)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result = run(600 if args.quick else args.steps, args.seed, args.anti_collapse, args.anti_flatness)
    result["wall_seconds"] = time.perf_counter() - start
    write_json_atomic(args.output / f"{METHOD}.json", result)
    fig = plot(result)
    save_figure_atomic(fig, args.output / f"{METHOD}.png")
    plt.close(fig)
    for name, s in result["summary"].items():
        print(name, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in s.items()})
    print(f"wall {result['wall_seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()
