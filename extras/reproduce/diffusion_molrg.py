"""Reproduce the unimodal-vs-monotone representation dynamics of diffusion denoisers on MoLRG data.

Part 1 (closed form): SNR of the exact MoLRG posterior mean and of exact empirical (memorizing) denoisers.
Part 2 (trained): a small noise-conditional MLP denoiser is trained on MoLRG data with a high ambient
dimension (n = 128, three 4-dimensional class subspaces, 116 pure-nuisance directions). A linear probe is
fitted on its last-hidden-layer features of ``x0 + sigma eps`` for each noise level. Training-set sizes
``N = 8, 64, 512, 4096`` are swept for the first seed (the transition from unimodal to monotone), and the
two ends (``N = 4096`` generalizing, ``N = 8`` memorizing) are repeated for two more seeds. Memorization is
measured by the test/train denoising-MSE ratio and the fraction of denoised fresh points that copy a
training point.

Writes ``diffusion_molrg.json`` and ``diffusion_molrg.png`` to ``--output``
(default ``extras/reproduce/results/diffusion_molrg/``). ``--quick`` is a smoke run (one seed, two sizes,
fewer steps and points).

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
# Trained part: ambient n = 128 >> K d = 12, so 116 directions carry only nuisance (delta = 0.4); see
# extras/README.md for why the ambient dimension sets the size of the bump.
TRAINED_DATA = dict(n_dim=128, n_classes=3, subspace_dim=4, delta=0.4)
TRAIN = dict(steps=1500, width=128, lr=5e-3)
SWEEP_SIZES = (8, 64, 512, 4096)
# --quick keeps the smaller round-2 data (n = 32, delta = 0.5): after a few hundred steps its memorizer's
# features still carry class information, so the smoke test can check the memorization measures at both ends.
QUICK_DATA = dict(n_dim=32, n_classes=3, subspace_dim=4, delta=0.5)
QUICK_TRAIN = dict(steps=600, width=128, lr=5e-3)
N_SEEDS = 3


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


def train_and_probe(
    model: MoLRG, n_train: int, seed: int, quick: bool, sigmas: list[float], tol: float
) -> dict:
    """Train a denoiser on ``n_train`` fresh points of ``model``; measure its probe curve and memorization."""
    train = QUICK_TRAIN if quick else TRAIN
    n_eval, n_probe = (500, 500) if quick else (2000, 1000)
    rng = np.random.default_rng([seed, n_train])
    x_train, _ = model.sample(n_train, rng)
    x_test, _ = model.sample(1000, rng)
    den = TrainedDenoiser(n_layers=3, random_state=seed, **train).fit(x_train)
    curve = feature_probe_curve(model, den, sigmas, n_eval=n_eval, n_probe_train=n_probe, random_state=seed)
    loss_sigmas = [0.1, 0.5, 1.0, 2.0]
    train_loss = den.denoising_loss(x_train, loss_sigmas, random_state=seed)
    test_loss = den.denoising_loss(x_test, loss_sigmas, random_state=seed)
    return {
        "n_train": n_train,
        "seed": seed,
        "loss_history": den.loss_history_,
        "probe_accuracy": curve["probe_accuracy"],
        "shape": probe_shape(curve["probe_accuracy"], tol),
        "loss_sigmas": loss_sigmas,
        "train_mse": train_loss.tolist(),
        "test_mse": test_loss.tolist(),
        "test_over_train_mse_at_sigma1": float(test_loss[2] / train_loss[2]),
        "copy_fraction_at_sigma1": copy_fraction(den, x_train, x_test, 1.0, random_state=seed),
    }


def run_trained(seed: int, quick: bool, sizes: tuple[int, ...] | None = None) -> dict:
    """The trained denoisers: every size in ``sizes`` (default: the sweep) for ``seed``, and the smallest
    and largest size for the other seeds."""
    sigmas = np.geomspace(0.02, 10.0, 6 if quick else 10).tolist()
    n_eval = 500 if quick else 2000
    # tolerance for curve shapes: 2 standard errors of a difference of two accuracies near 0.7
    tol = 2.0 * np.sqrt(2 * 0.7 * 0.3 / n_eval)
    sweep_sizes = tuple(sorted(sizes)) if sizes else (8, 4096) if quick else SWEEP_SIZES
    seeds = (seed,) if quick else tuple(seed + i for i in range(N_SEEDS))
    data = QUICK_DATA if quick else TRAINED_DATA
    runs = []
    for s in seeds:
        model = MoLRG(**data, random_state=s)
        for n_train in sweep_sizes if s == seed else (min(sweep_sizes), max(sweep_sizes)):
            runs.append(train_and_probe(model, n_train, s, quick, sigmas, tol))
    ends = [r for r in runs if r["seed"] == seed]
    return {
        "config": {
            **data,
            **(QUICK_TRAIN if quick else TRAIN),
            "n_eval": n_eval,
        },
        "tol": tol,
        "sigmas": sigmas,
        "sweep_sizes": list(sweep_sizes),
        "seeds": list(seeds),
        "runs": runs,
        # the first seed's two ends, under the names used since round 2
        "models": {"generalizing": ends[-1], "memorizing": ends[0]},
    }


def run(seed: int = 0, quick: bool = False, sizes: tuple[int, ...] | None = None) -> dict:
    out = {"seed": seed, "quick": quick}
    parts = (("exact", run_exact), ("trained", lambda seed, quick: run_trained(seed, quick, sizes)))
    for part, fn in parts:
        start = time.process_time()
        out[part] = fn(seed, quick)
        out[f"{part}_cpu_seconds"] = time.process_time() - start
    return out


def plot(result: dict):
    fig, axes = plt.subplots(1, 4, figsize=(21, 4.5))
    exact = result["exact"]
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(exact["curves"])))
    for (name, curve), color in zip(exact["curves"].items(), colors):
        style = dict(color="crimson", lw=2.5) if name.startswith("true") else dict(color=color, lw=1.3)
        axes[0].plot(curve["sigma"], curve["snr"], label=name, **style)
    axes[0].set(xscale="log", yscale="log", xlabel="noise level sigma", ylabel="class-subspace SNR")
    axes[0].set_title("exact denoisers: SNR of the output")
    axes[0].legend(fontsize=7)
    trained = result["trained"]
    sig, k, first = trained["sigmas"], trained["config"]["n_classes"], trained["seeds"][0]
    sweep = [r for r in trained["runs"] if r["seed"] == first]
    colors = plt.cm.plasma(np.linspace(0, 0.85, len(sweep)))
    for r, color in zip(sweep, colors):
        label = f"N={r['n_train']} (test/train MSE {r['test_over_train_mse_at_sigma1']:.1f})"
        axes[1].plot(sig, r["probe_accuracy"], "o-", color=color, label=label)
    axes[1].set_title(f"trained denoiser, seed {first}: probe on hidden features vs N")
    for r in trained["runs"]:
        color = "tab:blue" if r["n_train"] == max(trained["sweep_sizes"]) else "tab:orange"
        if r["n_train"] in (min(trained["sweep_sizes"]), max(trained["sweep_sizes"])):
            axes[2].plot(
                sig,
                r["probe_accuracy"],
                "o-",
                color=color,
                alpha=0.8,
                label=f"N={r['n_train']} seed {r['seed']}",
            )
    axes[2].set_title("generalizing (blue) vs memorizing (orange), all seeds")
    for ax in axes[1:3]:
        ax.axhline(1.0 / k, color="gray", lw=0.8, ls=":")
        ax.set(xscale="log", xlabel="noise level sigma", ylabel="linear-probe accuracy")
        ax.legend(fontsize=7)
    sizes = [r["n_train"] for r in sweep]
    axes[3].plot(
        sizes,
        [r["shape"]["peak_minus_lowest_noise"] for r in sweep],
        "o-",
        color="k",
        label="probe peak - low-noise accuracy",
    )
    axes[3].axhline(trained["tol"], color="gray", ls=":", label="tolerance (2 s.e.)")
    axes[3].plot(
        sizes,
        [r["copy_fraction_at_sigma1"] for r in sweep],
        "s--",
        color="tab:red",
        label="copy fraction (sigma = 1)",
    )
    twin = axes[3].twinx()
    twin.plot(sizes, [r["test_over_train_mse_at_sigma1"] for r in sweep], "^-", color="tab:green")
    twin.set(yscale="log", ylabel="test / train MSE at sigma = 1 (green)")
    axes[3].set(xscale="log", xlabel="training-set size N", title=f"transition vs N (seed {first})")
    axes[3].legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=default_output_dir(METHOD))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: fewer steps, points and noise levels"
    )
    parser.add_argument(
        "--sizes", default=None,
        help=f"comma-separated training-set sizes of the sweep (default {','.join(map(str, SWEEP_SIZES))})",
    )  # fmt: skip
    args = parser.parse_args(argv)
    sizes = tuple(int(n) for n in args.sizes.split(",")) if args.sizes else None
    if sizes is not None and (len(sizes) < 2 or min(sizes) < 1):
        parser.error(f"--sizes needs at least two positive sizes, got {args.sizes!r}")
    start = time.perf_counter()
    result = run(args.seed, args.quick, sizes)
    result["wall_seconds"] = time.perf_counter() - start
    write_json_atomic(args.output / f"{METHOD}.json", result)
    save_figure_atomic(plot(result), args.output / f"{METHOD}.png")
    for name, s in result["exact"]["summary"].items():
        print(f"{name:24s} SNR peak/low-noise {s['snr']['peak_over_lowest_noise']:.2f}")
    for m in result["trained"]["runs"]:
        print(
            f"trained seed {m['seed']} N={m['n_train']:5d} probe {np.round(m['probe_accuracy'], 3).tolist()} "
            f"bump {m['shape']['peak_minus_lowest_noise']:+.3f} unimodal {m['shape']['unimodal']} "
            f"monotone {m['shape']['monotone_decreasing_within_tol']} "
            f"test/train MSE {m['test_over_train_mse_at_sigma1']:.2f} copy {m['copy_fraction_at_sigma1']:.3f}"
        )
    print(
        f"wall {result['wall_seconds']:.0f} s, CPU: exact {result['exact_cpu_seconds']:.0f} s, "
        f"trained {result['trained_cpu_seconds']:.0f} s"
    )
    return result


if __name__ == "__main__":
    main()
