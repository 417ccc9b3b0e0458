"""Reproduce the unimodal-vs-monotone representation dynamics of diffusion denoisers on MoLRG data.

Part 1 (closed form): SNR of the exact MoLRG posterior mean and of exact empirical (memorizing) denoisers.
Part 2 (trained): a small noise-conditional MLP denoiser is trained on MoLRG data at two training-set sizes,
one that generalizes (``N = 4096``) and one that memorizes (``N = 8``); a linear probe is fitted on its
last-hidden-layer features of ``x0 + sigma eps`` for each noise level, and memorization is measured by the
train/test denoising-loss ratio and the fraction of denoised fresh points that copy a training point.

Writes ``diffusion_molrg.json`` and ``diffusion_molrg.png`` to ``--output``
(default ``extras/reproduce/results/diffusion_molrg/``). ``--quick`` is a smoke run (fewer steps and points).

Usage: ``python -m emreason.extras.reproduce.diffusion_molrg [--output DIR] [--seed 0] [--quick]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from emreason.extras.diffusion_molrg import (  # noqa: E402
    EmpiricalDenoiser,
    MoLRG,
    TrainedDenoiser,
    copy_fraction,
    feature_probe_curve,
    representation_curve,
)
from emreason.extras.reproduce.result_files import (  # noqa: E402
    default_output_dir,
    save_figure_atomic,
    write_json_atomic,
)

METHOD = "diffusion_molrg"
# Trained part: n = 32, K = 3, d = 4, delta = 0.5 (strong off-subspace nuisance, see extras/README.md).
TRAINED_DATA = dict(n_dim=32, n_classes=3, subspace_dim=4, delta=0.5)
TRAIN_SIZES = {"generalizing": 4096, "memorizing": 8}


def _shape(curve: list[float]) -> dict:
    """Summarise a curve: where it peaks, and peak over its low-noise end."""
    values = np.asarray(curve)
    peak = int(np.argmax(values))
    return {
        "peak_index": peak,
        "peak_over_lowest_noise": float(values[peak] / values[0]),
        "unimodal_interior_peak": bool(0 < peak < len(values) - 1 and values[peak] > 1.2 * values[0]),
    }


def probe_shape(acc: list[float], tol: float) -> dict:
    """Shape of a probe-accuracy curve: interior peak above the low-noise end by more than ``tol``
    (unimodal), or never above the low-noise end and no step above the running maximum by more than ``tol``
    (monotone decreasing)."""
    a = np.asarray(acc)
    peak = int(np.argmax(a))
    rises = a[1:] - np.maximum.accumulate(a)[:-1]
    return {
        "peak_index": peak,
        "peak_minus_lowest_noise": float(a[peak] - a[0]),
        "unimodal": bool(0 < peak < len(a) - 1 and a[peak] - a[0] > tol and a[peak] - a[-1] > tol),
        "monotone_decreasing_within_tol": bool(rises.max() <= tol and a.max() - a[0] <= tol),
        "max_rise": float(rises.max()),
    }


def run_exact(seed: int, quick: bool) -> dict:
    model = MoLRG(n_dim=48, n_classes=3, subspace_dim=8, delta=0.2, random_state=seed)
    sigmas = np.geomspace(0.02, 10.0, 6 if quick else 16).tolist()
    n_eval = 200 if quick else 600
    curves = {
        "true (generalizing)": representation_curve(
            model, model, sigmas, n_eval=n_eval, n_probe_train=2 * n_eval, random_state=seed
        )
    }
    rng = np.random.default_rng(seed + 1)
    for n_train in (4,) if quick else (4, 16, 64, 256, 1024, 4096):
        points, _ = model.sample(n_train, rng)
        # SNR only: the quadratic probe of round 1 dominated the wall time and is kept for the true denoiser
        curves[f"memorizing N={n_train}"] = representation_curve(
            model, EmpiricalDenoiser(points), sigmas, n_eval=n_eval, with_probe=False, random_state=seed
        )
    summary = {name: {"snr": _shape(c["snr"])} for name, c in curves.items()}
    summary["true (generalizing)"]["probe"] = _shape(curves["true (generalizing)"]["probe_accuracy"])
    return {"sigmas": sigmas, "curves": curves, "summary": summary}


def run_trained(seed: int, quick: bool) -> dict:
    model = MoLRG(**TRAINED_DATA, random_state=seed)
    sigmas = np.geomspace(0.02, 10.0, 6 if quick else 12).tolist()
    steps, n_eval, n_probe = (600, 500, 500) if quick else (3000, 2000, 1000)
    # tolerance for curve shapes: 2 standard errors of a difference of two accuracies near 0.7
    tol = 2.0 * np.sqrt(2 * 0.7 * 0.3 / n_eval)
    rng = np.random.default_rng(seed + 2)
    x_test, _ = model.sample(1000, rng)
    out = {"config": {**TRAINED_DATA, "steps": steps, "n_eval": n_eval, "n_probe_train": n_probe}, "tol": tol}
    out["sigmas"], out["models"] = sigmas, {}
    for name, n_train in TRAIN_SIZES.items():
        x_train, _ = model.sample(n_train, rng)
        den = TrainedDenoiser(width=128, n_layers=3, steps=steps, lr=5e-3, random_state=seed).fit(x_train)
        curve = feature_probe_curve(
            model, den, sigmas, n_eval=n_eval, n_probe_train=n_probe, random_state=seed
        )
        loss_sigmas = [0.1, 0.5, 1.0, 2.0]
        train_loss = den.denoising_loss(x_train, loss_sigmas, random_state=seed)
        test_loss = den.denoising_loss(x_test, loss_sigmas, random_state=seed)
        out["models"][name] = {
            "n_train": n_train,
            "loss_history": den.loss_history_,
            "probe_accuracy": curve["probe_accuracy"],
            "shape": probe_shape(curve["probe_accuracy"], tol),
            "loss_sigmas": loss_sigmas,
            "train_mse": train_loss.tolist(),
            "test_mse": test_loss.tolist(),
            "test_over_train_mse_at_sigma1": float(test_loss[2] / train_loss[2]),
            "copy_fraction_at_sigma1": copy_fraction(den, x_train, x_test, 1.0, random_state=seed),
        }
    return out


def run(seed: int = 0, quick: bool = False) -> dict:
    return {
        "seed": seed,
        "quick": quick,
        "exact": run_exact(seed, quick),
        "trained": run_trained(seed, quick),
    }


def plot(result: dict):
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.3))
    exact = result["exact"]
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(exact["curves"])))
    for (name, curve), color in zip(exact["curves"].items(), colors):
        style = dict(color="crimson", lw=2.5) if name.startswith("true") else dict(color=color, lw=1.3)
        axes[0].plot(curve["sigma"], curve["snr"], label=name, **style)
    axes[0].set(xscale="log", yscale="log", xlabel="noise level sigma", ylabel="class-subspace SNR")
    axes[0].set_title("exact denoisers: SNR of the output")
    axes[0].legend(fontsize=7)
    trained = result["trained"]
    for (name, m), color in zip(trained["models"].items(), ("tab:blue", "tab:orange")):
        label = f"{name} (N={m['n_train']}, test/train MSE {m['test_over_train_mse_at_sigma1']:.1f})"
        axes[1].plot(trained["sigmas"], m["probe_accuracy"], "o-", color=color, label=label)
        axes[2].plot(m["loss_sigmas"], m["train_mse"], "o-", color=color, label=f"{name} train")
        axes[2].plot(m["loss_sigmas"], m["test_mse"], "s--", color=color, label=f"{name} test")
    k = trained["config"]["n_classes"]
    axes[1].axhline(1.0 / k, color="gray", lw=0.8, ls=":")
    axes[1].set(xscale="log", xlabel="noise level sigma", ylabel="linear-probe accuracy")
    axes[1].set_title(f"trained MLP denoiser: probe on hidden features (chance 1/{k})")
    axes[1].legend(fontsize=7)
    axes[2].set(xscale="log", yscale="log", xlabel="noise level sigma", ylabel="denoising MSE per coordinate")
    axes[2].set_title("memorization: train vs test denoising error")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=default_output_dir(METHOD))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: fewer steps, points and noise levels"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result = run(args.seed, args.quick)
    result["wall_seconds"] = time.perf_counter() - start
    write_json_atomic(args.output / f"{METHOD}.json", result)
    save_figure_atomic(plot(result), args.output / f"{METHOD}.png")
    for name, s in result["exact"]["summary"].items():
        print(f"{name:24s} SNR peak/low-noise {s['snr']['peak_over_lowest_noise']:.2f}")
    for name, m in result["trained"]["models"].items():
        print(
            f"trained {name:12s} N={m['n_train']:5d} probe {np.round(m['probe_accuracy'], 3).tolist()} "
            f"shape {m['shape']} test/train MSE {m['test_over_train_mse_at_sigma1']:.2f} "
            f"copy {m['copy_fraction_at_sigma1']:.3f}"
        )
    print(f"wall {result['wall_seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()
