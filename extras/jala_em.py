"""JALA-EM: maximum marginal likelihood with the Jarzynski-adjusted Langevin algorithm (Cuin, Carbone &
Akyildiz, NeurIPS 2025).

For a latent variable model ``p_theta(x, y)`` with observed ``y`` and latent ``x``, ``N`` particles ``x^j``
carry log-weights ``A^j``; ``gamma_k = p_theta_k(., y)``. Each of the ``K`` steps (the paper's Algorithm 1):

1. ``theta_{k+1} <- Adam(theta_k, -sum_j W^j grad_theta log gamma_k(x^j))`` (normalised weights ``W``;
   Fisher's identity);
2. ULA move ``x'^j = x^j + h grad_x log gamma_k(x^j) + sqrt(2 h) xi``;
3. weight update ``A^j += log gamma_{k+1}(x'^j) + log L(x'^j -> x^j) - log gamma_k(x^j) - log M(x^j -> x'^j)``
   with ``M`` the ULA kernel of ``gamma_k`` and ``L`` that of ``gamma_{k+1}`` (Carbone et al. 2023, the
   paper's eq. (2)); an SMC sampler with this backward kernel, so the weights correct the ULA bias exactly;
4. systematic resampling when ``ESS / N`` falls below ``ess_threshold`` (0: never, the paper's C = 0); the
   log-weights are then all set to their log-mean-exp, so the running normalising-constant estimate is
   unchanged.

``log Z_hat_k = log Z_0 + log mean_j exp(A^j)`` estimates ``log p_theta_k(y)``; ``Z_0`` is the exact
marginal likelihood at the starting parameter, where the particles are drawn from the exact posterior.
``weight_update="reweight"`` gives the simpler variant (reweight by ``gamma_{k+1}(x) / gamma_k(x)``, then
a ULA move targeting ``gamma_{k+1}``), exact only for invariant kernels (bias of order ``h`` with ULA).

:class:`LinearGaussianRegression` is a small testbed of ours: latent polynomial coefficients
``x ~ N(theta 1, prior_var I)`` with a scalar, shared prior mean ``theta`` (the learned parameter),
``y | x ~ N(Phi x, noise_var I)``, with ``Phi`` the Vandermonde matrix of the inputs. Its marginal
``y ~ N(theta Phi 1, noise_var I + prior_var Phi Phi')`` and posterior are in closed form, which the tests
use as ground truth.

:class:`BayesianPolynomialRegression` is the paper's section 5.3 / Appendix C.5 model: coefficients
``x ~ N(0, alpha^-1 I)``, noise precision ``beta = 1 / sigma^2``, and the learned parameter
``theta = (log alpha, log beta)`` (the paper's ``(log sigma^2, log alpha)`` up to order and sign, which
Adam's coordinate-wise, sign-symmetric update does not see). Its Langevin target is stiff (posterior
precision up to ``beta lambda_max(Phi' Phi)``), so it exposes ``langevin_step_bound(theta) = 0.5 / L(theta)``;
:class:`JALAEM` caps its ULA step at that bound whenever a model provides one (ULA is unstable for steps
above ``2 / L``). :class:`BatchedBayesianPolynomialRegression` evaluates ``B`` such problems at once for
``JALAEM.fit_batch``.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

__all__ = [
    "BatchedBayesianPolynomialRegression",
    "BayesianPolynomialRegression",
    "LatentVariableModel",
    "LinearGaussianRegression",
    "JALAEM",
    "NumpyAdam",
    "systematic_resample",
]


class LatentVariableModel(Protocol):
    """What JALA-EM needs. Particles have shape (N, d_x); ``theta`` has shape (d_theta,)."""

    def log_joint(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        """``log p_theta(x^j, y)`` per particle, shape (N,)."""

    def grad_x_log_joint(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Gradient in ``x`` per particle, shape (N, d_x)."""

    def grad_theta_log_joint(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Gradient in ``theta`` per particle, shape (N, d_theta)."""

    def sample_posterior(self, theta: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """Exact draws from ``p_theta(x | y)``, shape (n, d_x) (used at the starting parameter)."""

    def log_marginal(self, theta: np.ndarray) -> float:
        """Exact ``log p_theta(y)`` (used for ``Z_0`` at the starting parameter)."""


def systematic_resample(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Systematic resampling: indices (N,) drawn with one uniform offset. ``weights``: (N,), sum to 1."""
    n = len(weights)
    positions = (rng.random() + np.arange(n)) / n
    cumulative = np.cumsum(weights)
    cumulative[-1] = 1.0  # guard against round-off leaving the last bin short
    return np.searchsorted(cumulative, positions, side="left")


class LinearGaussianRegression:
    """Polynomial regression with Gaussian latent coefficients (see module docstring).

    Args:
        inputs: (n,) scalar inputs; targets: (n,) responses; order: polynomial order ``p`` (``p + 1`` latent
        coefficients); prior_var, noise_var: variances (known).
    """

    def __init__(
        self,
        inputs: np.ndarray,
        targets: np.ndarray,
        order: int,
        prior_var: float = 1.0,
        noise_var: float = 1.0,
    ) -> None:
        inputs = np.asarray(inputs, dtype=np.float64)
        targets = np.asarray(targets, dtype=np.float64)
        if inputs.ndim != 1 or targets.shape != inputs.shape:
            raise ValueError(
                f"inputs and targets must be equal-length 1-D arrays, got {inputs.shape}, {targets.shape}"
            )
        if order < 0 or int(order) != order:
            raise ValueError(f"order must be a non-negative integer, got {order}")
        if prior_var <= 0 or noise_var <= 0:
            raise ValueError(f"prior_var and noise_var must be positive, got {prior_var}, {noise_var}")
        self.features = np.vander(inputs, int(order) + 1, increasing=True)  # (n, p + 1)
        self.targets = targets
        self.prior_var = float(prior_var)
        self.noise_var = float(noise_var)
        self.dim = int(order) + 1
        precision = np.eye(self.dim) / self.prior_var + self.features.T @ self.features / self.noise_var
        self._posterior_cov = np.linalg.inv(precision)
        self._posterior_chol = np.linalg.cholesky(self._posterior_cov)
        self._phi_t_y = self.features.T @ targets / self.noise_var
        # Sufficient statistics: the residual norm ||y - Phi x||^2 costs O(d^2) per particle, not O(n d).
        self._gram = self.features.T @ self.features
        self._phi_t_y_raw = self.features.T @ targets
        self._y_norm2 = float(targets @ targets)

    def _check_theta(self, theta: np.ndarray) -> np.ndarray:
        theta = np.asarray(theta, dtype=np.float64)
        if theta.shape != (1,):
            raise ValueError(f"theta is the scalar prior mean, shape (1,); got shape {theta.shape}")
        return theta

    def log_joint(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        theta = self._check_theta(theta)
        deviation = x - theta
        n = len(self.targets)
        residual_norm2 = (
            self._y_norm2 - 2.0 * x @ self._phi_t_y_raw + np.einsum("ij,jk,ik->i", x, self._gram, x)
        )
        log_lik = -0.5 * residual_norm2 / self.noise_var - 0.5 * n * np.log(2 * np.pi * self.noise_var)
        log_prior = -0.5 * (deviation**2).sum(1) / self.prior_var - 0.5 * self.dim * np.log(
            2 * np.pi * self.prior_var
        )
        return log_lik + log_prior

    def grad_x_log_joint(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        return (self._phi_t_y_raw[None, :] - x @ self._gram) / self.noise_var - (x - theta) / self.prior_var

    def grad_theta_log_joint(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        return (x - self._check_theta(theta)).sum(axis=1, keepdims=True) / self.prior_var

    def posterior_mean(self, theta: np.ndarray) -> np.ndarray:
        prior_mean = np.full(self.dim, self._check_theta(theta)[0])
        return self._posterior_cov @ (prior_mean / self.prior_var + self._phi_t_y)

    def sample_posterior(self, theta: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        noise = rng.standard_normal((n, self.dim))
        return self.posterior_mean(theta)[None, :] + noise @ self._posterior_chol.T

    def log_marginal(self, theta: np.ndarray) -> float:
        covariance = (
            self.noise_var * np.eye(len(self.targets)) + self.prior_var * self.features @ self.features.T
        )
        chol = np.linalg.cholesky(covariance)
        mean = self.features.sum(axis=1) * self._check_theta(theta)[0]
        whitened = np.linalg.solve(chol, self.targets - mean)
        n = len(self.targets)
        return float(-0.5 * whitened @ whitened - np.log(np.diag(chol)).sum() - 0.5 * n * np.log(2 * np.pi))

    def mmle(self) -> np.ndarray:
        """Exact maximiser of ``log p_theta(y)``, shape (1,): GLS of ``y`` on ``Phi 1``."""
        covariance = (
            self.noise_var * np.eye(len(self.targets)) + self.prior_var * self.features @ self.features.T
        )
        direction = self.features.sum(axis=1)
        solved = np.linalg.solve(covariance, direction)
        return np.array([solved @ self.targets / (solved @ direction)])


class BayesianPolynomialRegression:
    """Polynomial regression with learned prior and noise precisions (see module docstring).

    ``log p_theta(x, y) = log N(y; Phi x, beta^-1 I) + log N(x; 0, alpha^-1 I)`` with
    ``theta = (log alpha, log beta)``, shape (2,). ``Phi`` is the (n, order + 1) Vandermonde matrix.

    Args:
        inputs: (n,) scalar inputs; targets: (n,) responses; order: polynomial order (``order + 1`` latents).
    """

    def __init__(self, inputs: np.ndarray, targets: np.ndarray, order: int) -> None:
        inputs = np.asarray(inputs, dtype=np.float64)
        targets = np.asarray(targets, dtype=np.float64)
        if inputs.ndim != 1 or targets.shape != inputs.shape:
            raise ValueError(
                f"inputs and targets must be equal-length 1-D arrays, got {inputs.shape}, {targets.shape}"
            )
        if order < 0 or int(order) != order:
            raise ValueError(f"order must be a non-negative integer, got {order}")
        self.features = np.vander(inputs, int(order) + 1, increasing=True)  # (n, d)
        self.targets = targets
        self.dim = int(order) + 1
        self.n = len(targets)
        # Sufficient statistics: every density below costs O(d^2) per particle, not O(n d).
        self._gram = self.features.T @ self.features
        self._phi_t_y = self.features.T @ targets
        self._y_norm2 = float(targets @ targets)
        self._gram_eigenvalues = np.linalg.eigvalsh(self._gram)

    def _precisions(self, theta: np.ndarray) -> tuple[float, float]:
        theta = np.asarray(theta, dtype=np.float64)
        if theta.shape != (2,):
            raise ValueError(f"theta is (log alpha, log beta), shape (2,); got shape {theta.shape}")
        return float(np.exp(theta[0])), float(np.exp(theta[1]))

    def _residual_norm2(self, x: np.ndarray) -> np.ndarray:
        """``||y - Phi x||^2`` per particle, shape (N,)."""
        return self._y_norm2 - 2.0 * x @ self._phi_t_y + ((x @ self._gram) * x).sum(1)

    def log_joint(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        alpha, beta = self._precisions(theta)
        log_lik = 0.5 * self.n * np.log(beta / (2 * np.pi)) - 0.5 * beta * self._residual_norm2(x)
        log_prior = 0.5 * self.dim * np.log(alpha / (2 * np.pi)) - 0.5 * alpha * (x**2).sum(1)
        return log_lik + log_prior

    def grad_x_log_joint(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        alpha, beta = self._precisions(theta)
        return beta * (self._phi_t_y[None, :] - x @ self._gram) - alpha * x

    def grad_theta_log_joint(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        alpha, beta = self._precisions(theta)
        d_log_alpha = 0.5 * self.dim - 0.5 * alpha * (x**2).sum(1)
        d_log_beta = 0.5 * self.n - 0.5 * beta * self._residual_norm2(x)
        return np.stack([d_log_alpha, d_log_beta], axis=1)

    def _posterior(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean (d,) and Cholesky factor of the posterior precision (d, d)."""
        alpha, beta = self._precisions(theta)
        precision = alpha * np.eye(self.dim) + beta * self._gram
        chol = np.linalg.cholesky(precision)
        mean = beta * np.linalg.solve(precision, self._phi_t_y)
        return mean, chol

    def posterior_mean(self, theta: np.ndarray) -> np.ndarray:
        return self._posterior(theta)[0]

    def sample_posterior(self, theta: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        mean, chol = self._posterior(theta)
        # x = mean + L^-T z has covariance (L L^T)^-1, the posterior covariance.
        noise = np.linalg.solve(chol.T, rng.standard_normal((self.dim, n))).T
        return mean[None, :] + noise

    def log_marginal(self, theta: np.ndarray) -> float:
        """Exact evidence (Bishop, PRML eq. 3.86) in O(d^3): no n x n matrix is formed."""
        alpha, beta = self._precisions(theta)
        mean, chol = self._posterior(theta)
        energy = 0.5 * beta * float(self._residual_norm2(mean[None, :])[0]) + 0.5 * alpha * float(mean @ mean)
        return float(
            0.5 * self.dim * np.log(alpha)
            + 0.5 * self.n * np.log(beta)
            - energy
            - np.log(np.diag(chol)).sum()
            - 0.5 * self.n * np.log(2 * np.pi)
        )

    def langevin_step_bound(self, theta: np.ndarray) -> float:
        """``0.5 / L`` with ``L = alpha + beta lambda_max(Phi' Phi)``, the Lipschitz constant of the drift."""
        alpha, beta = self._precisions(theta)
        return 0.5 / (alpha + beta * float(self._gram_eigenvalues[-1]))


class NumpyAdam:
    """Adam (Kingma & Ba), the same update as ``torch.optim.Adam`` with its defaults, for one float64 vector.

    Used instead of torch's optimiser because JALA-EM's parameter is tiny and the per-step Python overhead
    of ``torch.optim`` dominated the runtime. ``step(grad)`` descends on ``grad``, shape (d,).
    """

    def __init__(self, params: np.ndarray, lr: float, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = np.array(params, dtype=np.float64)
        self.lr, self.betas, self.eps = float(lr), betas, float(eps)
        self._m = np.zeros_like(self.params)
        self._v = np.zeros_like(self.params)
        self._t = 0

    def step(self, grad: np.ndarray) -> np.ndarray:
        beta1, beta2 = self.betas
        self._t += 1
        self._m = beta1 * self._m + (1 - beta1) * grad
        self._v = beta2 * self._v + (1 - beta2) * grad * grad
        bias1 = 1 - beta1**self._t
        bias2 = 1 - beta2**self._t
        denominator = np.sqrt(self._v) / np.sqrt(bias2) + self.eps
        self.params = self.params - (self.lr / bias1) * self._m / denominator
        return self.params.copy()


class BatchedBayesianPolynomialRegression:
    """``B`` independent :class:`BayesianPolynomialRegression` problems of one order, evaluated together.

    Only the sufficient statistics are stored, so the data sets may have different sizes ``n_b``. Shapes:
    ``theta`` (B, 2) = (log alpha, log beta) per problem; particles ``x`` (B, N, d) with ``d = order + 1``.
    Used by the model-order reproduction to run JALA-EM on thousands of data sets in one vectorised loop.

    Args:
        gram: (B, d, d) ``Phi' Phi``; phi_t_y: (B, d) ``Phi' y``; y_norm2: (B,) ``y' y``; n_obs: (B,) ``n_b``.
    """

    def __init__(self, gram: np.ndarray, phi_t_y: np.ndarray, y_norm2: np.ndarray, n_obs: np.ndarray) -> None:
        self.gram = np.asarray(gram, dtype=np.float64)
        self.phi_t_y = np.asarray(phi_t_y, dtype=np.float64)
        self.y_norm2 = np.asarray(y_norm2, dtype=np.float64)
        self.n_obs = np.asarray(n_obs, dtype=np.float64)
        batch, dim, _ = self.gram.shape
        shapes_agree = self.phi_t_y.shape == (batch, dim) and self.y_norm2.shape == self.n_obs.shape == (
            batch,
        )
        if not shapes_agree:
            raise ValueError("gram (B, d, d), phi_t_y (B, d), y_norm2 (B,) and n_obs (B,) must agree")
        self.batch, self.dim = batch, dim
        self._gram_lambda_max = np.linalg.eigvalsh(self.gram)[:, -1]

    @classmethod
    def from_data(
        cls, inputs: list[np.ndarray], targets: list[np.ndarray], order: int
    ) -> BatchedBayesianPolynomialRegression:
        """Build from ``B`` pairs of (n_b,) inputs and targets with the Vandermonde features of ``order``."""
        if order < 0 or int(order) != order:
            raise ValueError(f"order must be a non-negative integer, got {order}")
        features = [
            np.vander(np.asarray(t, dtype=np.float64), int(order) + 1, increasing=True) for t in inputs
        ]
        return cls(
            np.stack([f.T @ f for f in features]),
            np.stack([f.T @ np.asarray(y, dtype=np.float64) for f, y in zip(features, targets, strict=True)]),
            np.array([float(np.dot(y, y)) for y in targets]),
            np.array([len(y) for y in targets]),
        )

    def _precisions(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        theta = np.asarray(theta, dtype=np.float64)
        if theta.shape != (self.batch, 2):
            raise ValueError(f"theta must have shape ({self.batch}, 2), got {theta.shape}")
        return np.exp(theta[:, 0]), np.exp(theta[:, 1])

    def _residual_norm2(self, x: np.ndarray, x_gram: np.ndarray) -> np.ndarray:
        """``||y - Phi x||^2`` per particle, (B, N), from ``x_gram = x Phi'Phi`` (B, N, d)."""
        return self.y_norm2[:, None] - 2.0 * np.einsum("bnd,bd->bn", x, self.phi_t_y) + (x_gram * x).sum(-1)

    def log_joint(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        """``log p_theta(x, y)``, (B, N)."""
        return self.log_joint_and_grads(theta, x)[0]

    def log_joint_and_grads(
        self, theta: np.ndarray, x: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``log p_theta(x, y)`` (B, N), its x-gradient (B, N, d) and theta-gradient (B, N, 2) in one pass.

        One pass because the product ``x Phi'Phi`` is the dominant cost and all three need it.
        """
        alpha, beta = self._precisions(theta)
        x_gram = x @ self.gram
        residual = self._residual_norm2(x, x_gram)
        norm2 = (x * x).sum(-1)
        n = self.n_obs[:, None]
        log_joint = (
            0.5 * n * np.log(beta / (2 * np.pi))[:, None]
            - 0.5 * beta[:, None] * residual
            + 0.5 * self.dim * np.log(alpha / (2 * np.pi))[:, None]
            - 0.5 * alpha[:, None] * norm2
        )
        grad_x = beta[:, None, None] * (self.phi_t_y[:, None, :] - x_gram) - alpha[:, None, None] * x
        grad_theta = np.stack(
            [0.5 * self.dim - 0.5 * alpha[:, None] * norm2, 0.5 * n - 0.5 * beta[:, None] * residual], axis=-1
        )
        return log_joint, grad_x, grad_theta

    def _posterior(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior means (B, d) and Cholesky factors of the posterior precisions (B, d, d)."""
        alpha, beta = self._precisions(theta)
        precision = alpha[:, None, None] * np.eye(self.dim) + beta[:, None, None] * self.gram
        chol = np.linalg.cholesky(precision)
        mean = np.linalg.solve(precision, (beta[:, None] * self.phi_t_y)[..., None])[..., 0]
        return mean, chol

    def sample_posterior(self, theta: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """Exact posterior draws, (B, n, d)."""
        mean, chol = self._posterior(theta)
        noise = np.linalg.solve(np.swapaxes(chol, 1, 2), rng.standard_normal((self.batch, self.dim, n)))
        return mean[:, None, :] + np.swapaxes(noise, 1, 2)

    def log_marginal(self, theta: np.ndarray) -> np.ndarray:
        """Exact evidence per problem, (B,) (Bishop, PRML eq. 3.86)."""
        alpha, beta = self._precisions(theta)
        mean, chol = self._posterior(theta)
        m = mean[:, None, :]
        residual = self._residual_norm2(m, m @ self.gram)[:, 0]
        energy = 0.5 * beta * residual + 0.5 * alpha * (mean * mean).sum(-1)
        log_det = np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(-1)
        return (
            0.5 * self.dim * np.log(alpha)
            + 0.5 * self.n_obs * np.log(beta)
            - energy
            - log_det
            - 0.5 * self.n_obs * np.log(2 * np.pi)
        )

    def type2_ml(self, theta0: np.ndarray, n_iter: int = 200) -> np.ndarray:
        """Maximiser of the evidence per problem, (B, 2), by MacKay's fixed-point updates.

        ``gamma = sum_i lambda_i / (alpha + lambda_i)`` over the eigenvalues of ``beta Phi'Phi``;
        ``alpha <- gamma / ||m||^2``, ``beta <- (n - gamma) / ||y - Phi m||^2`` (Bishop, PRML 3.92, 3.95).
        """
        theta = np.array(theta0, dtype=np.float64)
        eigenvalues = np.linalg.eigvalsh(self.gram)  # (B, d)
        for _ in range(n_iter):
            alpha, beta = self._precisions(theta)
            mean, _ = self._posterior(theta)
            scaled = beta[:, None] * eigenvalues
            gamma = (scaled / (alpha[:, None] + scaled)).sum(-1)
            m = mean[:, None, :]
            residual = self._residual_norm2(m, m @ self.gram)[:, 0]
            theta = np.stack(
                [
                    np.log(np.maximum(gamma, 1e-12) / np.maximum((mean * mean).sum(-1), 1e-300)),
                    np.log(np.maximum(self.n_obs - gamma, 1e-12) / np.maximum(residual, 1e-300)),
                ],
                axis=1,
            )
        return theta

    def langevin_step_bound(self, theta: np.ndarray) -> np.ndarray:
        """``0.5 / L`` per problem, (B,), with ``L = alpha + beta lambda_max(Phi' Phi)``."""
        alpha, beta = self._precisions(theta)
        return 0.5 / (alpha + beta * self._gram_lambda_max)


class _SingleAsBatch:
    """Presents one :class:`LatentVariableModel` as a batch of size 1 (leading axis on theta and x)."""

    def __init__(self, model: LatentVariableModel) -> None:
        self.model = model
        bound = getattr(model, "langevin_step_bound", None)
        if bound is not None:
            self.langevin_step_bound = lambda theta: np.array([float(bound(theta[0]))])

    def log_joint_and_grads(self, theta, x):
        m, t, p = self.model, theta[0], x[0]
        return m.log_joint(t, p)[None], m.grad_x_log_joint(t, p)[None], m.grad_theta_log_joint(t, p)[None]

    def sample_posterior(self, theta, n, rng):
        return self.model.sample_posterior(theta[0], n, rng)[None]

    def log_marginal(self, theta):
        return np.array([float(self.model.log_marginal(theta[0]))])


def _normalise(log_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise normalised weights (B, N) and ``log mean exp`` (B,) of log-weights (B, N), one reduction."""
    log_total = np.logaddexp.reduce(log_weights, axis=-1)
    return np.exp(log_weights - log_total[:, None]), log_total - np.log(log_weights.shape[-1])


WEIGHT_UPDATES = ("crooks", "reweight")


class JALAEM:
    """Jarzynski-adjusted Langevin EM (Algorithm 1 of the paper).

    Parameters
    ----------
    n_particles : N. n_steps : K. langevin_step : h (ULA step). learning_rate : Adam's step for theta.
    ess_threshold : resample when ESS / N < this, in [0, 1]; 0 never resamples (the paper's C = 0 in its
    regression experiments). random_state : seeds particles and noise.
    weight_update : ``"crooks"`` (default, the paper's eq. (2)-(3)): the log-weight increment is
    ``log[gamma_{k+1}(X_{k+1}) L(X_{k+1} -> X_k)] - log[gamma_k(X_k) M(X_k -> X_{k+1})]`` with ``M`` the ULA
    kernel of ``gamma_k`` and the backward kernel ``L`` the ULA kernel of ``gamma_{k+1}`` (Carbone et al.
    2023, Prop. 1; an SMC sampler in the sense of Del Moral et al. 2006: ``Z_hat`` is unbiased for any
    ``h``).
    ``"reweight"``: reweight by ``gamma_{k+1}(X_k) / gamma_k(X_k)``, then a ULA move targeting
    ``gamma_{k+1}`` (exact only for an invariant kernel; bias of order ``h`` with ULA).
    If the model has ``langevin_step_bound(theta)``, each step is ``min(h, bound(theta_{k+1}))``.

    ``fit(model, theta0)`` takes one model (protocol :class:`LatentVariableModel`, ``theta0`` (d_theta,));
    ``fit_batch(model, theta0)`` takes a batched model (e.g. :class:`BatchedBayesianPolynomialRegression`,
    ``theta0`` (B, d_theta)) and runs ``B`` independent JALA-EM chains in one vectorised loop.

    Attributes (after ``fit``; ``fit_batch`` gives the same with a leading batch axis B)
    ------------------------------------------------------------------------------------
    theta_ : (d_theta,) final parameter. log_marginal_ : float, ``log Z_hat_K``.
    particles_ : (N, d_x). log_weights_ : (N,).
    theta_path_ : (K + 1, d_theta); log_marginal_path_ : (K + 1,); ess_path_ : (K + 1,);
    n_resamples_ : int.
    """

    def __init__(
        self,
        n_particles: int = 50,
        n_steps: int = 200,
        langevin_step: float = 1e-6,
        learning_rate: float = 5e-3,
        ess_threshold: float = 0.5,
        random_state: int = 0,
        weight_update: str = "crooks",
    ) -> None:
        self.n_particles = n_particles
        self.n_steps = n_steps
        self.langevin_step = langevin_step
        self.learning_rate = learning_rate
        self.ess_threshold = ess_threshold
        self.random_state = random_state
        self.weight_update = weight_update

    def _validate(self) -> None:
        if self.n_particles < 2:
            raise ValueError(f"n_particles must be >= 2, got {self.n_particles}")
        if self.n_steps < 0:
            raise ValueError(f"n_steps must be >= 0, got {self.n_steps}")
        if not self.langevin_step > 0:
            raise ValueError(f"langevin_step must be positive, got {self.langevin_step}")
        if not self.learning_rate >= 0:
            raise ValueError(f"learning_rate must be >= 0, got {self.learning_rate}")
        if not 0 <= self.ess_threshold <= 1:
            raise ValueError(f"ess_threshold must be in [0, 1], got {self.ess_threshold}")
        if self.weight_update not in WEIGHT_UPDATES:
            raise ValueError(f"weight_update must be one of {WEIGHT_UPDATES}, got {self.weight_update!r}")

    def fit(self, model: LatentVariableModel, theta0: np.ndarray) -> JALAEM:
        """Run ``K`` steps from ``theta0`` (shape (d_theta,))."""
        theta0 = np.array(theta0, dtype=np.float64)
        if theta0.ndim != 1:
            raise ValueError(f"theta0 must be 1-D, got shape {theta0.shape}")
        self.fit_batch(_SingleAsBatch(model), theta0[None, :])
        self.theta_ = self.theta_[0]
        self.particles_ = self.particles_[0]
        self.log_weights_ = self.log_weights_[0]
        self.log_marginal_ = float(self.log_marginal_[0])
        self.theta_path_ = self.theta_path_[:, 0]
        self.log_marginal_path_ = self.log_marginal_path_[:, 0]
        self.ess_path_ = self.ess_path_[:, 0]
        self.n_resamples_ = int(self.n_resamples_[0])
        return self

    def fit_batch(self, model, theta0: np.ndarray) -> JALAEM:
        """Run ``K`` steps for ``B`` problems at once; ``theta0`` (B, d_theta). See the class docstring."""
        self._validate()
        rng = np.random.default_rng(self.random_state)
        theta = np.array(theta0, dtype=np.float64)
        if theta.ndim != 2:
            raise ValueError(f"theta0 must be 2-D (B, d_theta) for fit_batch, got shape {theta.shape}")
        n = self.n_particles
        particles = model.sample_posterior(theta, n, rng)  # (B, N, d_x)
        log_z0 = np.asarray(model.log_marginal(theta), dtype=np.float64)  # (B,)
        log_weights = np.zeros(particles.shape[:2])
        optimizer = NumpyAdam(theta, lr=self.learning_rate)  # elementwise, so it works on (B, d_theta)
        theta_path, log_z_path, ess_path = [theta.copy()], [log_z0.copy()], [np.full(len(theta), float(n))]
        n_resamples = np.zeros(len(theta), dtype=int)
        log_joint, grad_x, grad_theta = model.log_joint_and_grads(theta, particles)
        step_bound = getattr(model, "langevin_step_bound", None)
        crooks = self.weight_update == "crooks"
        for _ in range(self.n_steps):
            normalised, _ = _normalise(log_weights)
            ascent = np.einsum("bn,bnj->bj", normalised, grad_theta)  # Fisher's identity, weighted
            theta = optimizer.step(-ascent)
            gamma = np.full(len(theta), float(self.langevin_step))
            if step_bound is not None:
                gamma = np.minimum(gamma, step_bound(theta))
            g = gamma[:, None, None]
            noise = rng.standard_normal(particles.shape)
            if crooks:
                # Forward ULA kernel of gamma_k (drift grad_x at theta_k), backward ULA kernel of gamma_{k+1}.
                new_particles = particles + g * grad_x + np.sqrt(2.0 * g) * noise
                new_log_joint, new_grad_x, new_grad_theta = model.log_joint_and_grads(theta, new_particles)
                log_forward = -0.5 * (noise * noise).sum(-1)  # -|x' - x - h grad|^2 / (4h)
                back = particles - new_particles - g * new_grad_x
                log_backward = -(back * back).sum(-1) / (4.0 * gamma[:, None])
                log_weights = log_weights + new_log_joint + log_backward - log_joint - log_forward
            else:
                moved_log_joint, moved_grad_x, _ = model.log_joint_and_grads(theta, particles)
                log_weights = log_weights + moved_log_joint - log_joint  # Jarzynski work at fixed x
                new_particles = particles + g * moved_grad_x + np.sqrt(2.0 * g) * noise
                new_log_joint, new_grad_x, new_grad_theta = model.log_joint_and_grads(theta, new_particles)
            particles, log_joint = new_particles, new_log_joint
            grad_x, grad_theta = new_grad_x, new_grad_theta
            normalised, log_mean_weight = _normalise(log_weights)
            ess = 1.0 / np.sum(normalised**2, axis=1)
            for b in np.flatnonzero(ess < self.ess_threshold * n):
                index = systematic_resample(normalised[b], rng)
                particles[b], log_joint[b] = particles[b][index], log_joint[b][index]
                grad_x[b], grad_theta[b] = grad_x[b][index], grad_theta[b][index]
                # all weights set to the log-mean weight: the running Z estimate is unchanged
                log_weights[b] = log_mean_weight[b]
                n_resamples[b] += 1
            theta_path.append(theta.copy())
            log_z_path.append(log_z0 + log_mean_weight)
            ess_path.append(ess)
        self.theta_ = theta
        self.particles_ = particles
        self.log_weights_ = log_weights
        self.log_marginal_ = log_z_path[-1]
        self.theta_path_ = np.array(theta_path)
        self.log_marginal_path_ = np.array(log_z_path)
        self.ess_path_ = np.array(ess_path)
        self.n_resamples_ = n_resamples
        return self
