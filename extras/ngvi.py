"""Natural-gradient variational inference for a non-conjugate model (Sun, Fatkhullin & He, NeurIPS 2025).

Model: Bayesian logistic regression, labels ``y_i in {-1, +1}``, features ``x_i in R^d``, prior
``theta ~ N(0, diag(prior_var))`` (``prior_var`` a scalar or one variance per coordinate). Variational
family: mean-field Gaussian ``q = N(m, diag(v))``. Loss (the
negative ELBO, in nats): ``L(q) = sum_i E_q[softplus(-y_i x_i' theta)] + KL(q || prior)``.

Expectations of the likelihood are one-dimensional:
``a_i = y_i x_i' theta ~ N(y_i x_i' m, sum_j x_ij^2 v_j)``,
so ``L`` and its gradients are computed by Gauss-Hermite quadrature (Bonnet's and Price's theorems give
``dL/dm = E_q[grad]`` and ``dL/dv = E_q[diag Hessian] / 2``; the second expectation is evaluated in Stein's
form ``E[f'(a) z] / std``, the exact derivative of the quadrature loss); stochasticity comes from
minibatching the data.

Optimisers (one :class:`MeanFieldGaussianVI` with ``method=``):

* ``sngd``: stochastic natural gradient = mirror descent with the log-partition mirror map. With natural
  parameters ``lam = (m / v, -1 / (2 v))`` and expectation parameters ``mu = (m, m^2 + v)``:
  ``lam <- (1 - eta) lam + eta (lam_prior - grad_mu E_q[loglik loss])``. A step that makes ``-1/(2v)``
  non-negative leaves the Gaussian family: the run is recorded as diverged.
* ``proj_sngd``: the same mirror step followed by the Bregman projection onto
  ``{|m_j| <= U, v_j in [v_lo, v_hi]}`` (``variance_bound=D`` means ``[1/D, D]``). The projection of the
  mirror point ``lam_tilde`` is ``argmin_{q in box} -H(q) - <lam_tilde, (m, m^2 + v)>`` per coordinate.
  When ``lam_tilde`` is a Gaussian this is ``argmin KL(q || q_tilde)``, which separates into a quadratic in
  ``m`` and the convex ``v / v_tilde - log v`` in ``v``: coordinate-wise clipping of ``m`` and ``v``. When
  the mirror step leaves the family (``lam2 >= 0``, "infinite variance") the objective
  ``-log(v)/2 - lam2 v`` decreases in ``v`` and ``-lam1 m - lam2 m^2`` is concave in ``m``, so the minimiser
  is the corner ``v = v_hi``, ``m = sign(lam1) U``. This limit case is our derivation; the paper does not
  spell it out. :meth:`LogisticRegressionVIProblem.stationary_box` gives a box that provably
  contains every stationary point of ``L``, computed from the data alone.
* ``prox_sgd``: Euclidean SGD on ``(m, s)`` with ``v = s^2`` for the energy ``E_q[-log p(y, theta)]`` and the
  exact proximal step of the entropy term ``-sum log s`` (``s <- (u + sqrt(u^2 + 4 eta)) / 2``).
* ``proj_sgd``: Euclidean SGD on ``(m, s)`` for the whole loss, then clipping to ``|m| <= U``,
  ``s in [v_lo^{1/2}, v_hi^{1/2}]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
from scipy.special import expit, log_expit

__all__ = ["METHODS", "LogisticRegressionVIProblem", "MeanFieldGaussianVI"]

Method = Literal["sngd", "proj_sngd", "prox_sgd", "proj_sgd"]
METHODS: tuple[str, ...] = ("sngd", "proj_sngd", "prox_sgd", "proj_sgd")


class LogisticRegressionVIProblem:
    """Negative ELBO of mean-field Gaussian VI for Bayesian logistic regression.

    Args:
        X: features, shape (n, d). y: labels, shape (n,), in {-1, +1} or {0, 1}.
        prior_var: prior variance, a float (isotropic) or an array of shape (d,) (one per coordinate).
        n_quadrature: Gauss-Hermite nodes.
    """

    def __init__(
        self, X: np.ndarray, y: np.ndarray, prior_var: float | np.ndarray = 1.0, n_quadrature: int = 32
    ) -> None:
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if X.ndim != 2 or y.shape != (X.shape[0],):
            raise ValueError(f"X must be (n, d) and y (n,), got {X.shape} and {y.shape}")
        labels = set(np.unique(y).tolist())
        if labels <= {0.0, 1.0}:
            y = 2.0 * y - 1.0
        elif not labels <= {-1.0, 1.0}:
            raise ValueError(f"y must be in {{-1, +1}} or {{0, 1}}, got values {sorted(labels)[:5]}")
        prior = np.asarray(prior_var, dtype=np.float64)
        if prior.shape not in ((), (X.shape[1],)) or not np.all(prior > 0):
            raise ValueError(
                f"prior_var must be positive, scalar or shape ({X.shape[1]},), got {prior_var!r}"
            )
        self.X = X
        self.y = y
        self.signed_X = X * y[:, None]
        self._signed_sq = self.signed_X**2  # reused by every margin-variance and Price-gradient product
        self.prior_var = float(prior) if prior.ndim == 0 else prior
        nodes, weights = np.polynomial.hermite_e.hermegauss(n_quadrature)
        self._nodes = nodes  # probabilists' Hermite: integrate against the standard normal density
        self._weights = weights / np.sqrt(2.0 * np.pi)
        # [w, w z]: one product gives E[f'(a)] and the Stein term E[f'(a) z] together.
        self._weights_and_stein = np.column_stack([self._weights, self._weights * self._nodes])

    @property
    def n_samples(self) -> int:
        return self.X.shape[0]

    @property
    def dim(self) -> int:
        return self.X.shape[1]

    def _margins(self, m: np.ndarray, v: np.ndarray, rows: np.ndarray | None) -> tuple[np.ndarray, ...]:
        signed = self.signed_X if rows is None else self.signed_X[rows]
        squared = self._signed_sq if rows is None else self._signed_sq[rows]
        mean = signed @ m
        std = np.sqrt(squared @ v)
        margins = mean[:, None] + std[:, None] * self._nodes[None, :]  # (batch, nodes)
        return signed, squared, margins, std

    def _expected_curvature(self, sig: np.ndarray, stein_sum: np.ndarray, std: np.ndarray) -> np.ndarray:
        """``E_q[sigmoid'(a_i)]`` per row from ``sig = sigmoid(margins)`` and ``stein_sum = E[f'(a) z]``.

        Stein's lemma, ``E[f''] = E[f'(a) z] / std``: the exact derivative of the quadrature loss w.r.t. the
        margin variance. Quadrature of ``f''`` itself (Price's form) misses the narrow sigmoid' bump when
        ``std >> 1`` (error 0.4 in ``v * dL/dv`` at the digits optimum, so SNGD stopped 0.14 nats above
        L-BFGS); Price's form is kept only where ``std`` is too small to divide by.
        """
        tiny = std < 1e-6
        second = stein_sum / np.where(tiny, 1.0, std)
        if np.any(tiny):
            second[tiny] = (sig[tiny] * (1.0 - sig[tiny])) @ self._weights
        return second

    def loss(self, m: np.ndarray, v: np.ndarray) -> float:
        """Exact negative ELBO (up to quadrature error) in nats."""
        _, _, margins, _ = self._margins(m, v, None)
        expected_nll = -(log_expit(margins) @ self._weights).sum()
        kl = 0.5 * np.sum(v / self.prior_var + m**2 / self.prior_var - 1.0 - np.log(v / self.prior_var))
        return float(expected_nll + kl)

    def likelihood_grads(
        self, m: np.ndarray, v: np.ndarray, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Unbiased gradients of ``sum_i E_q[softplus(-a_i)]`` w.r.t. ``m`` and ``v``, shapes (d,) and (d,).

        With ``rows`` (a minibatch of indices) the batch sum is rescaled by ``n / batch``.
        """
        signed, squared, margins, std = self._margins(m, v, rows)
        sig = expit(margins)
        first_at_nodes = sig - 1.0  # d softplus(-a) / da = -sigmoid(-a), shape (batch, nodes)
        first, stein_sum = (first_at_nodes @ self._weights_and_stein).T
        second = self._expected_curvature(sig, stein_sum, std)  # E[d^2 softplus(-a) / da^2]
        scale = 1.0 if rows is None else self.n_samples / len(rows)
        grad_m = scale * signed.T @ first
        grad_v = scale * 0.5 * squared.T @ second
        return grad_m, grad_v

    def loss_grads(
        self, m: np.ndarray, v: np.ndarray, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, ...]:
        """Gradients of the full negative ELBO w.r.t. ``(m, v)`` (likelihood part possibly minibatched)."""
        grad_m, grad_v = self.likelihood_grads(m, v, rows)
        return grad_m + m / self.prior_var, grad_v + 0.5 / self.prior_var - 0.5 / v

    def mean_hessian(self, m: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Hessian of ``L`` w.r.t. ``m``, shape (d, d): ``X' diag(E_q[sigmoid'(a)]) X + diag(1 / prior_var)``.

        Used to predict the largest stable constant step: ``2 / lambda_max(H)`` for Euclidean descent on ``m``
        and ``2 / lambda_max(diag(v) H)`` for the natural-gradient (mirror) step near the optimum.
        """
        signed, _, margins, std = self._margins(m, v, None)
        sig = expit(margins)
        curvature = self._expected_curvature(sig, (sig - 1.0) @ self._weights_and_stein[:, 1], std)
        prior = np.broadcast_to(self.prior_var, (self.dim,))
        return (signed * curvature[:, None]).T @ signed + np.diag(1.0 / prior)

    def stationary_box(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(U, v_lo, v_hi)``, each of shape (d,): a box that contains every stationary point of ``L``.

        ``dL/dv_j = 0`` gives ``1 / v_j = 1 / prior_var_j + sum_i x_ij^2 E_q[sigmoid'(a_i)]`` with
        ``0 <= sigmoid' <= 1/4``, so ``v_j in [1 / (1/prior_var_j + sum_i x_ij^2 / 4), prior_var_j]``;
        ``dL/dm_j = 0`` gives ``m_j = prior_var_j sum_i y_i x_ij E_q[sigmoid(-a_i)]``, so
        ``|m_j| <= prior_var_j sum_i |x_ij|``. Computed from the data alone, so a projection onto it cannot
        exclude the optimum, and it rescales with the coordinates (``x_j -> c x_j`` with
        ``prior_var_j -> prior_var_j / c^2`` maps the box of ``theta_j`` onto that of ``theta_j / c``).
        """
        prior = np.broadcast_to(self.prior_var, (self.dim,))
        upper_mean = prior * np.abs(self.X).sum(axis=0)
        lower = 1.0 / (1.0 / prior + 0.25 * self._signed_sq.sum(axis=0))
        return upper_mean, lower, prior.copy()


