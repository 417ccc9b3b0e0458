"""Pessimistic data integration for A/B testing with historical control data (Wu, Li, Aminian, Behnamnia,
Rabiee & Shi, NeurIPS 2025).

Data: an experiment ``(S, A, R)`` of size ``n_e`` (``A = 1`` treatment, ``A = 0`` control) and a historical,
control-only sample ``(S_h, R_h)`` of size ``n_h`` whose reward model may be shifted. The target is the
average treatment effect over the experimental covariate distribution.

Doubly-robust (DR) pieces, all nuisances cross-fitted over two folds (sample splitting):

* ``Z1 = mu1(S) + A (R - mu1(S)) / pi(S)`` and ``Z0 = mu0(S) + (1 - A)(R - mu0(S)) / (1 - pi(S))`` on the
  experiment, with ``mu_a`` linear outcome models and ``pi`` either the known randomisation probability
  (``propensity=0.5`` for a 50/50 A/B test; use it whenever the design is randomised) or, for observational
  data (``propensity=None``), an L2-penalised logistic regression (``C = propensity_C``, default 1.0)
  clipped to [0.05, 0.95];
* historical control model ``mu_h`` (linear, fitted on the historical data) and a density ratio
  ``rho = p_e / p_h`` from moment matching (exponential tilt ``exp(alpha'[1, s])`` whose weighted historical
  covariate means equal the experimental ones), or ``rho = 1`` when no covariate shift is assumed.

For a weight function ``w(s) in [0, 1]`` the control mean mixes the two DR estimators pointwise:

    ATE(w) = mean_e[Z1 - (1 - w) Z0 - w mu_h] - mean_h[w rho (R_h - mu_h)],

which estimates ``E_e[tau(S)] - E_e[w(S) b(S)]`` where ``b = mu_h - mu0`` is the reward shift. So the bias is
estimated by ``ATE(w) - EDO`` (``EDO = ATE(0)``) and the variance by ``Var(Z_e)/n_e + Var(Z_h)/n_h`` with
``Z_e = Z1 - (1 - w) Z0 - w mu_h`` and ``Z_h = -w rho (R_h - mu_h)``. The proposed estimator chooses
``w(s) = sigmoid(b0 + beta's)`` minimising the pessimistic bound

    bias_U(w)^2 + Var(w),    bias_U(w) = |ATE(w) - EDO| + z * se(ATE(w) - EDO),

with ``z = 1.64`` (the predecessor's choice). The pointwise form of ``ATE(w)`` above and the use of the
plug-in variance as ``Var_U`` are our derivation from the paper's description, not copied equations.

Baselines (same nuisances): EDO (``w = 0``), HDB (``w = 1``), MVE (constant ``w`` minimising the variance
alone), NonPessi (covariate-dependent ``w`` with ``z = 0``) and CWE (constant ``w`` with the pessimistic
bound, the ICML 2024 predecessor).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit, logsumexp
from sklearn.linear_model import LinearRegression, LogisticRegression

__all__ = [
    "ESTIMATOR_NAMES",
    "DRComponents",
    "moment_matching_density_ratio",
    "dr_components",
    "mse_bound_and_grad",
    "PessimisticDataIntegration",
]

ESTIMATOR_NAMES = ("EDO", "HDB", "MVE", "NonPessi", "CWE", "Pessi")
# Inverse L2 strength of the fitted propensity model: scikit-learn's default. It was 1e4 (almost
# unpenalised); with ~24 units per cross-fitting fold that gave heavy-tailed DR errors (see docs).
PROPENSITY_C = 1.0


def moment_matching_density_ratio(
    source: np.ndarray, target: np.ndarray, l2: float = 1e-6
) -> tuple[np.ndarray, np.ndarray]:
    """Exponential-tilt density ratio ``rho(s) = p_target(s) / p_source(s)`` by moment matching.

    Finds ``alpha`` so that ``rho(s) = exp(alpha'[1, s])`` satisfies ``mean_source[rho] = 1`` and
    ``mean_source[rho s] = mean_target[s]`` (entropy balancing), by minimising the convex dual
    ``log mean_source exp(alpha's) - alpha' mean_target[s]`` with a tiny ridge for identifiability.

    Args: ``source`` (n_s, d), ``target`` (n_t, d). Returns ``(rho_on_source (n_s,), alpha (d,))``; the
    intercept is folded in so that ``rho`` averages to exactly 1 over ``source``.
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if source.ndim != 2 or target.ndim != 2 or source.shape[1] != target.shape[1]:
        raise ValueError(f"source and target must be (n, d) with equal d, got {source.shape}, {target.shape}")
    center = source.mean(axis=0)
    scale = source.std(axis=0) + 1e-12
    xs = (source - center) / scale
    target_mean = ((target - center) / scale).mean(axis=0)

    def dual(alpha: np.ndarray) -> tuple[float, np.ndarray]:
        logits = xs @ alpha
        log_norm = logsumexp(logits) - np.log(len(xs))
        probs = np.exp(logits - logsumexp(logits))
        value = log_norm - alpha @ target_mean + 0.5 * l2 * alpha @ alpha
        grad = probs @ xs - target_mean + l2 * alpha
        return value, grad

    result = minimize(dual, np.zeros(xs.shape[1]), jac=True, method="L-BFGS-B")
    logits = xs @ result.x
    rho = np.exp(logits - logsumexp(logits)) * len(xs)
    return rho, result.x / scale


@dataclass
class DRComponents:
    """Cross-fitted doubly-robust pieces. Experimental arrays have shape (n_e,), historical ones (n_h,)."""

    z1: np.ndarray  # DR pseudo-outcome of the treatment arm on the experiment
    z0: np.ndarray  # DR pseudo-outcome of the control arm on the experiment
    mu_h_exp: np.ndarray  # historical control model evaluated at experimental covariates
    hist_residual: np.ndarray  # rho(S_h) * (R_h - mu_h(S_h)) on the historical data
    s_exp: np.ndarray  # experimental covariates (n_e, d)
    s_hist: np.ndarray  # historical covariates (n_h, d)


def _check_propensity(propensity: float | None, propensity_C: float) -> None:
    if not np.isfinite(propensity_C) or propensity_C <= 0:
        raise ValueError(f"propensity_C must be a finite float > 0, got {propensity_C!r}")
    if propensity is None:
        return
    if isinstance(propensity, bool) or not isinstance(propensity, (int, float, np.integer, np.floating)):
        raise ValueError(f"propensity must be None or a float in (0, 1), got {propensity!r}")
    if not 0.0 < float(propensity) < 1.0:  # also rejects NaN
        raise ValueError(f"propensity must be None or a float in (0, 1), got {propensity!r}")


def _two_folds(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    permutation = rng.permutation(n)
    return [permutation[: n // 2], permutation[n // 2 :]]


def dr_components(
    s_exp: np.ndarray,
    a_exp: np.ndarray,
    r_exp: np.ndarray,
    s_hist: np.ndarray,
    r_hist: np.ndarray,
    covariate_shift: bool = False,
    rng: np.random.Generator | None = None,
    propensity: float | None = None,
    propensity_C: float = PROPENSITY_C,
) -> DRComponents:
    """Fit nuisances with two-fold cross-fitting and return the DR pieces (see module docstring).

    ``propensity``: ``None`` fits a logistic regression with inverse L2 strength ``propensity_C`` on the
    other fold and clips it to [0.05, 0.95]; a float in (0, 1) is the known randomisation probability
    ``P(A = 1)``, used as is (no fit, no clipping).
    """
    _check_propensity(propensity, propensity_C)
    rng = np.random.default_rng(0) if rng is None else rng
    n_e, n_h = len(r_exp), len(r_hist)
    z1 = np.empty(n_e)
    z0 = np.empty(n_e)
    mu_h_exp = np.empty(n_e)
    hist_residual = np.empty(n_h)
    exp_folds = _two_folds(n_e, rng)
    hist_folds = _two_folds(n_h, rng)
    for k in range(2):
        fit_e, eval_e = exp_folds[1 - k], exp_folds[k]
        fit_h, eval_h = hist_folds[1 - k], hist_folds[k]
        s_fit, a_fit, r_fit = s_exp[fit_e], a_exp[fit_e], r_exp[fit_e]
        if np.unique(a_fit).size < 2 or min(a_fit.sum(), (1 - a_fit).sum()) < 2:
            raise ValueError("each cross-fitting fold needs at least two treated and two control units")
        if propensity is None:
            model = LogisticRegression(C=propensity_C).fit(s_fit, a_fit)
            pi = np.clip(model.predict_proba(s_exp[eval_e])[:, 1], 0.05, 0.95)
        else:
            pi = np.full(len(eval_e), float(propensity))
        mu1 = LinearRegression().fit(s_fit[a_fit == 1], r_fit[a_fit == 1]).predict(s_exp[eval_e])
        mu0 = LinearRegression().fit(s_fit[a_fit == 0], r_fit[a_fit == 0]).predict(s_exp[eval_e])
        a, r = a_exp[eval_e], r_exp[eval_e]
        z1[eval_e] = mu1 + a * (r - mu1) / pi
        z0[eval_e] = mu0 + (1 - a) * (r - mu0) / (1 - pi)
        hist_model = LinearRegression().fit(s_hist[fit_h], r_hist[fit_h])
        mu_h_exp[eval_e] = hist_model.predict(s_exp[eval_e])
        if covariate_shift:
            rho, _ = moment_matching_density_ratio(s_hist[eval_h], s_exp)
        else:
            rho = np.ones(len(eval_h))
        hist_residual[eval_h] = rho * (r_hist[eval_h] - hist_model.predict(s_hist[eval_h]))
    return DRComponents(z1, z0, mu_h_exp, hist_residual, s_exp, s_hist)


def _estimate_and_bound(
    c: DRComponents, w_exp: np.ndarray, w_hist: np.ndarray, z: float
) -> tuple[float, float, float, float]:
    """Return ``(ate, bias_hat, bias_se, variance)`` for weights evaluated on both samples."""
    n_e, n_h = len(c.z1), len(c.hist_residual)
    z_exp = c.z1 - (1 - w_exp) * c.z0 - w_exp * c.mu_h_exp
    z_hist = -w_hist * c.hist_residual
    ate = z_exp.mean() + z_hist.mean()
    bias_exp = w_exp * (c.z0 - c.mu_h_exp)
    bias_hat = bias_exp.mean() + z_hist.mean()  # = ATE(w) - EDO
    bias_se = np.sqrt(bias_exp.var(ddof=1) / n_e + z_hist.var(ddof=1) / n_h)
    variance = z_exp.var(ddof=1) / n_e + z_hist.var(ddof=1) / n_h
    return float(ate), float(bias_hat), float(bias_se), float(variance)


def _variance_of_mean(x: np.ndarray) -> tuple[float, np.ndarray]:
    """``var(x, ddof=1) / n`` and its gradient with respect to ``x``."""
    n = len(x)
    centered = x - x.mean()
    return float(centered @ centered / ((n - 1) * n)), 2.0 * centered / ((n - 1) * n)


def mse_bound_and_grad(coef: np.ndarray, c: DRComponents, z: float) -> tuple[float, np.ndarray]:
    """Pessimistic MSE bound of ``w(s) = sigmoid(coef[0] + s @ coef[1:])`` and its gradient in ``coef``."""
    w_exp = expit(coef[0] + c.s_exp @ coef[1:])
    w_hist = expit(coef[0] + c.s_hist @ coef[1:])
    n_e, n_h = len(w_exp), len(w_hist)
    shift_exp = c.z0 - c.mu_h_exp  # d z_exp / d w_exp
    base = c.z1 - c.z0
    bias_hat = float(np.mean(w_exp * shift_exp) - np.mean(w_hist * c.hist_residual))
    v_bias_exp, g_bias_exp = _variance_of_mean(w_exp * shift_exp)
    v_hist, g_hist = _variance_of_mean(w_hist * c.hist_residual)
    v_exp, g_exp = _variance_of_mean(base + w_exp * shift_exp)
    se = np.sqrt(v_bias_exp + v_hist)
    bound = abs(bias_hat) + z * se
    value = bound**2 + v_exp + v_hist
    sign = np.sign(bias_hat)
    d_se = 0.5 / se if se > 0 else 0.0
    grad_w_exp = (2 * bound * (sign / n_e + z * d_se * g_bias_exp) + g_exp) * shift_exp
    grad_w_hist = (2 * bound * (-sign / n_h + z * d_se * g_hist) + g_hist) * c.hist_residual
    # Chain rule through the sigmoid: dw/dcoef = w (1 - w) [1, s].
    grad_lin_exp = grad_w_exp * w_exp * (1 - w_exp)
    grad_lin_hist = grad_w_hist * w_hist * (1 - w_hist)
    grad = np.concatenate(
        [[grad_lin_exp.sum() + grad_lin_hist.sum()], c.s_exp.T @ grad_lin_exp + c.s_hist.T @ grad_lin_hist]
    )
    return float(value), grad


def _mse_bound(c: DRComponents, w_exp: np.ndarray, w_hist: np.ndarray, z: float) -> float:
    _, bias_hat, bias_se, variance = _estimate_and_bound(c, w_exp, w_hist, z)
    return (abs(bias_hat) + z * bias_se) ** 2 + variance


class PessimisticDataIntegration:
    """ATE estimator mixing experimental and historical control data with a learned weight function.

    Parameters
    ----------
    z : float, normal quantile of the pessimistic bias bound (1.64 as in the predecessor's code).
    propensity : None or float in (0, 1), the known randomisation probability ``P(A = 1)`` of the
        experiment (e.g. 0.5), used as is. ``None`` (default, for observational data) fits a logistic
        regression on each cross-fitting fold and clips it to [0.05, 0.95]. In a randomised experiment pass
        the known value: with small folds the fitted propensity makes every estimator's error heavy-tailed.
    propensity_C : float > 0, inverse L2 strength of that logistic regression (only with ``propensity=None``).
    covariate_shift : bool, estimate a density ratio by moment matching (else ``rho = 1``).
    n_restarts : int, random restarts of the weight-function optimiser (plus constant-weight starts).
    random_state : int, seeds the cross-fitting folds and restarts.

    Attributes (after ``fit``)
    --------------------------
    estimates_ : dict name -> ATE estimate for ``ESTIMATOR_NAMES``.
    ate_ : float, the proposed (pessimistic, covariate-dependent) estimate.
    weight_coef_ : ndarray (d + 1,), ``(b0, beta)`` of ``w(s) = sigmoid(b0 + beta's)``.
    constant_weights_ : dict with the constant weights chosen by MVE and CWE.
    components_ : :class:`DRComponents`.
    """

    def __init__(
        self,
        z: float = 1.64,
        covariate_shift: bool = False,
        n_restarts: int = 2,
        random_state: int = 0,
        propensity: float | None = None,
        propensity_C: float = PROPENSITY_C,
    ) -> None:
        self.z = z
        self.propensity = propensity
        self.propensity_C = propensity_C
        self.covariate_shift = covariate_shift
        self.n_restarts = n_restarts
        self.random_state = random_state

    def fit(
        self,
        s_exp: np.ndarray,
        a_exp: np.ndarray,
        r_exp: np.ndarray,
        s_hist: np.ndarray,
        r_hist: np.ndarray,
    ) -> PessimisticDataIntegration:
        """Args: ``s_exp`` (n_e, d) or (n_e,), ``a_exp`` (n_e,) in {0, 1}, ``r_exp`` (n_e,),
        ``s_hist`` (n_h, d) or (n_h,), ``r_hist`` (n_h,)."""
        if self.z < 0:
            raise ValueError(f"z must be >= 0, got {self.z}")
        _check_propensity(self.propensity, self.propensity_C)
        s_exp = np.asarray(s_exp, dtype=np.float64)
        s_hist = np.asarray(s_hist, dtype=np.float64)
        s_exp = s_exp[:, None] if s_exp.ndim == 1 else s_exp
        s_hist = s_hist[:, None] if s_hist.ndim == 1 else s_hist
        a_exp = np.asarray(a_exp)
        r_exp = np.asarray(r_exp, dtype=np.float64)
        r_hist = np.asarray(r_hist, dtype=np.float64)
        if not np.isin(a_exp, (0, 1)).all():
            raise ValueError(f"a_exp must be binary 0/1, got values {np.unique(a_exp)[:5]}")
        if len(a_exp) != len(s_exp) or len(r_exp) != len(s_exp):
            raise ValueError(
                f"experimental arrays disagree in length: {len(s_exp)}, {len(a_exp)}, {len(r_exp)}"
            )
        if len(r_hist) != len(s_hist):
            raise ValueError(f"historical arrays disagree in length: {len(s_hist)}, {len(r_hist)}")
        if s_exp.shape[1] != s_hist.shape[1]:
            raise ValueError(f"covariate dimensions differ: {s_exp.shape[1]} vs {s_hist.shape[1]}")
        if len(s_exp) < 8 or len(s_hist) < 4:
            raise ValueError(f"need n_e >= 8 and n_h >= 4, got {len(s_exp)} and {len(s_hist)}")
        rng = np.random.default_rng(self.random_state)
        c = dr_components(
            s_exp,
            a_exp.astype(np.float64),
            r_exp,
            s_hist,
            r_hist,
            self.covariate_shift,
            rng,
            propensity=self.propensity,
            propensity_C=self.propensity_C,
        )
        self.components_ = c
        n_e, n_h = len(c.z1), len(c.hist_residual)

        def constant(w: float, z: float) -> float:
            return _mse_bound(c, np.full(n_e, w), np.full(n_h, w), z)

        def variance_only(w: float) -> float:
            return _estimate_and_bound(c, np.full(n_e, w), np.full(n_h, w), 0.0)[3]

        w_mve = float(minimize_scalar(variance_only, bounds=(0.0, 1.0), method="bounded").x)
        w_cwe = float(minimize_scalar(lambda w: constant(w, self.z), bounds=(0.0, 1.0), method="bounded").x)
        coef_pessi = self._fit_weight_function(c, self.z, rng)
        coef_nonpessi = self._fit_weight_function(c, 0.0, rng)

        def ate_constant(w: float) -> float:
            return _estimate_and_bound(c, np.full(n_e, w), np.full(n_h, w), 0.0)[0]

        def ate_function(coef: np.ndarray) -> float:
            return _estimate_and_bound(c, self._weights(coef, c.s_exp), self._weights(coef, c.s_hist), 0.0)[0]

        self.estimates_ = {
            "EDO": ate_constant(0.0),
            "HDB": ate_constant(1.0),
            "MVE": ate_constant(w_mve),
            "NonPessi": ate_function(coef_nonpessi),
            "CWE": ate_constant(w_cwe),
            "Pessi": ate_function(coef_pessi),
        }
        self.ate_ = self.estimates_["Pessi"]
        self.weight_coef_ = coef_pessi
        self.constant_weights_ = {"MVE": w_mve, "CWE": w_cwe}
        return self

    @staticmethod
    def _weights(coef: np.ndarray, s: np.ndarray) -> np.ndarray:
        return expit(coef[0] + s @ coef[1:])

    def _fit_weight_function(self, c: DRComponents, z: float, rng: np.random.Generator) -> np.ndarray:
        dim = c.s_exp.shape[1]

        # Constant-weight starts (beta = 0) guarantee the result is never worse than the best of them.
        starts = [np.concatenate([[b0], np.zeros(dim)]) for b0 in (-4.0, 0.0, 4.0)]
        starts += [rng.normal(0.0, 2.0, size=dim + 1) for _ in range(self.n_restarts)]
        best_coef, best_value = starts[0], np.inf
        for start in starts:
            # The sigmoid saturates, so keep coefficients bounded for a well-posed search.
            result = minimize(
                mse_bound_and_grad,
                start,
                args=(c, z),
                jac=True,
                method="L-BFGS-B",
                bounds=[(-10.0, 10.0)] * (dim + 1),
            )
            if result.fun < best_value:
                best_coef, best_value = result.x, float(result.fun)
        return best_coef

    def weight(self, s: np.ndarray) -> np.ndarray:
        """The learned weight ``w(s)`` of the historical control estimator; ``s`` (n, d) or (n,)."""
        s = np.asarray(s, dtype=np.float64)
        return self._weights(self.weight_coef_, s[:, None] if s.ndim == 1 else s)
