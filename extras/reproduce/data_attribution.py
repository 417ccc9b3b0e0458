"""Reproduce final-model-only data attribution on scikit-learn's diabetes regression (MLP 2 x 128):
agreement of dattri's gradient-based methods with the further-training gold standard vs epochs.

Writes ``data_attribution.json`` and ``data_attribution.png`` to ``--output``
(default ``extras/reproduce/results/data_attribution/``).

Usage: ``python -m emreason.extras.reproduce.data_attribution [--output DIR] [--seeds 12] [--quick]``
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from emreason.extras.data_attribution import (  # noqa: E402
    ATTRIBUTION_METHODS,
    FurtherTrainingGoldStandard,
    agreement,
    attribution_scores,
    make_mlp,
    train_final_model,
)
from emreason.extras.reproduce.result_files import (  # noqa: E402
    default_output_dir,
    save_figure_atomic,
    write_json_atomic,
)
from sklearn.datasets import load_diabetes  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from tqdm import tqdm  # noqa: E402

METHOD = "data_attribution"
PAPER_ENERGY_COSINE = {  # paper, Energy data, cosine at 1 and 500 further-training epochs (from the issue)
    "grad_dot": (0.705, 0.163),
    "datainf": (0.702, 0.204),
    "if_cg": (0.14, 0.36),
    "if_lissa": (0.16, 0.38),
}


def load_data(seed: int = 0):
    x, y = load_diabetes(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=seed)
    scaler = StandardScaler().fit(x_tr)
    mean, std = y_tr.mean(), y_tr.std()
    f32 = np.float32
    return (
        scaler.transform(x_tr).astype(f32),
        ((y_tr - mean) / std).astype(f32),
        scaler.transform(x_te).astype(f32),
        ((y_te - mean) / std).astype(f32),
    )


def run(n_seeds: int, checkpoints: tuple[int, ...], leave_out_step: int, seed: int = 0) -> dict:
    torch.set_num_threads(1)
    x_tr, y_tr, x_te, y_te = load_data(seed)
    model = train_final_model(make_mlp(x_tr.shape[1], 128, 2, seed), x_tr, y_tr, epochs=1000, lr=3e-2)
    with torch.no_grad():
        final_mse = {
            "train": float(((model(torch.tensor(x_tr)).reshape(-1) - torch.tensor(y_tr)) ** 2).mean()),
            "test": float(((model(torch.tensor(x_te)).reshape(-1) - torch.tensor(y_te)) ** 2).mean()),
        }
    leave_out = np.arange(0, len(x_tr), leave_out_step)
    start = time.perf_counter()
    gold = FurtherTrainingGoldStandard(checkpoints, n_seeds=n_seeds, random_state=seed)
    gold.fit(model, x_tr, y_tr, x_te, y_te, leave_out)
    gold_seconds = time.perf_counter() - start
    results, timings = {}, {}
    for method in tqdm(ATTRIBUTION_METHODS, desc="dattri methods"):
        start = time.perf_counter()
        # LiSSA: 100 recursions of batch 64 (dattri's default 5000 x 1 is far beyond the CPU budget)
        scores = attribution_scores(
            method, model, x_tr, y_tr, x_te, y_te, leave_out, lissa_depth=100, lissa_batch=64
        )
        timings[method] = time.perf_counter() - start
        results[method] = [agreement(scores, gold.gold_[c]) for c in range(len(checkpoints))]
    snr = np.abs(gold.gold_).mean(axis=(1, 2)) / gold.gold_se_.mean(axis=(1, 2))
    return {
        "config": {
            "dataset": "sklearn diabetes (80/20 split)",
            "model": "MLP 10-128-128-1, float32",
            "final_training": "SGD lr 3e-2, batch 128, 1000 epochs",
            "further_training": "same SGD",
            "n_seeds": n_seeds,
            "n_leave_out": int(leave_out.size),
            "n_test": int(len(x_te)),
            "checkpoints": list(checkpoints),
            "seed": seed,
        },
        "final_model_mse": final_mse,
        "gold_mean_abs_over_se": snr.tolist(),
        "agreement": results,
        "seconds": {"gold_standard": gold_seconds, **timings},
        "paper_energy_cosine_1_and_500_epochs": PAPER_ENERGY_COSINE,
    }


def plot(result: dict):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    epochs = result["config"]["checkpoints"]
    for method, rows in result["agreement"].items():
        axes[0].plot(epochs, [r["cosine"] for r in rows], "o-", label=method)
        axes[1].plot(epochs, [r["spearman"] for r in rows], "o-", label=method)
    for ax, name in zip(axes, ("cosine similarity", "Spearman correlation")):
        ax.set(
            xscale="log", xlabel="further-training epochs", ylabel=name, title=f"{name} with gold standard"
        )
        ax.axhline(0, color="grey", lw=0.5)
    axes[0].legend(fontsize=8)
    fig.suptitle("Final-model-only attribution, diabetes regression, MLP 2x128")
    fig.tight_layout()
    return fig


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=default_output_dir(METHOD))
    parser.add_argument("--seeds", type=int, default=12, help="further-training shuffling orders")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="3 seeds, epochs up to 10 (smoke run)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    checkpoints = (1, 2, 5, 10) if args.quick else (1, 2, 5, 10, 20, 50)
    start = time.perf_counter()
    result = run(3 if args.quick else args.seeds, checkpoints, leave_out_step=9, seed=args.seed)
    result["wall_seconds"] = time.perf_counter() - start
    write_json_atomic(args.output / f"{METHOD}.json", result)
    fig = plot(result)
    save_figure_atomic(fig, args.output / f"{METHOD}.png")
    plt.close(fig)
    print("epochs:", checkpoints, "gold |mean|/se:", np.round(result["gold_mean_abs_over_se"], 2).tolist())
    for method, rows in result["agreement"].items():
        print(f"{method:12s} cosine {[round(r['cosine'], 3) for r in rows]}")
    print(f"wall {result['wall_seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()