class MeanFieldGaussianVI:
    """Fit ``q = N(m, diag(v))`` to the posterior of a :class:`LogisticRegressionVIProblem`.

    Parameters
    ----------
    method : 'sngd' | 'proj_sngd' | 'prox_sgd' | 'proj_sgd' (see the module docstring).
    step_size : float or callable ``t -> eta_t`` (t = 1, 2, ...). Natural-gradient steps are unitless;
        Euclidean steps are in parameter units per nat.
    n_iter : iterations. batch_size : minibatch size (``None`` = full batch, deterministic).
    mean_bound : ``U``, a float or an array of shape (d,). variance_bound : ``D`` (variances kept in
        ``[1/D, D]`` by the projected methods) or a pair ``(v_lo, v_hi)`` of floats or arrays of shape (d,).
        ``U, v_lo, v_hi = problem.stationary_box()`` gives a box that provably holds the optimum.
    record_every : evaluate the exact loss every this many iterations (0 = only at the end).
    random_state : seeds the minibatches.

    Attributes (after ``fit``)
    --------------------------
    mean_, var_ : ndarrays (d,). final_loss_ : negative ELBO (inf if diverged). diverged_ : bool.
    loss_history_ : list of (iteration, loss). n_projected_ : iterations in which the projection changed at
    least one coordinate (always 0 for ``sngd`` and ``prox_sgd``). n_left_family_ : iterations in which the
    mirror step left the Gaussian family (``proj_sngd``; ``sngd`` stops at the first).
    """

    def __init__(
        self,
        method: Method = "proj_sngd",
        step_size: float | Callable[[int], float] = 0.1,
        n_iter: int = 1000,
        batch_size: int | None = 32,
        mean_bound: float | np.ndarray = 10.0,
        variance_bound: float | tuple = 100.0,
        record_every: int = 0,
        random_state: int = 0,
    ) -> None:
        self.method = method
        self.step_size = step_size
        self.n_iter = n_iter
        self.batch_size = batch_size
        self.mean_bound = mean_bound
        self.variance_bound = variance_bound
        self.record_every = record_every
        self.random_state = random_state

    def _validate(self, problem: LogisticRegressionVIProblem) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not callable(self.step_size) and not (np.isfinite(self.step_size) and self.step_size > 0):
            raise ValueError(f"step_size must be positive or callable, got {self.step_size!r}")
        if self.n_iter < 1:
            raise ValueError(f"n_iter must be >= 1, got {self.n_iter}")
        if self.batch_size is not None and not 1 <= self.batch_size <= problem.n_samples:
            raise ValueError(f"batch_size must be in [1, {problem.n_samples}] or None, got {self.batch_size}")
        # U_j = 0 is allowed (a feature that is zero in every row has its mean pinned to the prior's 0).
        if not np.all(np.asarray(self.mean_bound) >= 0) or not np.any(np.asarray(self.mean_bound) > 0):
            raise ValueError(f"need mean_bound >= 0 and not all zero, got {self.mean_bound!r}")
        np.broadcast_to(self.mean_bound, (problem.dim,))  # raises on a wrong length
        self._variance_box(problem.dim)

    def _variance_box(self, d: int) -> tuple[np.ndarray, np.ndarray]:
        """``(v_lo, v_hi)`` as arrays of shape (d,) from ``variance_bound``."""
        bound = self.variance_bound
        if np.isscalar(bound):
            if not bound > 1:
                raise ValueError(f"need variance_bound > 1, got {bound}")
            lo, hi = 1.0 / float(bound), float(bound)
        else:
            if len(bound) != 2:
                raise ValueError(f"variance_bound must be D or (v_lo, v_hi), got {bound!r}")
            lo, hi = bound
        lo = np.broadcast_to(np.asarray(lo, dtype=np.float64), (d,))
        hi = np.broadcast_to(np.asarray(hi, dtype=np.float64), (d,))
        # v_lo == v_hi is allowed: a feature that is zero in every row has its variance pinned to the prior's.
        if not (np.all(lo > 0) and np.all(hi >= lo)):
            raise ValueError("need 0 < v_lo <= v_hi for every coordinate")
        return lo, hi

    def _eta(self, t: int) -> float:
        return float(self.step_size(t)) if callable(self.step_size) else float(self.step_size)

    def fit(
        self,
        problem: LogisticRegressionVIProblem,
        init_mean: np.ndarray | None = None,
        init_var: np.ndarray | None = None,
    ) -> MeanFieldGaussianVI:
        """Run the optimiser from ``(init_mean, init_var)`` (default: the prior)."""
        if not isinstance(problem, LogisticRegressionVIProblem):
            raise TypeError(f"problem must be a LogisticRegressionVIProblem, got {type(problem).__name__}")
        self._validate(problem)
        rng = np.random.default_rng(self.random_state)
        d = problem.dim
        m = np.zeros(d) if init_mean is None else np.array(init_mean, dtype=np.float64)
        v = (
            np.broadcast_to(problem.prior_var, (d,)).copy()
            if init_var is None
            else np.array(init_var, dtype=np.float64)
        )
        if m.shape != (d,) or v.shape != (d,) or np.any(v <= 0):
            raise ValueError(f"init_mean/init_var must have shape ({d},) with positive variances")
        U = np.broadcast_to(np.asarray(self.mean_bound, dtype=np.float64), (d,))
        box = self._variance_box(d)
        self.loss_history_ = []
        self.diverged_ = False
        self.n_projected_ = 0
        self.n_left_family_ = 0
        # A diverging Euclidean run overflows before the finiteness check stops it: recorded, not warned.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            self._run(problem, m, v, rng, U, box)
        return self

    def _run(self, problem, m, v, rng, U, box) -> None:
        """The optimisation loop of :meth:`fit`; sets the fitted attributes."""
        for t in range(1, self.n_iter + 1):
            rows = (
                None
                if self.batch_size is None
                else rng.choice(problem.n_samples, self.batch_size, replace=False)
            )
            eta = self._eta(t)
            if self.method in ("sngd", "proj_sngd"):
                m, v, ok, projected, left = self._natural_step(
                    problem, m, v, rows, eta, project=self.method == "proj_sngd", U=U, box=box
                )
                self.n_left_family_ += int(left)
            else:
                m, v, ok, projected = self._euclidean_step(
                    problem, m, v, rows, eta, prox=self.method == "prox_sgd", U=U, box=box
                )
            self.n_projected_ += int(projected)
            if not ok:
                self.diverged_ = True
                self.loss_history_.append((t, float("inf")))
                break
            if self.record_every and t % self.record_every == 0:
                self.loss_history_.append((t, problem.loss(m, v)))
        self.mean_, self.var_ = m, v
        self.final_loss_ = float("inf") if self.diverged_ else problem.loss(m, v)
        if not np.isfinite(self.final_loss_):
            self.diverged_ = True
            self.final_loss_ = float("inf")

    @staticmethod
    def _natural_step(problem, m, v, rows, eta, project, U, box):
        grad_m, grad_v = problem.likelihood_grads(m, v, rows)
        # Chain rule from (m, v) to the expectation parameters (mu1, mu2) = (m, m^2 + v).
        grad_mu1 = grad_m - 2.0 * m * grad_v
        grad_mu2 = grad_v
        lam1, lam2 = m / v, -0.5 / v
        lam1 = (1.0 - eta) * lam1 + eta * (0.0 - grad_mu1)  # prior natural parameters: (0, -1/(2 prior_var))
        lam2 = (1.0 - eta) * lam2 + eta * (-0.5 / problem.prior_var - grad_mu2)
        if not (np.all(np.isfinite(lam1)) and np.all(np.isfinite(lam2))):
            return m, v, False, False, False
        outside = lam2 >= 0.0
        left = bool(np.any(outside))
        if not project:
            if left:
                return m, v, False, False, True
            v_new = -0.5 / lam2
            m_new = lam1 * v_new
            return m_new, v_new, bool(np.all(np.isfinite(m_new)) and np.all(np.isfinite(v_new))), False, False
        v_lo, v_hi = box
        v_tilde = -0.5 / np.where(outside, -1.0, lam2)  # placeholder -1 where the mirror point is no Gaussian
        m_tilde = lam1 * v_tilde
        # Inside the family the KL projection is clipping; outside it is the corner (v_hi, sign(lam1) U).
        v_new = np.where(outside, v_hi, np.clip(v_tilde, v_lo, v_hi))
        m_new = np.where(outside, np.sign(lam1) * U, np.clip(m_tilde, -U, U))
        # Count a projection only if it moved a coordinate beyond round-off (a pinned coordinate with
        # v_lo == v_hi reproduces its bound only up to the last bit).
        moved_v = np.abs(v_new - v_tilde) > 1e-9 * v_new
        moved_m = np.abs(m_new - m_tilde) > 1e-9 * (np.abs(m_new) + 1e-300)
        projected = left or bool(np.any(moved_v) or np.any(moved_m))
        return m_new, v_new, True, projected, left

    @staticmethod
    def _euclidean_step(problem, m, v, rows, eta, prox, U, box):
        s = np.sqrt(v)
        grad_m, grad_v = problem.likelihood_grads(m, v, rows)
        grad_m = grad_m + m / problem.prior_var
        # Energy part of dL/ds (likelihood + prior cross-entropy); dv/ds = 2 s.
        grad_s_energy = 2.0 * s * (grad_v + 0.5 / problem.prior_var)
        m_new = m - eta * grad_m
        projected = False
        if prox:
            u = s - eta * grad_s_energy
            s_new = 0.5 * (u + np.sqrt(u**2 + 4.0 * eta))  # prox of -eta * log s, per coordinate
        else:
            s_raw = s - eta * (grad_s_energy - 1.0 / s)
            m_clip = np.clip(m_new, -U, U)
            s_new = np.clip(s_raw, np.sqrt(box[0]), np.sqrt(box[1]))
            projected = bool(np.any(m_clip != m_new) or np.any(s_new != s_raw))
            m_new = m_clip
        ok = bool(np.all(np.isfinite(m_new)) and np.all(np.isfinite(s_new)) and np.all(s_new > 0))
        return m_new, s_new**2, ok, projected
