"""Tests for emreason.extras.serial_dependence."""

import numpy as np
import pytest
from emreason.extras.serial_dependence import (
    LOWER_LAYER,
    LayerParams,
    Protocol,
    TwoLayerSTPNetwork,
    derivative_of_gaussian,
    fit_serial_bias,
    with_time_constant,
    wrap_orientation,
)


def test_wrap_orientation():
    np.testing.assert_allclose(
        wrap_orientation([95.0, -91.0, 0.0, 90.0, 180.0]), [-85.0, 89.0, 0.0, -90.0, 0.0]
    )


def test_dog_peak_is_amplitude():
    width = 0.03
    peak_delta = 1 / (np.sqrt(2) * width)
    assert derivative_of_gaussian(np.array([peak_delta]), 2.5, width)[0] == pytest.approx(2.5)
    grid = np.linspace(-90, 90, 20001)
    assert derivative_of_gaussian(grid, 2.5, width).max() == pytest.approx(2.5, rel=1e-6)


def test_fit_recovers_synthetic_bias():
    rng = np.random.default_rng(0)
    delta = rng.uniform(-90, 90, 400)
    error = derivative_of_gaussian(delta, -1.7, 0.035) + 0.3 * rng.standard_normal(400)
    fit = fit_serial_bias(delta, error)
    assert fit["amplitude"] == pytest.approx(-1.7, abs=4 * fit["amplitude_se"] + 0.05)
    assert fit["width"] == pytest.approx(0.035, rel=0.15)


def test_ring_kernel_integrates_to_rho_J0():
    net = TwoLayerSTPNetwork()
    rho = net.n_neurons / (2 * np.pi)
    # sum_j J(theta_i - theta_j) = rho * integral J = rho * J0 when the kernel is narrow against the ring
    np.testing.assert_allclose(net._w_lower.sum(axis=1), rho * LOWER_LAYER.J0, rtol=1e-3)


def test_noise_free_network_reports_the_stimulus_when_s1_equals_s2():
    net = TwoLayerSTPNetwork(stim_noise=0.0, cue_noise=0.0, dt=0.002)
    s = np.array([-60.0, 10.0, 45.0])
    out = net.simulate(s, s, Protocol(delay=0.5), rng=0)
    np.testing.assert_allclose(out["lower_error"], 0.0, atol=0.2)
    np.testing.assert_allclose(out["upper_error"], 0.0, atol=0.2)
    assert np.all(out["lower_peak_rate"] > 1.0) and np.all(out["upper_peak_rate"] > 0.1)


@pytest.fixture(scope="module")
def biases():
    net = TwoLayerSTPNetwork(dt=0.002)
    delta = np.tile(np.linspace(-80, 80, 24), 2)
    s2 = np.random.default_rng(3).uniform(-90, 90, delta.size)
    s1 = wrap_orientation(s2 + delta)
    out = net.simulate(s1, s2, rng=1)
    fast_recovery = net.with_layers(lower=with_time_constant(LOWER_LAYER, tau_d=0.05))
    out_fast = fast_recovery.simulate(s1, s2, Protocol(delay=0.0, cue=0.002), rng=1)
    return (
        fit_serial_bias(out["delta"], out["lower_error"]),
        fit_serial_bias(out["delta"], out["upper_error"]),
        fit_serial_bias(out_fast["delta"], out_fast["lower_error"]),
    )


def test_lower_layer_repels_and_upper_layer_attracts(biases):
    lower, upper, _ = biases
    assert lower["amplitude"] < -0.3
    assert upper["amplitude"] > 0.2


def test_repulsion_needs_slow_depression(biases):
    # With resources recovering in 50 ms nothing silences the S1 bump, so the lower layer keeps it
    # active and S2 is pulled toward it: the sign of the bias flips.
    _, _, lower_fast = biases
    assert lower_fast["amplitude"] > 0.3


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="U0"):
        LayerParams(J0=0.1, a=0.5, k=0.001, tau_d=1, tau_f=1, U0=1.5)
    with pytest.raises(ValueError, match="tau_d"):
        LayerParams(J0=0.1, a=0.5, k=0.001, tau_d=-1, tau_f=1, U0=0.5)
    with pytest.raises(ValueError, match="dt"):
        TwoLayerSTPNetwork(dt=0.01)
    with pytest.raises(ValueError, match="isi"):
        Protocol(isi=-1.0)
    with pytest.raises(ValueError, match="equal length"):
        TwoLayerSTPNetwork().simulate(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="equal length"):
        fit_serial_bias(np.zeros(5), np.zeros(4))
