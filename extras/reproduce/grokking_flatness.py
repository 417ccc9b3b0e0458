"""Reproduce "flatness is necessary, neural collapse is not" at CPU scale: grokking of a small transformer on
(a + b) mod p with a plain run, collapse runs (loss + lambda NCC), anti-collapse runs (loss - lambda NCC) and
anti-flatness runs (loss - lambda kappa), the regularisers in the paper's linear form, over several seeds.

"Does not change the grokking step" is judged against the plain run's own seed-to-seed spread: the
plain model is trained on ``--plain-seeds`` seeds, and a regulariser counts as "unchanged" when the
geometric mean of its paired ratios (regularised step / plain step, same seed) lies within ``[1 / s, s]``,
``s`` being the ratio of the largest to the smallest plain grokking step. It counts as "delayed" when every
paired ratio is at least ``max(2, s)``.

Writes ``grokking_flatness.json`` and ``grokking_flatness.png`` to ``--output``
(default ``extras/reproduce/results/grokking_flatness/``).

Usage: ``python -m emreason.extras.reproduce.grokking_flatness [--output DIR] [--jobs 2] [--quick]``
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

GENERALIZED_ACC = 0.9  # a symmetric lookup of the training pairs alone gives ~0.6 on validation
MEMORIZED_ACC = 0.99

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


def _at(log: dict, key: str, step: int | None) -> float | None:
    if step is None:
        return None
    return float(log[key][log["step"].index(step)])


def _summary(log: dict) -> dict:
    """Memorisation / generalisation steps and the NC / flatness values along the way."""
    from scipy.stats import spearmanr

    steps = np.asarray(log["step"])
    t_mem = first_step_reaching(log, "train_acc", MEMORIZED_ACC)
    t_gen = first_step_reaching(log, "val_acc", GENERALIZED_ACC)
    out = {
        "memorized_step": t_mem,
        "generalized_step": t_gen,
        "last_step": int(steps[-1]),
        "cpu_seconds": log.get("cpu_seconds"),
        "final_val_acc": log["val_acc"][-1],
        "final_train_acc": log["train_acc"][-1],
    }
    # the memorisation-to-generalisation window (to the end of the run if it never generalises): NC and
    # kappa are noisy step to step, so we report their median over this window
    lo = t_mem if t_mem is not None else 0
    hi = t_gen if t_gen is not None else int(steps[-1])
    window = (steps >= lo) & (steps <= hi)
    val = np.asarray(log["val_acc"])
    after = steps >= lo
    for key in ("flatness", "collapse"):
        values = np.asarray(log[key])
        out[f"{key}_at_memorization"] = _at(log, key, t_mem)
        out[f"{key}_at_generalization"] = _at(log, key, t_gen)
        out[f"{key}_median_mem_to_gen"] = float(np.median(values[window]))
        out[f"{key}_final"] = float(values[-1])
        if after.sum() >= 3 and np.ptp(val[after]) > 0:
            # rank correlation with validation accuracy after memorisation: negative = drops as val rises
            out[f"{key}_spearman_with_val_acc"] = float(spearmanr(values[after], val[after]).statistic)
    return out


def _train(config: GrokkingConfig) -> dict:
    torch.set_num_threads(1)
    return train_grokking(config, progress=False)


def run_name(regularizer: str | None, strength: float, seed: int) -> str:
    """``regularizer`` may carry a start step, ``"anti_collapse@300"`` (on from step 300)."""
    return f"plain seed {seed}" if regularizer is None else f"{regularizer} {strength:g} seed {seed}"


def _parse_sweep_key(key: str) -> dict:
    """Regulariser settings from a sweep key, e.g. ``"anti_collapse@300#log#det#cap0.3"`` ->
    ``{"regularizer": "anti_collapse", "regularizer_from": 300, "reg_form": "log",
    "nc_detach_distances": True, "reg_cap": 0.3}``.

    Without ``@``: on from step 0; without ``#log``: the linear form; without ``#det``: gradients through
    the class-mean distances too; without ``#cap``: unbounded (all four as in the paper).
    """
    key, *flags = key.split("#")
    name, _, start = key.partition("@")
    caps = [float(f[3:]) for f in flags if f.startswith("cap")]
    unknown = [f for f in flags if f not in ("log", "det") and not f.startswith("cap")]
    if unknown or len(caps) > 1:
        raise ValueError(f"bad sweep-key flags {flags}; use #log, #det and at most one #cap<value>")
    return {
        "regularizer": name,
        "regularizer_from": int(start) if start else 0,
        "reg_form": "log" if "log" in flags else "linear",
        "nc_detach_distances": "det" in flags,
        "reg_cap": caps[0] if caps else None,
    }


def _aggregate(summary: dict, steps: int, seeds, plain_seeds, sweeps: dict) -> dict:
    """Plain seed spread (the tolerance) and, per regulariser strength, paired step and NC ratios."""
    plain_steps = {s: summary[run_name(None, 0, s)]["generalized_step"] for s in plain_seeds}
    reached = [t for t in plain_steps.values() if t is not None]
    spread = max(reached) / min(reached) if len(reached) >= 2 else None
    tolerance = {
        "plain_generalized_steps": plain_steps,
        "plain_mean": float(np.mean(reached)) if reached else None,
        "plain_cv": float(np.std(reached, ddof=1) / np.mean(reached)) if len(reached) >= 2 else None,
        "spread_max_over_min": spread,
        "plain_nc_median": {
            s: summary[run_name(None, 0, s)]["collapse_median_mem_to_gen"] for s in plain_seeds
        },
    }
    out = {}
    for regularizer, strengths in sweeps.items():
        for strength in strengths:
            ratios, bound, nc_ratios, nc_values, kappa_ratios, trained = [], [], [], [], [], []
            for s in seeds:
                plain = summary[run_name(None, 0, s)]
                reg = summary[run_name(regularizer, strength, s)]
                if not plain["generalized_step"]:
                    continue
                gen = reg["generalized_step"]
                # never generalised within the budget: the ratio is a lower bound (budget / plain)
                ratios.append((gen if gen is not None else steps) / plain["generalized_step"])
                bound.append(gen is None)
                nc_ratios.append(reg["collapse_median_mem_to_gen"] / plain["collapse_median_mem_to_gen"])
                nc_values.append(reg["collapse_median_mem_to_gen"])
                kappa_ratios.append(reg["flatness_median_mem_to_gen"] / plain["flatness_median_mem_to_gen"])
                trained.append(reg["final_train_acc"] >= MEMORIZED_ACC)
            if not ratios:
                continue
            geo = float(np.exp(np.mean(np.log(ratios))))
            verdict = None
            if not all(trained):
                verdict = "training fails"
            elif spread is not None:
                if all(r >= max(2.0, spread) for r in ratios):
                    verdict = "delayed"
                elif 1 / spread <= geo <= spread and not any(bound):
                    verdict = "unchanged"
                else:
                    verdict = "changed"
            out[f"{regularizer} {strength:g}"] = {
                **_parse_sweep_key(regularizer),
                "strength": strength,
                "step_ratios": ratios,
                "ratio_is_lower_bound": bound,
                "geometric_mean_ratio": geo,
                "nc_median_ratio": nc_ratios,
                "nc_median": nc_values,
                "kappa_median_ratio": kappa_ratios,
                "trains": trained,
                "verdict": verdict,
            }
    return {"tolerance": tolerance, "by_strength": out}


DEFAULT_SWEEPS = {
    "collapse": (0.1, 1.0),
    # the paper's linear form: 8.5e-4 is the largest strength that still trains on seed 0, 9.5e-4 breaks it
    "anti_collapse": (8.5e-4, 1e-3),
    # bounded variant (ours): -lambda * min(NCC, 0.3), which holds NCC near 0.3 without running away
    "anti_collapse#cap0.3": (0.3, 3.0),
    "anti_flatness": (1e-2,),
}


def run(
    steps: int,
    seeds: tuple = (0, 1),
    plain_seeds: tuple = (0, 1, 2, 3),
    sweeps: dict | None = None,
    jobs: int = 1,
    stop_after_generalized: int | None = 300,
) -> dict:
    """Plain runs on ``plain_seeds`` (which must include ``seeds``) plus one run per regulariser strength and
    seed.

    ``sweeps`` maps a regulariser key (``"collapse"``, ``"anti_collapse"``, ``"anti_flatness"``, optionally
    with ``@start`` and ``#log`` as in :func:`_parse_sweep_key`) to its strengths; default
    :data:`DEFAULT_SWEEPS`. Runs stop ``stop_after_generalized`` steps after reaching val acc 0.9.
    ``jobs`` > 1 trains in parallel processes.
    """
    if not set(seeds) <= set(plain_seeds):
        raise ValueError(f"plain_seeds {plain_seeds} must include seeds {seeds}")
    sweeps = dict(DEFAULT_SWEEPS if sweeps is None else sweeps)
    base = dict(
        TRANSFORMER,
        steps=steps,
        # a fixed grid, so that a longer budget does not change where the grokking step is read off
        log_every=min(50, max(steps // 2, 1)),
        stop_after_generalized=stop_after_generalized,
        generalized_acc=GENERALIZED_ACC,
        # training accuracy near chance (1/23) at step 1000: the regulariser has merged the classes
        abort_below_train_acc=0.15,
        abort_after=min(1000, steps),
    )
    configs = {run_name(None, 0, s): GrokkingConfig(**base, seed=s) for s in plain_seeds}
    for key, strengths in sweeps.items():
        settings = _parse_sweep_key(key)
        for strength in strengths:
            for s in seeds:
                configs[run_name(key, strength, s)] = GrokkingConfig(
                    **base, **settings, seed=s, reg_strength=strength
                )
    if jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs) as pool:
            logs = dict(zip(configs, pool.map(_train, configs.values())))
    else:
        logs = {name: _train(cfg) for name, cfg in tqdm(configs.items(), desc="runs")}
    summary = {name: _summary(log) for name, log in logs.items()}
    return {
        "runs": logs,
        "summary": summary,
        "aggregate": _aggregate(summary, steps, seeds, plain_seeds, sweeps),
    }


def plot(result: dict, seed: int = 0):
    """Val accuracy, kappa and NC of every run of ``seed``, and the paired step ratios per strength."""
    names = [n for n in result["runs"] if n.endswith(f"seed {seed}")]
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    for name in names:
        log = result["runs"][name]
        label = name.replace(f" seed {seed}", "")
        style = dict(lw=2.0, color="black") if label == "plain" else dict(lw=1.0)
        axes[0].plot(log["step"], log["val_acc"], label=label, **style)
        axes[1].plot(log["step"], log["flatness"], label=label, **style)
        axes[2].plot(log["step"], log["collapse"], label=label, **style)
    axes[0].set_title(f"validation accuracy (seed {seed})")
    axes[1].set_title("relative flatness kappa (train)")
    axes[2].set_title("NCC (train, low = collapsed)")
    for ax in axes[1:3]:
        ax.set_yscale("log")
    for ax in axes[:3]:
        ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    agg = result["aggregate"]
    spread = agg["tolerance"]["spread_max_over_min"]
    if spread:
        axes[3].axhspan(1 / spread, spread, color="grey", alpha=0.25, label="plain seed spread")
    colors = {"collapse": "tab:blue", "anti_collapse": "tab:orange", "anti_flatness": "tab:red"}
    variant_colors = iter(["tab:brown", "tab:green", "tab:pink", "tab:cyan"])
    for key, entry in agg["by_strength"].items():
        # variants (late start, log form) get their own colour and label
        sweep_key = key.rsplit(" ", 1)[0]
        is_variant = sweep_key != entry["regularizer"]
        color = colors[entry["regularizer"]]
        if is_variant:
            color = colors.setdefault(sweep_key, next(variant_colors, "tab:gray"))
        points = zip(entry["step_ratios"], entry["ratio_is_lower_bound"], entry["trains"])
        for ratio, is_bound, trains in points:
            marker = "x" if not trains else ("^" if is_bound else "o")
            axes[3].scatter(entry["strength"], ratio, color=color, marker=marker, label=sweep_key)
    handles, labels = axes[3].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    axes[3].legend(unique.values(), unique.keys(), fontsize=7)
    axes[3].set_xscale("log")
    axes[3].set_yscale("log")
    axes[3].axhline(2.0, color="red", ls=":", lw=0.8)
    axes[3].set_xlabel("lambda")
    axes[3].set_title("grokking step / plain, paired (^ lower bound, x training failed)")
    cfg = result["runs"][names[0]]["config"]
    fig.suptitle(
        f"Grokking on (a+b) mod {cfg['p']}, {cfg['n_layers']}-layer transformer (d={cfg['embed_dim']}), "
        f"AdamW lr {cfg['lr']:g}, wd {cfg['weight_decay']:g}"
    )
    fig.tight_layout()
    return fig


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=default_output_dir(METHOD))
    parser.add_argument(
        "--steps", type=int, default=4500, help="budget; > 2x the latest plain grokking step (2400)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--plain-seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument(
        "--sweep",
        nargs="*",
        default=None,
        metavar="KEY=L1,L2",
        help="regulariser strengths, e.g. collapse=0.1,1 anti_collapse=8.5e-4 'anti_collapse@300#log=0.03' "
        "(collapse: loss + l NCC, anti_collapse: loss - l NCC, anti_flatness: loss - l kappa; "
        "@start: on from that step; #log: l * log(metric); #det: NCC with detached class-mean distances; "
        "#cap<c>: metric clamped at c); "
        f"default {DEFAULT_SWEEPS}",
    )
    parser.add_argument("--jobs", type=int, default=2, help="train the runs in this many processes")
    parser.add_argument(
        "--quick", action="store_true", help="100 steps, one seed, one strength each (smoke run)"
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.jobs < 1:
        raise ValueError(f"--steps and --jobs must be >= 1, got {args.steps}, {args.jobs}")
    start = time.perf_counter()
    if args.quick:
        quick = {"collapse": (0.1,), "anti_collapse": (1e-3,), "anti_flatness": (1e-2,)}
        result = run(100, (0,), (0,), quick, args.jobs)
    else:
        sweeps = None
        if args.sweep is not None:
            sweeps = {}
            for item in args.sweep:
                key, _, values = item.partition("=")
                _parse_sweep_key(key)  # fail early on a malformed key
                sweeps[key] = tuple(float(v) for v in values.split(",") if v)
        result = run(args.steps, tuple(args.seeds), tuple(args.plain_seeds), sweeps, args.jobs)
    result["wall_seconds"] = time.perf_counter() - start
    write_json_atomic(args.output / f"{METHOD}.json", result)
    save_figure_atomic(
        plot(result, seed=min(args.seeds) if not args.quick else 0), args.output / f"{METHOD}.png"
    )
    for name, s in result["summary"].items():
        print(
            name,
            {k: (round(v, 3) if isinstance(v, float) else v) for k, v in s.items() if "spearman" not in k},
        )
    print("tolerance", result["aggregate"]["tolerance"])
    for key, entry in result["aggregate"]["by_strength"].items():
        print(
            key,
            "ratios",
            [round(r, 2) for r in entry["step_ratios"]],
            "NC ratio",
            [round(r, 2) for r in entry["nc_median_ratio"]],
            entry["verdict"],
        )
    print(f"wall {result['wall_seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()
