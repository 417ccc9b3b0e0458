"""Tests for emreason.extras.pessimistic_integration: gradients, density ratio, and simulation vs theory."""

import re

import numpy as np
import pytest
from emreason.extras.pessimistic_integration import (
    PessimisticDataIntegration,
    dr_components,
    moment_matching_density_ratio,
    mse_bound_and_grad,
)
from scipy.optimize import check_grad


def _simulate(n_e, n_h, shift, rng, hist_mean=0.0):
    s_exp = rng.normal(size=n_e)
    a_exp = rng.permutation(np.arange(n_e) % 2).astype(float)
    r_exp = 1 + s_exp + a_exp * (1 + s_exp / 2) + rng.normal(size=n_e)
    s_hist = rng.normal(loc=hist_mean, size=n_h)
    r_hist = 1 + s_hist + shift * 2.0 / (1.0 + np.exp(-3.0 * s_hist)) + rng.normal(size=n_h)
    return s_exp, a_exp, r_exp, s_hist, r_hist


TRUE_ATE = 1.0


@pytest.fixture(scope="module")
def replications():
    """Estimates over 60 replications at zero and large shift (n_e = 100, n_h = 300)."""
    out = {}
    for shift in (0.0, 2.0):
        rng = np.random.default_rng(int(shift * 10) + 1)
        rows, variances = [], []
        for rep in range(60):
            model = PessimisticDataIntegration(random_state=rep, n_restarts=0).fit(
                *_simulate(100, 300, shift, rng)
            )
            rows.append([model.estimates_[k] for k in ("EDO", "HDB", "MVE", "Pessi", "NonPessi", "CWE")])
            c = model.components_
            variances.append(np.var(c.z1 - c.z0, ddof=1) / len(c.z1))
        out[shift] = (np.array(rows), np.array(variances))
    return out


def test_bound_gradient_matches_finite_differences():
    model = PessimisticDataIntegration().fit(*_simulate(60, 120, 0.7, np.random.default_rng(0)))
    c = model.components_
    for z in (0.0, 1.64):
        for coef in (np.array([0.3, -0.7]), np.array([-1.0, 2.0])):
            error = check_grad(
                lambda x, z=z: mse_bound_and_grad(x, c, z)[0],
                lambda x, z=z: mse_bound_and_grad(x, c, z)[1],
                coef,
            )
            assert error < 1e-5


def test_edo_is_unbiased_and_its_variance_formula_matches_simulation(replications):
    estimates, variances = replications[0.0]
    edo = estimates[:, 0]
    assert abs(edo.mean() - TRUE_ATE) < 4 * edo.std() / np.sqrt(len(edo))
    # Plug-in Var(Z_e)/n_e against the Monte Carlo variance of the estimates (~18% noise at 60 reps).
    assert 0.6 < variances.mean() / edo.var(ddof=1) < 1.6


def test_no_shift_integration_beats_edo(replications):
    estimates, _ = replications[0.0]
    mse = ((estimates - TRUE_ATE) ** 2).mean(axis=0)
    edo, hdb, mve, pessi = mse[:4]
    assert mve < 0.8 * edo and hdb < 0.8 * edo
    # Pessimism pays a price for robustness: it must not be worse than EDO without shift.
    assert pessi < 1.05 * edo


def test_large_shift_pessimism_stays_near_edo_while_hdb_and_mve_blow_up(replications):
    estimates, _ = replications[2.0]
    mse = ((estimates - TRUE_ATE) ** 2).mean(axis=0)
    edo, hdb, mve, pessi = mse[:4]
    assert hdb > 10 * edo and mve > 3 * edo
    assert pessi < 1.5 * edo


def test_moment_matching_recovers_exponential_tilt():
    rng = np.random.default_rng(3)
    source = rng.normal(size=(20_000, 1))
    target = rng.normal(loc=0.5, size=(20_000, 1))
    rho, alpha = moment_matching_density_ratio(source, target)
    assert abs(rho.mean() - 1.0) < 1e-9
    assert abs((rho * source[:, 0]).mean() - target.mean()) < 1e-4
    # True ratio N(0.5, 1) / N(0, 1) = exp(0.5 s - 0.125): slope 0.5.
    assert abs(alpha[0] - 0.5) < 0.05


def test_covariate_shift_option_runs_and_weight_in_unit_interval():
    model = PessimisticDataIntegration(covariate_shift=True).fit(
        *_simulate(60, 120, 0.3, np.random.default_rng(4), hist_mean=0.4)
    )
    w = model.weight(np.linspace(-3, 3, 7))
    assert np.all((w >= 0) & (w <= 1))
    assert set(model.estimates_) == {"EDO", "HDB", "MVE", "NonPessi", "CWE", "Pessi"}


def test_bad_inputs_raise():
    s_exp, a_exp, r_exp, s_hist, r_hist = _simulate(40, 40, 0.0, np.random.default_rng(5))
    with pytest.raises(ValueError, match="binary"):
        PessimisticDataIntegration().fit(s_exp, a_exp + 2, r_exp, s_hist, r_hist)
    with pytest.raises(ValueError, match="historical"):
        PessimisticDataIntegration().fit(s_exp, a_exp, r_exp, s_hist, r_hist[:-1])
    with pytest.raises(ValueError, match="z must be"):
        PessimisticDataIntegration(z=-1).fit(s_exp, a_exp, r_exp, s_hist, r_hist)


