"""Reproduce JALA-EM's model-order selection experiment (Cuin, Carbone & Akyildiz, NeurIPS 2025, sec. 5.3).

Data (our reconstruction of the set-up): inputs ``t ~ U(-1, 1)``, true coefficients ``c ~ N(0, 1)`` of a
polynomial of the true order, ``y = sum_j c_j t^j + N(0, 1)`` noise. For every candidate order 0..10,
JALA-EM (N = 50 particles, K = 200 steps, Langevin step 1e-6, Adam 5e-3, scalar prior mean theta from 0)
estimates ``log p_theta(y)``; the order with the largest estimate is selected. Baseline: OLS + BIC. The
metric is the mean absolute error between selected and true orders over trials (paper Table 1).

Usage: ``python -m emreason.extras.reproduce.jala_em [--output DIR] [--trials 25]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from emreason.extras.jala_em import JALAEM, LinearGaussianRegression
from emreason.extras.reproduce.result_files import default_output_dir, save_figure_atomic, write_json_atomic
from tqdm import tqdm

# Paper Table 1 entries quoted in the issue: (true order, n) -> (JALA-EM MAE, OLS+BIC MAE).
PAPER_MAE = {"7,500": {"JALA-EM": 0.09, "BIC": 0.15}, "3,100": {"JALA-EM": 0.73, "BIC": 0.90}}
MAX_ORDER = 10


def bic_order(inputs: np.ndarray, targets: np.ndarray, max_order: int = MAX_ORDER) -> int:
    """Order minimising ``n log(RSS / n) + (p + 1) log n`` for OLS polynomial fits."""
    n = len(targets)
    scores = []
    for order in range(max_order + 1):
        features = np.vander(inputs, order + 1, increasing=True)
        coef, *_ = np.linalg.lstsq(features, targets, rcond=None)
        rss = float(np.sum((targets - features @ coef) ** 2))
        scores.append(n * np.log(rss / n) + (order + 1) * np.log(n))
    return int(np.argmin(scores))


def jala_order(
    inputs: np.ndarray, targets: np.ndarray, seed: int, max_order: int = MAX_ORDER
) -> tuple[int, list]:
    """Order maximising JALA-EM's final ``log Z_hat``; also returns the per-order estimates."""
    estimates = []
    for order in range(max_order + 1):
        model = LinearGaussianRegression(inputs, targets, order)
        sampler = JALAEM(
            n_particles=50, n_steps=200, langevin_step=1e-6, learning_rate=5e-3, random_state=seed
        )
        estimates.append(sampler.fit(model, np.zeros(1)).log_marginal_)
    return int(np.argmax(estimates)), estimates


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=default_output_dir("jala_em"))
    parser.add_argument("--trials", type=int, default=25)
    parser.add_argument("--seed", type=int, default=2025)
    args = parser.parse_args(argv)
    if args.trials < 1:
        raise ValueError(f"--trials must be >= 1, got {args.trials}")
    torch.set_num_threads(1)
    start = time.perf_counter()
    settings = [(3, 100), (3, 500), (7, 100), (7, 500)]
    results = {}
    tracking_error = []
    for true_order, n in settings:
        rng = np.random.default_rng([args.seed, true_order, n])
        errors = {"JALA-EM": [], "BIC": []}
        for trial in tqdm(range(args.trials), desc=f"order {true_order}, n {n}"):
            inputs = rng.uniform(-1.0, 1.0, n)
            coef = rng.normal(size=true_order + 1)
            targets = np.vander(inputs, true_order + 1, increasing=True) @ coef + rng.normal(size=n)
            chosen, estimates = jala_order(inputs, targets, seed=trial)
            errors["JALA-EM"].append(abs(chosen - true_order))
            errors["BIC"].append(abs(bic_order(inputs, targets) - true_order))
            if trial == 0:  # |log Z_hat - exact log p_theta_K(y)| at the true order, one check per setting
                model = LinearGaussianRegression(inputs, targets, true_order)
                fitted = JALAEM(random_state=trial).fit(model, np.zeros(1))
                exact = np.array([model.log_marginal(theta) for theta in fitted.theta_path_])
                tracking_error.append(float(np.max(np.abs(exact - fitted.log_marginal_path_))))
        results[f"{true_order},{n}"] = {
            name: {"mae": float(np.mean(v)), "exact_fraction": float(np.mean(np.array(v) == 0))}
            for name, v in errors.items()
        }
    payload = {
        "paper": "Learning Latent Variable Models via Jarzynski-adjusted Langevin Algorithm (NeurIPS 2025)",
        "paper_table1_mae": PAPER_MAE,
        "settings": {
            "trials": args.trials,
            "max_order": MAX_ORDER,
            "N": 50,
            "K": 200,
            "gamma": 1e-6,
            "adam": 5e-3,
        },
        "ours": results,
        "max_abs_logz_tracking_error_nats": tracking_error,
        "wall_seconds": time.perf_counter() - start,
    }
    write_json_atomic(args.output / "results.json", payload)
    _plot(results, args.output / "model_order_mae.png")
    print(f"wrote {args.output}/results.json and model_order_mae.png")
    return payload


def _plot(results: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    labels = list(results)
    positions = np.arange(len(labels))
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for offset, name in ((-0.2, "JALA-EM"), (0.2, "BIC")):
        axis.bar(
            positions + offset, [results[k][name]["mae"] for k in labels], width=0.4, label=f"ours: {name}"
        )
    for k, paper in PAPER_MAE.items():
        if k in results:
            i = labels.index(k)
            axis.plot([i - 0.2, i + 0.2], [paper["JALA-EM"], paper["BIC"]], "k*", ms=10)
    axis.plot([], [], "k*", label="paper Table 1")
    axis.set_xticks(positions, [f"order {k.split(',')[0]}\nn = {k.split(',')[1]}" for k in labels])
    axis.set_ylabel("model-order MAE")
    axis.legend(fontsize=8)
    save_figure_atomic(figure, path)


if __name__ == "__main__":
    main()
