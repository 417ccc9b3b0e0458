"""Robust estimation under heterogeneous corruption rates (Chaudhuri, Li & Courtade, NeurIPS 2025).

Model (lambda-contamination): sample ``i`` is replaced by an arbitrary value with a *known* probability
``lambda_i``, independently across samples. The minimax rates are governed by the effective rate

    f(lambda, k) = min_t  k / N(t) + t^2,      N(t) = #{i : lambda_i <= t},

where ``k`` is the dimension (``k = 1`` for a scalar mean). The minimising ``t`` is a corruption threshold:
samples whose rate exceeds it are discarded by the threshold estimators.

Estimators here:

* ``threshold``: keep the samples with ``lambda_i <= t*`` and average them (bounded data) or take their
  (coordinate-wise) median (Gaussian data);
* ``optimal_linear``: the weights minimising ``||w||^2 + 3 (w' lambda)^2`` over the simplex (derived closed
  form in :func:`optimal_linear_weights`), used as a weighted mean (bounded data) or a weighted median
  (Gaussian data);
* ``sample_mean``: the unweighted mean (the non-robust baseline).

:class:`HeterogeneousRobustRegressor` applies the same two weightings to least-absolute-deviation regression.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from sklearn.linear_model import QuantileRegressor

__all__ = [
    "effective_rate",
    "optimal_linear_weights",
    "weighted_median",
    "linear_estimator_mse_bounded",
    "HeterogeneousMeanEstimator",
    "HeterogeneousRobustRegressor",
]

MeanMethod = Literal["optimal_linear", "threshold", "sample_mean"]
Distribution = Literal["bounded", "gaussian"]

# The quadratic penalty ||w||^2 + BIAS_PENALTY (w'lambda)^2 of the optimal-linear estimator (paper's choice).
BIAS_PENALTY = 3.0


def _check_rates(corruption_rates: np.ndarray, n_samples: int | None = None) -> np.ndarray:
    rates = np.asarray(corruption_rates, dtype=np.float64)
    if rates.ndim != 1 or rates.size == 0:
        raise ValueError(f"corruption_rates must be a non-empty 1-D array, got shape {rates.shape}")
    if n_samples is not None and rates.size != n_samples:
        raise ValueError(f"corruption_rates has {rates.size} entries but there are {n_samples} samples")
    if not np.all(np.isfinite(rates)) or rates.min() < 0.0 or rates.max() > 1.0:
        raise ValueError(f"corruption_rates must lie in [0, 1]; got min {rates.min()}, max {rates.max()}")
    return rates


def effective_rate(corruption_rates: np.ndarray, k: float = 1.0) -> tuple[float, float]:
    """Return ``(f(lambda, k), t*)``: the effective rate and the threshold that attains it.

    ``N(t)`` is a step function that only jumps at the observed rates and ``t^2`` increases, so the minimum
    over ``t`` is attained at one of the sorted rates ``lambda_(j)``, where ``N = j`` (ties counted).
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    rates = np.sort(_check_rates(corruption_rates))
    # N(lambda_(j)) counts ties too: use the last index of each run of equal values.
    counts = np.searchsorted(rates, rates, side="right").astype(np.float64)
    values = k / counts + rates**2
    best = int(np.argmin(values))
    return float(values[best]), float(rates[best])


