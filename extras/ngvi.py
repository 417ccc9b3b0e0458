"""Natural-gradient variational inference for a non-conjugate model (Sun, Fatkhullin & He, NeurIPS 2025).

Model: Bayesian logistic regression, labels ``y_i in {-1, +1}``, features ``x_i in R^d``, prior
``theta ~ N(0, prior_var I)``. Variational family: mean-field Gaussian ``q = N(m, diag(v))``. Loss (the
negative ELBO, in nats): ``L(q) = sum_i E_q[softplus(-y_i x_i' theta)] + KL(q || prior)``.

Expectations of the likelihood are one-dimensional:
``a_i = y_i x_i' theta ~ N(y_i x_i' m, sum_j x_ij^2 v_j)``,
so ``L`` and its gradients are computed by Gauss-Hermite quadrature (Bonnet's and Price's theorems give
``dL/dm = E_q[grad]`` and ``dL/dv = E_q[diag Hessian] / 2``); stochasticity comes from minibatching the data.

Optimisers (one :class:`MeanFieldGaussianVI` with ``method=``):

* ``sngd``: stochastic natural gradient = mirror descent with the log-partition mirror map. With natural
  parameters ``lam = (m / v, -1 / (2 v))`` and expectation parameters ``mu = (m, m^2 + v)``:
  ``lam <- (1 - eta) lam + eta (lam_prior - grad_mu E_q[loglik loss])``. A step that makes ``-1/(2v)``
  non-negative leaves the Gaussian family: the run is recorded as diverged.
* ``proj_sngd``: the same mirror step followed by the Bregman projection onto
  ``{|m_j| <= U, v_j in [1/D, D]}``. For a diagonal Gaussian ``KL(q || q_tilde)`` separates per coordinate
  into a quadratic in ``m`` and the convex
  ``v / v_tilde - log v`` in ``v``, so the projection is coordinate-wise clipping of ``m`` and ``v``. When the
  mirror step leaves the family (``-1/(2v) >= 0``, i.e. "infinite variance") we set ``v = D`` and clip the
  mean ``m = lam1 * v``; this limit case is our derivation, the paper does not spell it out.
* ``prox_sgd``: Euclidean SGD on ``(m, s)`` with ``v = s^2`` for the energy ``E_q[-log p(y, theta)]`` and the
  exact proximal step of the entropy term ``-sum log s`` (``s <- (u + sqrt(u^2 + 4 eta)) / 2``).
* ``proj_sgd``: Euclidean SGD on ``(m, s)`` for the whole loss, then clipping to ``|m| <= U``,
  ``s in [D^{-1/2}, D^{1/2}]``.
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
        prior_var: variance of the isotropic Gaussian prior. n_quadrature: Gauss-Hermite nodes.
    """

    def __init__(self, X: np.ndarray, y: np.ndarray, prior_var: float = 1.0, n_quadrature: int = 32) -> None:
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if X.ndim != 2 or y.shape != (X.shape[0],):
            raise ValueError(f"X must be (n, d) and y (n,), got {X.shape} and {y.shape}")
        labels = set(np.unique(y).tolist())
        if labels <= {0.0, 1.0}:
            y = 2.0 * y - 1.0
        elif not labels <= {-1.0, 1.0}:
            raise ValueError(f"y must be in {{-1, +1}} or {{0, 1}}, got values {sorted(labels)[:5]}")
        if prior_var <= 0:
            raise ValueError(f"prior_var must be positive, got {prior_var}")
        self.X = X
        self.y = y
        self.signed_X = X * y[:, None]
        self.prior_var = float(prior_var)
        nodes, weights = np.polynomial.hermite_e.hermegauss(n_quadrature)
        self._nodes = nodes  # probabilists' Hermite: integrate against the standard normal density
        self._weights = weights / np.sqrt(2.0 * np.pi)

    @property
    def n_samples(self) -> int:
        return self.X.shape[0]

    @property
    def dim(self) -> int:
        return self.X.shape[1]

    def _margins(self, m: np.ndarray, v: np.ndarray, rows: np.ndarray | None) -> tuple[np.ndarray, ...]:
        signed = self.signed_X if rows is None else self.signed_X[rows]
        mean = signed @ m
        std = np.sqrt((signed**2) @ v)
        margins = mean[:, None] + std[:, None] * self._nodes[None, :]  # (batch, nodes)
        return signed, margins

    def loss(self, m: np.ndarray, v: np.ndarray) -> float:
        """Exact negative ELBO (up to quadrature error) in nats."""
        _, margins = self._margins(m, v, None)
        expected_nll = -(log_expit(margins) @ self._weights).sum()
        kl = 0.5 * np.sum(v / self.prior_var + m**2 / self.prior_var - 1.0 - np.log(v / self.prior_var))
        return float(expected_nll + kl)

    def likelihood_grads(
        self, m: np.ndarray, v: np.ndarray, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Unbiased gradients of ``sum_i E_q[softplus(-a_i)]`` w.r.t. ``m`` and ``v``, shapes (d,) and (d,).

        With ``rows`` (a minibatch of indices) the batch sum is rescaled by ``n / batch``.
        """
        signed, margins = self._margins(m, v, rows)
        first = -(expit(-margins) @ self._weights)  # E[d softplus(-a) / da]
        second = (expit(margins) * expit(-margins)) @ self._weights  # E[d^2 softplus(-a) / da^2]
        scale = 1.0 if rows is None else self.n_samples / len(rows)
        grad_m = scale * signed.T @ first
        grad_v = scale * 0.5 * (signed**2).T @ second
        return grad_m, grad_v

    def loss_grads(
        self, m: np.ndarray, v: np.ndarray, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, ...]:
        """Gradients of the full negative ELBO w.r.t. ``(m, v)`` (likelihood part possibly minibatched)."""
        grad_m, grad_v = self.likelihood_grads(m, v, rows)
        return grad_m + m / self.prior_var, grad_v + 0.5 / self.prior_var - 0.5 / v


class MeanFieldGaussianVI:
    """Fit ``q = N(m, diag(v))`` to the posterior of a :class:`LogisticRegressionVIProblem`.

    Parameters
    ----------
    method : 'sngd' | 'proj_sngd' | 'prox_sgd' | 'proj_sgd' (see the module docstring).
    step_size : float or callable ``t -> eta_t`` (t = 1, 2, ...). Natural-gradient steps are unitless;
        Euclidean steps are in parameter units per nat.
    n_iter : iterations. batch_size : minibatch size (``None`` = full batch, deterministic).
    mean_bound : ``U``; variance_bound : ``D`` (variances kept in ``[1/D, D]`` by the projected methods).
    record_every : evaluate the exact loss every this many iterations (0 = only at the end).
    random_state : seeds the minibatches.

    Attributes (after ``fit``)
    --------------------------
    mean_, var_ : ndarrays (d,). final_loss_ : negative ELBO (inf if diverged). diverged_ : bool.
    loss_history_ : list of (iteration, loss).
    """

    def __init__(
        self,
        method: Method = "proj_sngd",
        step_size: float | Callable[[int], float] = 0.1,
        n_iter: int = 1000,
        batch_size: int | None = 32,
        mean_bound: float = 10.0,
        variance_bound: float = 100.0,
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
        if self.mean_bound <= 0 or self.variance_bound <= 1:
            raise ValueError(
                f"need mean_bound > 0 and variance_bound > 1, got {self.mean_bound}, {self.variance_bound}"
            )

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
        v = np.full(d, problem.prior_var) if init_var is None else np.array(init_var, dtype=np.float64)
        if m.shape != (d,) or v.shape != (d,) or np.any(v <= 0):
            raise ValueError(f"init_mean/init_var must have shape ({d},) with positive variances")
        U, D = float(self.mean_bound), float(self.variance_bound)
        self.loss_history_ = []
        self.diverged_ = False
        for t in range(1, self.n_iter + 1):
            rows = (
                None
                if self.batch_size is None
                else rng.choice(problem.n_samples, self.batch_size, replace=False)
            )
            eta = self._eta(t)
            if self.method in ("sngd", "proj_sngd"):
                m, v, ok = self._natural_step(
                    problem, m, v, rows, eta, project=self.method == "proj_sngd", U=U, D=D
                )
            else:
                m, v, ok = self._euclidean_step(
                    problem, m, v, rows, eta, prox=self.method == "prox_sgd", U=U, D=D
                )
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
        return self

    @staticmethod
    def _natural_step(problem, m, v, rows, eta, project, U, D):
        grad_m, grad_v = problem.likelihood_grads(m, v, rows)
        # Chain rule from (m, v) to the expectation parameters (mu1, mu2) = (m, m^2 + v).
        grad_mu1 = grad_m - 2.0 * m * grad_v
        grad_mu2 = grad_v
        lam1, lam2 = m / v, -0.5 / v
        lam1 = (1.0 - eta) * lam1 + eta * (0.0 - grad_mu1)  # prior natural parameters: (0, -1/(2 prior_var))
        lam2 = (1.0 - eta) * lam2 + eta * (-0.5 / problem.prior_var - grad_mu2)
        if not (np.all(np.isfinite(lam1)) and np.all(np.isfinite(lam2))):
            return m, v, False
        outside = lam2 >= 0.0
        if not project:
            if np.any(outside):
                return m, v, False
            v_new = -0.5 / lam2
            m_new = lam1 * v_new
            return m_new, v_new, bool(np.all(np.isfinite(m_new)) and np.all(np.isfinite(v_new)))
        v_new = np.where(outside, D, -0.5 / np.where(outside, -1.0, lam2))
        v_new = np.clip(v_new, 1.0 / D, D)
        m_new = np.clip(np.where(outside, lam1 * D, lam1 * (-0.5 / np.where(outside, -1.0, lam2))), -U, U)
        return m_new, v_new, True

    @staticmethod
    def _euclidean_step(problem, m, v, rows, eta, prox, U, D):
        s = np.sqrt(v)
        grad_m, grad_v = problem.likelihood_grads(m, v, rows)
        grad_m = grad_m + m / problem.prior_var
        # Energy part of dL/ds (likelihood + prior cross-entropy); dv/ds = 2 s.
        grad_s_energy = 2.0 * s * (grad_v + 0.5 / problem.prior_var)
        m_new = m - eta * grad_m
        if prox:
            u = s - eta * grad_s_energy
            s_new = 0.5 * (u + np.sqrt(u**2 + 4.0 * eta))  # prox of -eta * log s, per coordinate
        else:
            s_new = s - eta * (grad_s_energy - 1.0 / s)
            m_new = np.clip(m_new, -U, U)
            s_new = np.clip(s_new, 1.0 / np.sqrt(D), np.sqrt(D))
        ok = bool(np.all(np.isfinite(m_new)) and np.all(np.isfinite(s_new)) and np.all(s_new > 0))
        return m_new, s_new**2, ok
