"""Reproduce the MSE-vs-shift comparison of pessimistic data integration (Wu et al., NeurIPS 2025).

Design (the paper's exact data-generating process was not available, so this one is ours and keeps the
paper's sizes): one covariate ``S ~ N(0, 1)``, randomised treatment ``A ~ Bernoulli(1/2)``,
``R = 1 + S + A * (1 + S / 2) + eps`` with ``eps ~ N(0, 1)``; historical controls ``R_h = 1 + S + delta *
g(S) + eps`` with a shift that lives on part of the covariate space, ``g(s) = 2 * sigmoid(3 s)``, so a
covariate-dependent weight can keep using the historical data where it is unbiased. ``n_e = 48``,
``n_h = 48 m`` for ``m in {1, 2, 3}``. MSEs are multiplied by ``n_e`` (as a per-sample-size scale).

The design is randomised, so the estimators use the known propensity 1/2 by default;
``--fitted-propensity`` fits it instead (logistic regression with ``C = --propensity-C`` per fold).

Usage: ``python -m emreason.extras.reproduce.pessimistic_integration [--output DIR] [--reps 150]
[--fitted-propensity [--propensity-C 1.0]]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from emreason.extras.pessimistic_integration import (
    ESTIMATOR_NAMES,
    PROPENSITY_C,
    PessimisticDataIntegration,
)
from emreason.extras.reproduce.result_files import default_output_dir, save_figure_atomic, write_json_atomic
from tqdm import tqdm

PAPER_TOY_MSE = {"EDO": 1.701, "HDB": 2.372, "Pessi": 1.394}
TRUE_ATE = 1.0  # E[1 + S/2] with S ~ N(0, 1)


def simulate(n_e: int, n_h: int, shift: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """One data set: (s_exp, a_exp, r_exp, s_hist, r_hist)."""
    s_exp = rng.normal(size=n_e)
    a_exp = rng.permutation(np.arange(n_e) % 2).astype(np.float64)  # balanced randomisation
    r_exp = 1 + s_exp + a_exp * (1 + s_exp / 2) + rng.normal(size=n_e)
    s_hist = rng.normal(size=n_h)
    r_hist = 1 + s_hist + shift * 2.0 / (1.0 + np.exp(-3.0 * s_hist)) + rng.normal(size=n_h)
    return s_exp, a_exp, r_exp, s_hist, r_hist


def run(
    reps: int,
    shifts: list[float],
    ratios: list[int],
    n_e: int,
    seed: int,
    propensity: float | None = 0.5,
    propensity_C: float = PROPENSITY_C,
) -> dict:
    mse = {m: {name: [] for name in ESTIMATOR_NAMES} for m in ratios}
    total = len(ratios) * len(shifts)
    with tqdm(total=total, desc="pessimistic integration") as bar:
        for m in ratios:
            for shift in shifts:
                rng = np.random.default_rng([seed, m, int(round(shift * 1000))])
                errors = {name: [] for name in ESTIMATOR_NAMES}
                for rep in range(reps):
                    data = simulate(n_e, n_e * m, shift, rng)
                    model = PessimisticDataIntegration(
                        random_state=rep, propensity=propensity, propensity_C=propensity_C
                    ).fit(*data)
                    for name, value in model.estimates_.items():
                        errors[name].append((value - TRUE_ATE) ** 2)
                for name in ESTIMATOR_NAMES:
                    mse[m][name].append(float(n_e * np.mean(errors[name])))
                bar.update()
    return mse


def plot(mse: dict, shifts: list[float], path: Path) -> None:
    import matplotlib.pyplot as plt

    ratios = sorted(mse)
    figure, axes = plt.subplots(1, len(ratios), figsize=(4.2 * len(ratios), 3.6), sharey=True)
    for axis, m in zip(np.atleast_1d(axes), ratios):
        for name in ESTIMATOR_NAMES:
            axis.plot(shifts, mse[m][name], marker="o", ms=3, label=name, lw=2.2 if name == "Pessi" else 1.2)
        axis.set_title(f"n_e = 48, n_h = 48 x {m}")
        axis.set_xlabel("shift size delta")
        axis.set_yscale("log")
    np.atleast_1d(axes)[0].set_ylabel("n_e x MSE of the ATE")
    np.atleast_1d(axes)[-1].legend(fontsize=8)
    save_figure_atomic(figure, path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=default_output_dir("pessimistic_integration"))
    parser.add_argument("--reps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument(
        "--fitted-propensity",
        action="store_true",
        help="fit the propensity per fold instead of using the design's known 1/2",
    )
    parser.add_argument("--propensity-C", type=float, default=PROPENSITY_C, help="C of the fitted propensity")
    args = parser.parse_args(argv)
    if args.reps < 2:
        raise ValueError(f"--reps must be >= 2, got {args.reps}")
    propensity = None if args.fitted_propensity else 0.5
    shifts = [0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5]
    ratios = [1, 2, 3]
    start = time.perf_counter()
    mse = run(
        args.reps,
        shifts,
        ratios,
        n_e=48,
        seed=args.seed,
        propensity=propensity,
        propensity_C=args.propensity_C,
    )
    summary = {}
    for m in ratios:
        ranks = np.argsort(np.argsort(np.array([mse[m][n] for n in ESTIMATOR_NAMES]), axis=0), axis=0)
        pessi = ESTIMATOR_NAMES.index("Pessi")
        summary[m] = {
            "pessi_best_fraction_of_shifts": float(np.mean(ranks[pessi] == 0)),
            "pessi_mean_rank": float(np.mean(ranks[pessi]) + 1),
            "max_ratio_pessi_over_edo": float(np.max(np.array(mse[m]["Pessi"]) / np.array(mse[m]["EDO"]))),
            "mve_ratio_over_edo_at_zero_and_max_shift": [
                mse[m]["MVE"][0] / mse[m]["EDO"][0],
                mse[m]["MVE"][-1] / mse[m]["EDO"][-1],
            ],
        }
    payload = {
        "paper": "Pessimistic Data Integration for Policy Evaluation (Wu et al., NeurIPS 2025)",
        "paper_toy_example_mse": PAPER_TOY_MSE,
        "settings": {
            "n_e": 48,
            "ratios_m": ratios,
            "shifts": shifts,
            "reps": args.reps,
            "z": 1.64,
            "propensity": "fitted" if propensity is None else propensity,
            "propensity_C": args.propensity_C if propensity is None else None,
        },
        "mse_times_n_e": {str(m): mse[m] for m in ratios},
        "summary": {str(m): s for m, s in summary.items()},
        "wall_seconds": time.perf_counter() - start,
    }
    write_json_atomic(args.output / "results.json", payload)
    plot(mse, shifts, args.output / "mse_vs_shift.png")
    print(f"wrote {args.output}/results.json and mse_vs_shift.png")
    return payload


if __name__ == "__main__":
    main()
