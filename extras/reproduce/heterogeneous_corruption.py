"""Reproduce Fig. 2(a) of "Robust Estimation Under Heterogeneous Corruption Rates" (Chaudhuri, Li &
Courtade, NeurIPS 2025).

Corruption rates are drawn once per ``q`` from the CDF ``F(t) = 1 - (1 - t)^(1/q)`` (``t = 1 - (1 - u)^q``),
``n = 10^4`` samples; each trial redraws which samples are corrupted. Bounded case: clean samples are 0,
corrupted ones 1 (true mean 0). Gaussian case: clean ``N(0, 1)``, corrupted ``N(100, 1)``. Reported: the
0.8-quantile of the squared error over trials for the optimal-linear, threshold and sample-mean estimators,
and, in the bounded case, the simulated MSE beside its exact value.

Usage: ``python -m emreason.extras.reproduce.heterogeneous_corruption [--output DIR] [--trials 300]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from emreason.extras.heterogeneous_corruption import (
    HeterogeneousMeanEstimator,
    effective_rate,
    linear_estimator_mse_bounded,
)
from emreason.extras.reproduce.result_files import default_output_dir, save_figure_atomic, write_json_atomic
from tqdm import tqdm

METHODS = ("optimal_linear", "threshold", "sample_mean")
PAPER_CLAIM = "optimal-linear < threshold < sample mean at every q (Fig. 2(a), read qualitatively)"


def draw_rates(q: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Corruption rates with CDF ``1 - (1 - t)^(1/q)`` on [0, 1], shape (n,)."""
    return 1.0 - (1.0 - rng.random(n)) ** q


def simulate(q: float, n: int, trials: int, rng: np.random.Generator) -> dict:
    rates = draw_rates(q, n, rng)
    squared = {case: {m: [] for m in METHODS} for case in ("bounded", "gaussian")}
    exact = {}
    for method in METHODS:
        weights = HeterogeneousMeanEstimator(method).fit(np.zeros(n), rates).weights_
        exact[method] = linear_estimator_mse_bounded(weights, rates)
    for _ in range(trials):
        corrupted = rng.random(n) < rates
        bounded = corrupted.astype(np.float64)
        gaussian = rng.normal(size=n) + 100.0 * corrupted
        for method in METHODS:
            squared["bounded"][method].append(
                HeterogeneousMeanEstimator(method, "bounded").fit(bounded, rates).location_ ** 2
            )
            squared["gaussian"][method].append(
                HeterogeneousMeanEstimator(method, "gaussian").fit(gaussian, rates).location_ ** 2
            )
    return {
        "effective_rate_k1": effective_rate(rates, 1)[0],
        "q80": {c: {m: float(np.quantile(v, 0.8)) for m, v in d.items()} for c, d in squared.items()},
        "bounded_simulated_mse": {m: float(np.mean(v)) for m, v in squared["bounded"].items()},
        "bounded_exact_mse": exact,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=default_output_dir("heterogeneous_corruption"))
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=2025)
    args = parser.parse_args(argv)
    if args.trials < 5 or args.n < 10:
        raise ValueError(f"need --trials >= 5 and --n >= 10, got {args.trials}, {args.n}")
    start = time.perf_counter()
    q_values = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
    per_q = {}
    for q in tqdm(q_values, desc="q"):
        per_q[str(q)] = simulate(q, args.n, args.trials, np.random.default_rng([args.seed, int(q * 1000)]))
    ordering = {
        case: [
            per_q[str(q)]["q80"][case]["optimal_linear"]
            <= per_q[str(q)]["q80"][case]["threshold"]
            <= per_q[str(q)]["q80"][case]["sample_mean"]
            for q in q_values
        ]
        for case in ("bounded", "gaussian")
    }
    payload = {
        "paper": "Robust Estimation Under Heterogeneous Corruption Rates (NeurIPS 2025), Fig. 2(a)",
        "paper_claim": PAPER_CLAIM,
        "settings": {"n": args.n, "trials": args.trials, "q": q_values, "outlier_mean": 100.0},
        "per_q": per_q,
        "ordering_holds": ordering,
        "wall_seconds": time.perf_counter() - start,
    }
    write_json_atomic(args.output / "results.json", payload)
    _plot(per_q, q_values, args.output / "fig2a.png")
    print(f"wrote {args.output}/results.json and fig2a.png")
    return payload


def _plot(per_q: dict, q_values: list[float], path: Path) -> None:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for axis, case in zip(axes, ("bounded", "gaussian")):
        for method in METHODS:
            axis.plot(
                q_values, [per_q[str(q)]["q80"][case][method] for q in q_values], marker="o", label=method
            )
        if case == "bounded":
            axis.plot(
                q_values,
                [per_q[str(q)]["bounded_exact_mse"]["optimal_linear"] for q in q_values],
                "k:",
                label="exact MSE (opt.-lin.)",
            )
        axis.plot(
            q_values,
            [per_q[str(q)]["effective_rate_k1"] for q in q_values],
            "k--",
            lw=0.8,
            label="f(lambda, 1)",
        )
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("q")
        axis.set_title(f"{case} case, n = 10^4")
    axes[0].set_ylabel("0.8-quantile of squared error")
    axes[1].legend(fontsize=8)
    save_figure_atomic(figure, path)


if __name__ == "__main__":
    main()
