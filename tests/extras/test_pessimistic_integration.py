"""Tests for emreason.extras.pessimistic_integration: gradients, density ratio, and simulation vs theory."""

import numpy as np
import pytest
from emreason.extras.pessimistic_integration import (
    PessimisticDataIntegration,
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
