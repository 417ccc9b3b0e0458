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


ONSET_ACC = 0.7  # above the ~0.6 that a symmetric lookup of the training pairs gives on validation
GENERALIZED_ACC = 0.9


def _summary(log: dict) -> dict:
    """Memorisation / generalisation steps, and how relative flatness and collapse move with val accuracy."""
    from scipy.stats import spearmanr

    steps = np.asarray(log["step"])
    t_mem = first_step_reaching(log, "train_acc", 0.99)
    t_onset = first_step_reaching(log, "val_acc", ONSET_ACC)
    t_gen = first_step_reaching(log, "val_acc", GENERALIZED_ACC)
    out = {
        "memorized_step": t_mem,
        "generalization_onset_step": t_onset,
        "generalized_step": t_gen,
        "final_val_acc": log["val_acc"][-1],
        "final_train_acc": log["train_acc"][-1],
    }
    after = steps >= (t_mem or 0)
    val = np.asarray(log["val_acc"])
    for key in ("flatness", "collapse"):
        values = np.asarray(log[key])
        if after.sum() >= 3:
            # rank correlation with validation accuracy after memorisation: negative = drops as val rises
            out[f"{key}_spearman_with_val_acc"] = float(spearmanr(values[after], val[after]).statistic)
        at_mem = float(values[np.searchsorted(steps, t_mem)]) if t_mem is not None else None
        out[f"{key}_at_memorization"] = at_mem
        out[f"{key}_at_generalization"] = (
            float(values[np.searchsorted(steps, t_gen)]) if t_gen is not None else None
        )
        out[f"{key}_final"] = float(values[-1])
    return out


TRANSFORMER = dict(
    p=23,
    train_fraction=0.6,
    architecture="transformer",
    embed_dim=32,
    n_heads=2,
    n_layers=1,
    lr=3e-3,
    weight_decay=2.0,
    adam_beta2=0.98,
)


def _train(config: GrokkingConfig) -> dict:
    torch.set_num_threads(1)
    return train_grokking(config, progress=False)


def run(
    steps: int,
    seed: int = 0,
    collapse: tuple = (0.1,),
    anti_collapse: tuple = (1e-4,),
    anti_flatness: tuple = (1e-3, 1e-2),
    jobs: int = 1,
) -> dict:
    """Plain run plus one run per regulariser strength; ``jobs`` > 1 trains them in parallel processes."""
    base = dict(TRANSFORMER, steps=steps, log_every=max(steps // 60, 1), seed=seed)
    configs = {"plain": GrokkingConfig(**base)}
    for name, strengths in (
        ("collapse", collapse),
        ("anti_collapse", anti_collapse),
        ("anti_flatness", anti_flatness),
    ):
        for strength in strengths:
            configs[f"{name} {strength:g}"] = GrokkingConfig(**base, regularizer=name, reg_strength=strength)
    if jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs) as pool:
            logs = dict(zip(configs, pool.map(_train, configs.values())))
    else:
        logs = {name: _train(cfg) for name, cfg in tqdm(configs.items(), desc="runs")}
    summary = {name: _summary(log) for name, log in logs.items()}
    plain_gen = summary["plain"]["generalized_step"]
    for entry in summary.values():
        gen = entry["generalized_step"]
        # delay factor in steps; if never reached, a lower bound steps / plain
        if plain_gen:
            entry["delay_vs_plain"] = (gen if gen is not None else steps) / plain_gen
            entry["delay_is_lower_bound"] = gen is None
    return {"runs": logs, "summary": summary}


def plot(result: dict):
    names = list(result["runs"])
    fig, axes = plt.subplots(3, len(names), figsize=(4 * len(names), 9), sharex=True, squeeze=False)
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
    cfg = result["runs"]["plain"]["config"]
    fig.suptitle(
        f"Grokking on (a+b) mod {cfg['p']}, {cfg['n_layers']}-layer transformer (d={cfg['embed_dim']}), "
        f"AdamW lr {cfg['lr']:g}, wd {cfg['weight_decay']:g}"
    )
    fig.tight_layout()
    return fig


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=default_output_dir(METHOD))
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--collapse", type=float, nargs="*", default=[0.1], help="lambda of loss + lambda NC")
    parser.add_argument(
        "--anti-collapse", type=float, nargs="*", default=[1e-4], help="lambda of loss - lambda NC"
    )
    parser.add_argument(
        "--anti-flatness", type=float, nargs="*", default=[1e-3, 1e-2], help="lambda of loss - lambda kappa"
    )
    parser.add_argument("--jobs", type=int, default=1, help="train the runs in this many processes")
    parser.add_argument("--quick", action="store_true", help="150 steps (smoke run)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.jobs < 1:
        raise ValueError(f"--steps and --jobs must be >= 1, got {args.steps}, {args.jobs}")
    start = time.perf_counter()
    result = run(
        150 if args.quick else args.steps,
        args.seed,
        tuple(args.collapse),
        tuple(args.anti_collapse),
        tuple(args.anti_flatness),
        args.jobs,
    )
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
