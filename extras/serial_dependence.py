"""Serial dependence from synaptic short-term plasticity in a two-layer continuous attractor network.

"Neural Correlates of Serial Dependence: Synaptic Short-term Plasticity Orchestrates Repulsion and
Attraction" (NeurIPS 2025).

Model (per layer, ring of ``N`` neurons at preferred angles ``theta_i`` in ``[-pi, pi)``; an orientation
``o`` in degrees ``[-90, 90)`` sits at ``theta = 2 o``):

* ``tau du_i/dt = -u_i + sum_j J(theta_i - theta_j) f_j x_j r_j + I_i(t)``
  with ``J(d) = J0 / (sqrt(2 pi) a) * exp(-d^2 / (2 a^2))`` (``d`` wrapped to the ring). The sum over
  ``j`` equals ``rho * integral dtheta'`` with ``rho = N / (2 pi)``.
* divisive normalisation ``r_i = [u_i]_+^2 / (1 + k * sum_j [u_j]_+^2)``.
* Tsodyks-Markram STP in rate form (time in seconds, ``r`` read as a rate in Hz):
  ``dx/dt = (1 - x)/tau_d - f x r`` (resource depletion) and ``df/dt = (U0 - f)/tau_f + U0 (1 - f) r``
  (release-probability facilitation). The synaptic efficacy of neuron ``j`` is ``f_j x_j``.
* The upper layer receives the lower layer's rates through a Gaussian feed-forward kernel
  (``J_ff``, ``a_ff``), without STP on that pathway (an assumption: the source does not say).
* External inputs are Gaussian bumps ``A exp(-d^2 / (4 w^2))`` plus independent Gaussian noise of
  standard deviation ``noise`` drawn per neuron per time step. The stimulus drives the lower layer;
  the cue drives the upper layer and is centred on the current stimulus S2 (our reading of "cue").

All numeric parameters come from a third-party transcription of the paper's table (the paper itself was
not available to us); the feed-forward STP choice, the cue centre, the noise discretisation and the
decoding windows are our own assumptions. Decoding is the population-vector angle of the rates averaged
over a window: the lower layer during S2 (perception), the upper layer during the cue (report).

Serial bias is measured as the error of S2 against ``delta = S1 - S2`` (both wrapped to ``[-90, 90)``)
and fitted with a derivative-of-Gaussian ``error = A * sqrt(2) e^{1/2} w delta exp(-(w delta)^2)``,
so ``A`` is the signed peak bias in degrees: negative = repulsion, positive = attraction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import curve_fit

__all__ = [
    "LayerParams",
    "LOWER_LAYER",
    "UPPER_LAYER",
    "Protocol",
    "TwoLayerSTPNetwork",
    "wrap_orientation",
    "derivative_of_gaussian",
    "fit_serial_bias",
]


@dataclass(frozen=True)
class LayerParams:
    """One attractor layer: recurrent strength ``J0``, width ``a`` (rad), normalisation ``k``, STP constants
    ``tau_d``/``tau_f`` (s) and baseline release probability ``U0``."""

    J0: float
    a: float
    k: float
    tau_d: float
    tau_f: float
    U0: float

    def __post_init__(self):
        for name in ("J0", "a", "k", "tau_d", "tau_f", "U0"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"LayerParams.{name} must be positive and finite, got {value!r}")
        if self.U0 > 1:
            raise ValueError(f"LayerParams.U0 is a probability, got {self.U0!r}")


LOWER_LAYER = LayerParams(J0=0.13, a=0.5, k=0.0018, tau_d=3.0, tau_f=0.3, U0=0.5)  # depression-dominated
UPPER_LAYER = LayerParams(J0=0.09, a=0.15, k=0.0095, tau_d=0.3, tau_f=5.0, U0=0.2)  # facilitation-dominated


@dataclass(frozen=True)
class Protocol:
    """Trial timeline in seconds: S1, inter-stimulus interval, S2, delay, cue (the ITI is not simulated:
    every trial starts from rest, with full resources and baseline release probability)."""

    s1: float = 0.2
    isi: float = 1.0
    s2: float = 0.2
    delay: float = 3.4
    cue: float = 0.5
    iti: float = 1.0

    def __post_init__(self):
        for name in ("s1", "isi", "s2", "delay", "cue", "iti"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"Protocol.{name} must be a non-negative duration in seconds, got {value!r}")
        if self.s2 <= 0 or self.cue <= 0:
            raise ValueError("Protocol.s2 and Protocol.cue must be positive: they are the decoding windows")


def wrap_orientation(degrees: np.ndarray) -> np.ndarray:
    """Wrap orientations (degrees) to ``[-90, 90)``."""
    return (np.asarray(degrees, dtype=np.float64) + 90.0) % 180.0 - 90.0


def derivative_of_gaussian(delta: np.ndarray, amplitude: float, width: float) -> np.ndarray:
    """DoG curve with peak value ``amplitude`` (deg) at ``delta = 1/(sqrt(2) width)``."""
    scale = np.sqrt(2.0) * np.exp(0.5)
    return amplitude * scale * width * delta * np.exp(-((width * delta) ** 2))


def fit_serial_bias(delta: np.ndarray, error: np.ndarray) -> dict[str, float]:
    """Least-squares DoG fit of ``error`` vs ``delta`` (degrees, 1-D arrays of equal length).

    Returns ``amplitude`` (signed peak bias, deg), ``width`` (1/deg), ``peak_delta`` (deg) and
    ``amplitude_se`` (standard error of the amplitude).
    """
    delta = np.asarray(delta, dtype=np.float64)
    error = np.asarray(error, dtype=np.float64)
    if delta.ndim != 1 or delta.shape != error.shape or delta.size < 4:
        raise ValueError(
            f"delta and error must be 1-D of equal length >= 4, got {delta.shape}, {error.shape}"
        )
    if not (np.all(np.isfinite(delta)) and np.all(np.isfinite(error))):
        raise ValueError("delta and error must be finite")
    best = None
    for width0 in (0.01, 0.02, 0.04, 0.08):  # multi-start: the width enters non-linearly
        amp0 = float(np.sign(np.mean(error * delta)) or 1.0) * max(np.std(error), 1e-3)
        try:
            params, cov = curve_fit(
                derivative_of_gaussian, delta, error, p0=(amp0, width0), bounds=([-90, 1e-3], [90, 1.0])
            )
        except RuntimeError:
            continue
        residual = float(np.sum((derivative_of_gaussian(delta, *params) - error) ** 2))
        if best is None or residual < best[0]:
            best = (residual, params, cov)
    if best is None:
        raise RuntimeError("derivative-of-Gaussian fit did not converge")
    _, (amplitude, width), cov = best
    return {
        "amplitude": float(amplitude),
        "width": float(width),
        "peak_delta": float(1.0 / (np.sqrt(2.0) * width)),
        "amplitude_se": float(np.sqrt(max(cov[0, 0], 0.0))),
    }


def _ring_kernel(theta: np.ndarray, strength: float, width: float) -> np.ndarray:
    diff = np.angle(np.exp(1j * (theta[:, None] - theta[None, :])))
    return strength / (np.sqrt(2 * np.pi) * width) * np.exp(-(diff**2) / (2 * width**2))


class TwoLayerSTPNetwork:
    """Lower (sensory, STD) and upper (post-perceptual, STF) ring attractors, simulated for many trials at
    once with forward Euler.

    Parameters: ``n_neurons``; ``tau`` (s) neural time constant; ``lower``/``upper`` layer parameters;
    feed-forward ``ff_J0``/``ff_a``; stimulus and cue ``*_strength``, ``*_width`` (rad) and ``*_noise``
    (std per neuron per step); ``dt`` (s).
    """

    def __init__(
        self,
        n_neurons: int = 100,
        tau: float = 0.01,
        lower: LayerParams = LOWER_LAYER,
        upper: LayerParams = UPPER_LAYER,
        ff_J0: float = 0.02,
        ff_a: float = 0.15,
        stim_strength: float = 20.0,
        stim_width: float = 0.3,
        stim_noise: float = 0.5,
        cue_strength: float = 2.5,
        cue_width: float = 0.4,
        cue_noise: float = 1.0,
        dt: float = 0.001,
    ):
        if not isinstance(n_neurons, (int, np.integer)) or n_neurons < 8:
            raise ValueError(f"n_neurons must be an integer >= 8, got {n_neurons!r}")
        if not (0 < dt <= tau / 2):
            raise ValueError(
                f"dt must lie in (0, tau/2] = (0, {tau / 2}] for a stable Euler step, got {dt!r}"
            )
        for name, value in (("ff_a", ff_a), ("stim_width", stim_width), ("cue_width", cue_width)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        for name, value in (("stim_noise", stim_noise), ("cue_noise", cue_noise), ("ff_J0", ff_J0)):
            if value < 0:
                raise ValueError(f"{name} must be non-negative, got {value!r}")
        self.n_neurons, self.tau, self.dt = int(n_neurons), float(tau), float(dt)
        self.lower, self.upper = lower, upper
        self.stim = (float(stim_strength), float(stim_width), float(stim_noise))
        self.cue = (float(cue_strength), float(cue_width), float(cue_noise))
        self.theta = -np.pi + 2 * np.pi * np.arange(n_neurons) / n_neurons
        self._w_lower = _ring_kernel(self.theta, lower.J0, lower.a)
        self._w_upper = _ring_kernel(self.theta, upper.J0, upper.a)
        self._w_ff = _ring_kernel(self.theta, ff_J0, ff_a)

    def with_layers(self, lower: LayerParams | None = None, upper: LayerParams | None = None):
        """Copy of this network with replaced layer parameters (e.g. another STP time constant)."""
        net = TwoLayerSTPNetwork.__new__(TwoLayerSTPNetwork)
        net.__dict__.update(self.__dict__)
        net.lower, net.upper = lower or self.lower, upper or self.upper
        net._w_lower = _ring_kernel(net.theta, net.lower.J0, net.lower.a)
        net._w_upper = _ring_kernel(net.theta, net.upper.J0, net.upper.a)
        return net

    def _bump(self, centre_rad: np.ndarray, strength: float, width: float) -> np.ndarray:
        diff = np.angle(np.exp(1j * (self.theta[None, :] - centre_rad[:, None])))
        return strength * np.exp(-(diff**2) / (4 * width**2))

    def _decode(self, rates: np.ndarray) -> np.ndarray:
        """Population vector of ``rates`` ``(T, N)`` -> orientation in degrees ``(T,)``."""
        vector = rates @ np.exp(1j * self.theta)
        return wrap_orientation(np.degrees(np.angle(vector)) / 2.0)

    def simulate(
        self, s1_deg: np.ndarray, s2_deg: np.ndarray, protocol: Protocol = Protocol(), rng=None
    ) -> dict[str, np.ndarray]:
        """Run one trial per (S1, S2) pair; orientations in degrees, shape ``(T,)``.

        Returns decoded ``lower`` (mean rate during S2) and ``upper`` (mean rate during the cue)
        orientations ``(T,)`` in degrees, their errors against S2 wrapped to ``[-90, 90)``, ``delta``
        (``S1 - S2`` wrapped), and the peak rates of both layers during decoding (to detect silent layers).
        """
        s1_deg = np.atleast_1d(np.asarray(s1_deg, dtype=np.float64))
        s2_deg = np.atleast_1d(np.asarray(s2_deg, dtype=np.float64))
        if s1_deg.ndim != 1 or s1_deg.shape != s2_deg.shape:
            raise ValueError(
                f"s1_deg and s2_deg must be 1-D of equal length, got {s1_deg.shape}, {s2_deg.shape}"
            )
        if not (np.all(np.isfinite(s1_deg)) and np.all(np.isfinite(s2_deg))):
            raise ValueError("stimulus orientations must be finite")
        rng = np.random.default_rng(rng)
        n_trials, n = s1_deg.size, self.n_neurons
        stim_s1 = self._bump(np.radians(2 * s1_deg), *self.stim[:2])
        stim_s2 = self._bump(np.radians(2 * s2_deg), *self.stim[:2])
        cue_in = self._bump(np.radians(2 * s2_deg), *self.cue[:2])

        u = {"lower": np.zeros((n_trials, n)), "upper": np.zeros((n_trials, n))}
        res = {"lower": np.ones((n_trials, n)), "upper": np.ones((n_trials, n))}
        rel = {"lower": np.full((n_trials, n), self.lower.U0), "upper": np.full((n_trials, n), self.upper.U0)}
        params = {"lower": self.lower, "upper": self.upper}
        kernels = {"lower": self._w_lower, "upper": self._w_upper}

        phases = [
            ("s1", protocol.s1, stim_s1, None),
            ("isi", protocol.isi, None, None),
            ("s2", protocol.s2, stim_s2, None),
            ("delay", protocol.delay, None, None),
            ("cue", protocol.cue, None, cue_in),
        ]
        sums = {"lower": np.zeros((n_trials, n)), "upper": np.zeros((n_trials, n))}
        peak = {"lower": np.zeros(n_trials), "upper": np.zeros(n_trials)}
        dt, tau = self.dt, self.tau
        for name, duration, lower_drive, upper_drive in phases:
            for _ in range(int(round(duration / dt))):
                rates = {}
                for layer in ("lower", "upper"):
                    pos = np.maximum(u[layer], 0.0)
                    rates[layer] = pos**2 / (1.0 + params[layer].k * np.sum(pos**2, axis=1, keepdims=True))
                inputs = {
                    "lower": self.stim[2] * rng.standard_normal((n_trials, n)),
                    "upper": rates["lower"] @ self._w_ff.T,
                }
                if lower_drive is not None:
                    inputs["lower"] += lower_drive
                if upper_drive is not None:
                    inputs["upper"] += upper_drive + self.cue[2] * rng.standard_normal((n_trials, n))
                for layer in ("lower", "upper"):
                    p, r = params[layer], rates[layer]
                    recurrent = (rel[layer] * res[layer] * r) @ kernels[layer].T
                    u[layer] += dt / tau * (-u[layer] + recurrent + inputs[layer])
                    depletion = rel[layer] * res[layer] * r
                    res[layer] += dt * ((1.0 - res[layer]) / p.tau_d - depletion)
                    rel[layer] += dt * ((p.U0 - rel[layer]) / p.tau_f + p.U0 * (1.0 - rel[layer]) * r)
                    np.clip(res[layer], 0.0, 1.0, out=res[layer])
                    np.clip(rel[layer], 0.0, 1.0, out=rel[layer])
                if name == "s2":
                    sums["lower"] += rates["lower"]
                    peak["lower"] = np.maximum(peak["lower"], rates["lower"].max(axis=1))
                elif name == "cue":
                    sums["upper"] += rates["upper"]
                    peak["upper"] = np.maximum(peak["upper"], rates["upper"].max(axis=1))

        decoded_lower = self._decode(sums["lower"])
        decoded_upper = self._decode(sums["upper"])
        return {
            "delta": wrap_orientation(s1_deg - s2_deg),
            "lower": decoded_lower,
            "upper": decoded_upper,
            "lower_error": wrap_orientation(decoded_lower - s2_deg),
            "upper_error": wrap_orientation(decoded_upper - s2_deg),
            "lower_peak_rate": peak["lower"],
            "upper_peak_rate": peak["upper"],
        }


def with_time_constant(params: LayerParams, **changes) -> LayerParams:
    """``dataclasses.replace`` for layer parameters (validated again)."""
    return replace(params, **changes)
