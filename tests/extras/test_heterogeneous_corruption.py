"""Tests for emreason.extras.heterogeneous_corruption against independent computations."""

import numpy as np
import pytest
from emreason.extras.heterogeneous_corruption import (
    HeterogeneousMeanEstimator,
    HeterogeneousRobustRegressor,
    effective_rate,
    linear_estimator_mse_bounded,
    optimal_linear_weights,
    weighted_median,
)
from scipy.optimize import minimize


def _rates(q, n, seed):
    return 1.0 - (1.0 - np.random.default_rng(seed).random(n)) ** q


@pytest.mark.parametrize("q", [0.03, 0.3, 1.0, 3.0])
def test_optimal_linear_weights_match_numerical_solver(q):
    rates = _rates(q, 30, seed=1)
    weights = optimal_linear_weights(rates)

    def objective(w):
        return w @ w + 3.0 * (w @ rates) ** 2

    reference = minimize(
        objective,
        np.full(30, 1 / 30),
        method="SLSQP",
        bounds=[(0, 1)] * 30,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    assert abs(weights.sum() - 1) < 1e-12 and weights.min() >= 0
    assert objective(weights) <= reference.fun + 1e-10
    np.testing.assert_allclose(weights, reference.x, atol=1e-5)


def test_optimal_linear_weights_fall_linearly_and_vanish_above_threshold():
    rates = _rates(1.0, 200, seed=2)
    weights = optimal_linear_weights(rates)
    order = np.argsort(rates)
    w_sorted, r_sorted = weights[order], rates[order]
    support = w_sorted > 0
    assert 0 < support.sum() < len(rates)  # some samples dropped
    assert np.all(np.diff(w_sorted) <= 1e-15)  # non-increasing in lambda
    assert not np.any(support[np.argmin(support) :])  # zero weight is a suffix
    slope, intercept = np.polyfit(r_sorted[support], w_sorted[support], 1)
    np.testing.assert_allclose(w_sorted[support], intercept + slope * r_sorted[support], atol=1e-12)


def test_effective_rate_matches_grid_search():
    rates = _rates(0.2, 500, seed=3)
    for k in (1, 5):
        value, threshold = effective_rate(rates, k)
        grid = np.linspace(0, 1, 200_001)
        counts = np.searchsorted(np.sort(rates), grid, side="right")
        brute = np.where(counts > 0, k / np.maximum(counts, 1) + grid**2, np.inf)
        assert value <= brute.min() + 1e-12
        assert value >= brute.min() - 1e-4
        assert abs(value - (k / np.sum(rates <= threshold) + threshold**2)) < 1e-12


def test_bounded_simulation_matches_exact_mse():
    rng = np.random.default_rng(4)
    rates = _rates(0.5, 300, seed=5)
    for method in ("optimal_linear", "threshold", "sample_mean"):
        weights = HeterogeneousMeanEstimator(method).fit(np.zeros(300), rates).weights_
        draws = (rng.random((20_000, 300)) < rates).astype(float) @ weights
        squared = draws**2
        exact = linear_estimator_mse_bounded(weights, rates)
        standard_error = squared.std() / np.sqrt(len(squared))
        assert abs(squared.mean() - exact) < 4 * standard_error, method


def test_weighted_median_minimises_weighted_absolute_deviation():
    rng = np.random.default_rng(6)
    values, weights = rng.normal(size=41), rng.random(41)
    median = weighted_median(values, weights)
    costs = np.abs(values[:, None] - values[None, :]) @ weights  # cost at each candidate value
    assert np.isclose(np.abs(values - median) @ weights, costs.min())
    assert weighted_median(np.array([1.0, 2.0, 3.0]), np.ones(3)) == 2.0


def test_gaussian_case_robust_estimators_ignore_far_outliers():
    rng = np.random.default_rng(7)
    rates = _rates(0.1, 5000, seed=8)
    corrupted = rng.random(5000) < rates
    data = rng.normal(size=5000) + 100.0 * corrupted
    errors = {
        m: abs(HeterogeneousMeanEstimator(m, "gaussian").fit(data, rates).location_)
        for m in ("optimal_linear", "threshold", "sample_mean")
    }
    assert errors["optimal_linear"] < 0.1 and errors["threshold"] < 0.1
    assert errors["sample_mean"] > 1.0


def test_multivariate_mean_uses_dimension_in_threshold():
    rng = np.random.default_rng(9)
    rates = _rates(0.3, 2000, seed=10)
    corrupted = rng.random(2000) < rates
    data = rng.normal(size=(2000, 3)) + 50.0 * corrupted[:, None]
    fitted = HeterogeneousMeanEstimator("threshold", "gaussian").fit(data, rates)
    assert fitted.location_.shape == (3,)
    assert fitted.threshold_ == effective_rate(rates, 3)[1]
    assert np.linalg.norm(fitted.location_) < 0.3


def test_regression_with_corrupted_rows():
    rng = np.random.default_rng(11)
    n = 400
    rates = _rates(0.3, n, seed=12)
    X = rng.normal(size=(n, 2))
    beta = np.array([1.5, -2.0])
    y = X @ beta + 0.5 + 0.1 * rng.normal(size=n)
    y[rng.random(n) < rates] += 200.0
    for weighting in ("threshold", "optimal_linear"):
        fitted = HeterogeneousRobustRegressor(weighting).fit(X, y, rates)
        np.testing.assert_allclose(fitted.coef_, beta, atol=0.1)
        assert abs(fitted.intercept_ - 0.5) < 0.1
    ols = HeterogeneousRobustRegressor("none").fit(X, y, rates)
    assert abs(ols.intercept_ - 0.5) > 5.0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="corruption_rates"):
        optimal_linear_weights(np.array([0.1, 1.5]))
    with pytest.raises(ValueError, match="samples"):
        HeterogeneousMeanEstimator().fit(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="method"):
        HeterogeneousMeanEstimator("bogus").fit(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="k must be positive"):
        effective_rate(np.zeros(3), k=0)