def test_known_propensity_makes_edo_variance_match_its_plug_in_formula():
    """n_e = 48 (24 units per fold): with the known 1/2 the plug-in variance of EDO matches the Monte Carlo
    variance tightly; the almost unpenalised fitted propensity (the old C = 1e4) inflates and fattens the
    error (n_e x MSE ~14 vs ~4.6 in a 1000-replication check)."""
    n_e, reps = 48, 300
    errors = {"known": [], "fitted": []}
    plug_in = []
    for rep in range(reps):
        s_exp, a_exp, r_exp, s_hist, r_hist = _simulate(n_e, n_e, 0.0, np.random.default_rng([11, rep]))
        args = (s_exp[:, None], a_exp, r_exp, s_hist[:, None], r_hist)
        known = dr_components(*args, rng=np.random.default_rng(rep), propensity=0.5)
        fitted = dr_components(*args, rng=np.random.default_rng(rep), propensity=None, propensity_C=1e4)
        errors["known"].append((known.z1 - known.z0).mean() - TRUE_ATE)
        errors["fitted"].append((fitted.z1 - fitted.z0).mean() - TRUE_ATE)
        plug_in.append(np.var(known.z1 - known.z0, ddof=1) / n_e)
    known_err, fitted_err = np.array(errors["known"]), np.array(errors["fitted"])
    assert abs(known_err.mean()) < 4 * known_err.std() / np.sqrt(reps)
    # Relative noise of the Monte Carlo variance at 300 near-Gaussian replications is ~8%.
    assert 0.8 < np.mean(plug_in) / known_err.var(ddof=1) < 1.25
    assert (known_err**2).mean() < 0.6 * (fitted_err**2).mean()


def test_known_propensity_is_used_as_is_without_clipping():
    s_exp, a_exp, r_exp, s_hist, r_hist = _simulate(40, 40, 0.0, np.random.default_rng(6))
    fits = {
        pi: PessimisticDataIntegration(propensity=pi, n_restarts=0).fit(s_exp, a_exp, r_exp, s_hist, r_hist)
        for pi in (0.02, 0.5)  # 0.02 is outside the [0.05, 0.95] clip applied to fitted propensities
    }
    small, half = fits[0.02].components_, fits[0.5].components_
    treated, control = a_exp == 1, a_exp == 0
    # Same folds and outcome models, so Z1 = mu1 + A (R - mu1) / pi differs only through 1 / pi: recover R.
    e1 = (small.z1 - half.z1)[treated] / (1 / 0.02 - 1 / 0.5)
    np.testing.assert_allclose(half.z1[treated] - e1, r_exp[treated], atol=1e-9)
    e0 = (small.z0 - half.z0)[control] / (1 / 0.98 - 1 / 0.5)
    np.testing.assert_allclose(half.z0[control] - e0, r_exp[control], atol=1e-9)
    np.testing.assert_allclose(small.z1[control], half.z1[control], atol=1e-12)


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.2, float("nan"), "0.5", True])
def test_bad_propensity_raises_naming_the_value(bad):
    data = _simulate(40, 40, 0.0, np.random.default_rng(7))
    with pytest.raises(
        ValueError, match=r"propensity must be None or a float in \(0, 1\), got " + re.escape(repr(bad))
    ):
        PessimisticDataIntegration(propensity=bad).fit(*data)


def test_bad_propensity_c_raises():
    data = _simulate(40, 40, 0.0, np.random.default_rng(8))
    with pytest.raises(ValueError, match="propensity_C must be a finite float > 0, got 0"):
        PessimisticDataIntegration(propensity_C=0).fit(*data)


def test_mve_weight_matches_closed_form_without_shift():
    """No shift, known propensity 1/2, unit noise: n_e Var(w) = 4.25 - 4 w + (2 + n_e / n_h) w^2, so the
    variance-minimising constant weight is 2 / (2 + n_e / n_h) = 6/7 for n_e = 200, n_h = 600."""
    weights = []
    for rep in range(10):
        data = _simulate(200, 600, 0.0, np.random.default_rng([21, rep]))
        model = PessimisticDataIntegration(propensity=0.5, n_restarts=0, random_state=rep).fit(*data)
        weights.append(model.constant_weights_["MVE"])
    assert abs(np.mean(weights) - 6 / 7) < 0.06


def test_pessimistic_weight_vanishes_under_large_shift_and_is_positive_without():
    from emreason.extras.reproduce.pessimistic_integration import simulate

    mean_w = {}
    for kappa in (0.0, 30.0):
        ws = []
        for rep in range(8):
            data = simulate(200, 600, kappa, False, np.random.default_rng([22, rep]))
            model = PessimisticDataIntegration(propensity=0.5, n_restarts=0, random_state=rep).fit(*data)
            ws.append(model.weight(data[0]).mean())
        mean_w[kappa] = np.mean(ws)
    assert mean_w[30.0] < 0.02
    assert mean_w[0.0] > 0.05
