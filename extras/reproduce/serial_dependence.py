"""Reproduce repulsion (lower, STD layer) and attraction (upper, STF layer) in serial dependence, and how
each bias window scales with its STP time constant.

Writes ``serial_dependence.json`` and ``serial_dependence.png`` to ``--output``
(default ``extras/reproduce/results/serial_dependence/``). About 5 minutes on one core.

Usage: ``python -m emreason.extras.reproduce.serial_dependence [--output DIR] [--seed 0] [--quick]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from emreason.extras.reproduce.result_files import (  # noqa: E402
    default_output_dir,
    save_figure_atomic,
    write_json_atomic,
)
from emreason.extras.serial_dependence import (  # noqa: E402
    LOWER_LAYER,
    UPPER_LAYER,
    Protocol,
    TwoLayerSTPNetwork,
    derivative_of_gaussian,
    fit_serial_bias,
    with_time_constant,
    wrap_orientation,
)
from scipy.optimize import curve_fit  # noqa: E402
from tqdm import tqdm  # noqa: E402

METHOD = "serial_dependence"


def _trials(n_trials: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    delta = np.linspace(-88, 88, n_trials)
    s2 = rng.uniform(-90, 90, n_trials)
    return wrap_orientation(s2 + delta), s2


def _window(isis: list[float], amplitudes: list[float]) -> dict:
    """Fit |bias|(ISI) = A exp(-ISI / tau_window); returns the decay constant (s)."""
    isis_arr, amps = np.asarray(isis), np.abs(np.asarray(amplitudes))
    try:
        (a0, tau_w), _ = curve_fit(
            lambda t, a, tw: a * np.exp(-t / tw),
            isis_arr,
            amps,
            p0=(amps[0], 2.0),
            bounds=([0, 0.05], [100, 200]),
        )
    except RuntimeError:
        a0, tau_w = float("nan"), float("nan")
    return {"initial_amplitude": float(a0), "tau_window_s": float(tau_w)}


def run(seed: int = 0, quick: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    n_main, n_window = (80, 60) if quick else (240, 120)
    net = TwoLayerSTPNetwork()
    s1, s2 = _trials(n_main, rng)
    main = net.simulate(s1, s2, Protocol(), rng=seed)
    fits = {layer: fit_serial_bias(main["delta"], main[f"{layer}_error"]) for layer in ("lower", "upper")}

    coarse = TwoLayerSTPNetwork(dt=0.002)  # the window sweep uses a 2 ms step to fit the time budget
    isis = [0.5, 1.0, 2.0, 4.0] if quick else [0.5, 1.0, 2.0, 4.0, 8.0]
    sweeps = {"lower": {}, "upper": {}}
    jobs = [("lower", "tau_d", t) for t in (1.5, 3.0, 6.0)] + [
        ("upper", "tau_f", t) for t in (2.5, 5.0, 10.0)
    ]
    s1w, s2w = _trials(n_window, rng)
    for layer, name, value in tqdm(jobs, desc="STP time-constant sweep"):
        params = with_time_constant(LOWER_LAYER if layer == "lower" else UPPER_LAYER, **{name: value})
        variant = coarse.with_layers(**{layer: params})
        amps = []
        for isi in isis:
            # The lower layer is decoded during S2, so the delay and cue need not be simulated for it.
            protocol = Protocol(isi=isi, delay=0.0, cue=0.002) if layer == "lower" else Protocol(isi=isi)
            out = variant.simulate(s1w, s2w, protocol, rng=seed)
            amps.append(fit_serial_bias(out["delta"], out[f"{layer}_error"])["amplitude"])
        sweeps[layer][f"{name}={value}"] = {"isi_s": isis, "amplitude_deg": amps, **_window(isis, amps)}
    return {
        "config": {
            "n_trials_main": n_main,
            "n_trials_window": n_window,
            "seed": seed,
            "parameters_source": "third-party transcription of the paper's table",
        },
        "main": {
            "delta_deg": main["delta"].tolist(),
            "lower_error_deg": main["lower_error"].tolist(),
            "upper_error_deg": main["upper_error"].tolist(),
            "fits": fits,
        },
        "windows": sweeps,
    }


def plot(result: dict):
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    delta = np.asarray(result["main"]["delta_deg"])
    grid = np.linspace(-90, 90, 361)
    for ax, layer, color in ((axes[0], "lower", "tab:blue"), (axes[1], "upper", "tab:red")):
        err = np.asarray(result["main"][f"{layer}_error_deg"])
        fit = result["main"]["fits"][layer]
        ax.scatter(delta, err, s=6, alpha=0.35, color=color)
        ax.plot(
            grid,
            derivative_of_gaussian(grid, fit["amplitude"], fit["width"]),
            color="k",
            label=f"DoG amplitude {fit['amplitude']:+.2f} deg",
        )
        ax.axhline(0, color="grey", lw=0.5)
        ax.set(
            xlabel="S1 - S2 (deg)",
            ylabel="error of S2 (deg)",
            title=f"{layer} layer ({'repulsion' if layer == 'lower' else 'attraction'} expected)",
        )
        ax.legend(fontsize=8)
    for layer, marker in (("lower", "o-"), ("upper", "s--")):
        for label, sweep in result["windows"][layer].items():
            axes[2].plot(
                sweep["isi_s"],
                sweep["amplitude_deg"],
                marker,
                label=f"{layer} {label} s (window {sweep['tau_window_s']:.1f} s)",
            )
    axes[2].axhline(0, color="grey", lw=0.5)
    axes[2].set(xscale="log", xlabel="ISI (s)", ylabel="DoG amplitude (deg)", title="bias vs ISI")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=default_output_dir(METHOD))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="fewer trials and ISIs (smoke run)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result = run(args.seed, args.quick)
    result["wall_seconds"] = time.perf_counter() - start
    write_json_atomic(args.output / f"{METHOD}.json", result)
    fig = plot(result)
    save_figure_atomic(fig, args.output / f"{METHOD}.png")
    plt.close(fig)
    for layer, fit in result["main"]["fits"].items():
        print(
            f"{layer}: DoG amplitude {fit['amplitude']:+.3f} +- {fit['amplitude_se']:.3f} deg, "
            f"peak at |delta| = {fit['peak_delta']:.1f} deg"
        )
    for layer, sweeps in result["windows"].items():
        for label, sweep in sweeps.items():
            print(
                f"{layer} {label}: amplitudes {np.round(sweep['amplitude_deg'], 2).tolist()} "
                f"window {sweep['tau_window_s']:.2f} s"
            )
    print(f"wall {result['wall_seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()