def optimal_linear_weights(corruption_rates: np.ndarray, bias_penalty: float = BIAS_PENALTY) -> np.ndarray:
    """Weights ``w >= 0, sum w = 1`` minimising ``||w||^2 + c (w' lambda)^2`` (``c = bias_penalty``).

    Closed form (derived here; the paper states only the shape). KKT with multiplier ``nu`` for the sum and
    ``s = w' lambda`` gives ``w_i = max(0, a - b lambda_i)`` with ``a = nu / 2`` and ``b = c s``: weights fall
    linearly in ``lambda`` and vanish above ``a / b``. The support is therefore a prefix of the samples
    sorted by rate; on a support of size ``m`` with ``S1 = sum lambda``, ``S2 = sum lambda^2`` the two
    conditions ``a m - b S1 = 1`` and ``b = c (a S1 - b S2)`` give

        a = (1 + c S2) / (m (1 + c S2) - c S1^2),     b = c a S1 / (1 + c S2).

    The objective is strictly convex, so the unique prefix whose weights are positive inside and would be
    non-positive outside is the solution. Returns shape ``(n,)``, in the input order.
    """
    if bias_penalty < 0:
        raise ValueError(f"bias_penalty must be >= 0, got {bias_penalty}")
    rates = _check_rates(corruption_rates)
    order = np.argsort(rates, kind="stable")
    sorted_rates = rates[order]
    c = float(bias_penalty)
    m = np.arange(1, rates.size + 1, dtype=np.float64)
    s1 = np.cumsum(sorted_rates)
    s2 = np.cumsum(sorted_rates**2)
    a = (1.0 + c * s2) / (m * (1.0 + c * s2) - c * s1**2)
    b = c * a * s1 / (1.0 + c * s2)
    inside_ok = a - b * sorted_rates > 0.0  # the m-th (largest kept) weight must be positive
    next_rate = np.append(sorted_rates[1:], np.inf)
    outside_ok = a - b * next_rate <= 1e-15  # the first dropped sample would get weight <= 0
    valid = np.flatnonzero(inside_ok & outside_ok)
    # Numerically the valid prefix is unique; take the first one if rounding produced two.
    size = int(valid[0]) + 1 if valid.size else rates.size
    weights_sorted = np.zeros_like(sorted_rates)
    weights_sorted[:size] = np.maximum(a[size - 1] - b[size - 1] * sorted_rates[:size], 0.0)
    weights_sorted /= weights_sorted.sum()
    weights = np.empty_like(weights_sorted)
    weights[order] = weights_sorted
    return weights


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """A minimiser of ``sum_i w_i |x_i - m|`` (the lower weighted median). Shapes ``(n,)`` and ``(n,)``."""
    values = np.asarray(values, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if values.shape != weights.shape or values.ndim != 1:
        raise ValueError(
            f"values and weights must be equal-length 1-D arrays, got {values.shape}, {weights.shape}"
        )
    if np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError("weights must be non-negative with a positive sum")
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    index = int(np.searchsorted(cumulative, 0.5 * cumulative[-1], side="left"))
    return float(values[order][index])


def linear_estimator_mse_bounded(weights: np.ndarray, corruption_rates: np.ndarray) -> float:
    """Exact MSE of ``sum_i w_i X_i`` when clean samples are 0 and corrupted samples are 1 (true mean 0).

    ``X_i ~ Bernoulli(lambda_i)`` independently, so
    ``E = (w' lambda)^2 + sum_i w_i^2 lambda_i (1 - lambda_i)``.
    """
    weights = np.asarray(weights, dtype=np.float64)
    rates = _check_rates(corruption_rates, weights.size)
    return float((weights @ rates) ** 2 + np.sum(weights**2 * rates * (1.0 - rates)))


def _sample_weights(method: MeanMethod, rates: np.ndarray, k: float) -> tuple[np.ndarray, float]:
    if method == "optimal_linear":
        weights = optimal_linear_weights(rates)
        kept = rates[weights > 0]
        return weights, float(kept.max())
    if method == "threshold":
        _, threshold = effective_rate(rates, k=k)
        keep = rates <= threshold
        return keep / keep.sum(), threshold
    if method == "sample_mean":
        return np.full(rates.size, 1.0 / rates.size), 1.0
    raise ValueError(f"method must be 'optimal_linear', 'threshold' or 'sample_mean', got {method!r}")


class HeterogeneousMeanEstimator:
    """Mean estimation under known heterogeneous corruption rates.

    Parameters
    ----------
    method : 'optimal_linear' | 'threshold' | 'sample_mean'
    distribution : 'bounded' uses weighted means; 'gaussian' uses (coordinate-wise) weighted medians, which
        stay bounded when corrupted values are arbitrarily far away. For the 'sample_mean' method the mean is
        used in both cases (it is the non-robust baseline).

    Attributes (after ``fit``)
    --------------------------
    location_ : ndarray (d,) or float, the estimate.
    weights_ : ndarray (n,), the per-sample weights (sum to 1).
    threshold_ : float, the largest corruption rate that received positive weight.
    effective_rate_ : float, f(lambda, d) for this rate pattern.
    """

    def __init__(self, method: MeanMethod = "optimal_linear", distribution: Distribution = "bounded") -> None:
        self.method = method
        self.distribution = distribution

    def fit(self, X: np.ndarray, corruption_rates: np.ndarray) -> HeterogeneousMeanEstimator:
        """``X``: samples, shape ``(n,)`` or ``(n, d)``; ``corruption_rates``: shape ``(n,)`` in [0, 1]."""
        if self.distribution not in ("bounded", "gaussian"):
            raise ValueError(f"distribution must be 'bounded' or 'gaussian', got {self.distribution!r}")
        data = np.asarray(X, dtype=np.float64)
        if data.ndim not in (1, 2) or data.shape[0] == 0:
            raise ValueError(f"X must have shape (n,) or (n, d) with n > 0, got {data.shape}")
        if not np.all(np.isfinite(data)):
            raise ValueError("X contains non-finite values")
        rates = _check_rates(corruption_rates, data.shape[0])
        matrix = data[:, None] if data.ndim == 1 else data
        dim = matrix.shape[1]
        self.effective_rate_, _ = effective_rate(rates, k=dim)
        self.weights_, self.threshold_ = _sample_weights(self.method, rates, k=dim)
        if self.distribution == "gaussian" and self.method != "sample_mean":
            location = np.array([weighted_median(matrix[:, j], self.weights_) for j in range(dim)])
        else:
            location = self.weights_ @ matrix
        self.location_ = float(location[0]) if data.ndim == 1 else location
        return self


class HeterogeneousRobustRegressor:
    """Linear regression ``y = X beta + noise`` with rows corrupted at known rates ``lambda_i``.

    Rows are weighted by the threshold rule (keep ``lambda_i <= t*`` of ``f(lambda, d)``) or the
    optimal-linear weights, and the coefficients are fitted by weighted least absolute deviations
    (scikit-learn's ``QuantileRegressor`` at the median, no penalty), which is robust to gross outliers in
    ``y``. ``weighting='none'`` gives ordinary least squares, the non-robust baseline.

    Attributes: ``coef_`` (d,), ``intercept_`` (float), ``weights_`` (n,).
    """

    def __init__(
        self,
        weighting: Literal["threshold", "optimal_linear", "none"] = "threshold",
        fit_intercept: bool = True,
    ) -> None:
        self.weighting = weighting
        self.fit_intercept = fit_intercept

    def fit(self, X: np.ndarray, y: np.ndarray, corruption_rates: np.ndarray) -> HeterogeneousRobustRegressor:
        """``X``: (n, d) design; ``y``: (n,) responses; ``corruption_rates``: (n,) in [0, 1]."""
        design = np.asarray(X, dtype=np.float64)
        target = np.asarray(y, dtype=np.float64)
        if design.ndim != 2 or target.shape != (design.shape[0],):
            raise ValueError(f"X must be (n, d) and y (n,), got {design.shape} and {target.shape}")
        rates = _check_rates(corruption_rates, design.shape[0])
        if self.weighting == "none":
            weights = np.full(rates.size, 1.0 / rates.size)
            columns = np.column_stack([np.ones(len(target)), design]) if self.fit_intercept else design
            solution, *_ = np.linalg.lstsq(columns, target, rcond=None)
            self.intercept_ = float(solution[0]) if self.fit_intercept else 0.0
            self.coef_ = solution[1:] if self.fit_intercept else solution
            self.weights_ = weights
            return self
        if self.weighting not in ("threshold", "optimal_linear"):
            raise ValueError(
                f"weighting must be 'threshold', 'optimal_linear' or 'none', got {self.weighting!r}"
            )
        weights, _ = _sample_weights(self.weighting, rates, k=design.shape[1])
        keep = weights > 0
        lad = QuantileRegressor(quantile=0.5, alpha=0.0, fit_intercept=self.fit_intercept, solver="highs")
        lad.fit(design[keep], target[keep], sample_weight=weights[keep])
        self.coef_ = np.asarray(lad.coef_, dtype=np.float64)
        self.intercept_ = float(lad.intercept_)
        self.weights_ = weights
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predictions, shape (n,)."""
        return np.asarray(X, dtype=np.float64) @ self.coef_ + self.intercept_
