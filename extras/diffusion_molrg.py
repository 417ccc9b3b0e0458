"""Representation dynamics of diffusion denoisers on a mixture of low-rank Gaussians (MoLRG).

Li, Zhang, Li, Chen, Zhu, Wang, Qu, "Understanding Representation Dynamics of Diffusion Models via
Low-Dimensional Modeling" (NeurIPS 2025).

Data model. ``K`` class subspaces ``U_k`` (``n x d``) are column blocks of one random ``n x n`` orthogonal
matrix; ``U~_k`` (``n x (n-d)``) spans the orthogonal complement of ``U_k``. A clean sample of class ``k``
is ``x0 = U_k a + delta * U~_k e`` with ``a ~ N(0, I_d)``, ``e ~ N(0, I_{n-d})``, classes equiprobable.
The noisy input at noise level ``sigma`` is ``x = x0 + sigma * eps`` (variance-exploding convention).

Exact posterior mean (the generalizing denoiser). Per class the covariance is
``C_k = P_k + delta^2 (I - P_k)`` with ``P_k = U_k U_k^T``, so ``E[x0 | x, k] = C_k (C_k + sigma^2 I)^{-1} x
= zeta P_k x + xi (I - P_k) x`` with ``zeta = 1/(1+sigma^2)`` and ``xi = delta^2/(delta^2+sigma^2)``.
The class posterior is a softmax; every ``C_k`` has the same determinant, so its logits reduce to
``0.5 * (1/(delta^2+sigma^2) - 1/(1+sigma^2)) * ||U_k^T x||^2``.

Memorizing denoiser. The exact optimum for the empirical distribution of ``N`` training points ``y_j``:
``E[x0 | x] = sum_j softmax_j(-||x - y_j||^2 / (2 sigma^2)) y_j``.

Metrics (derived here, the paper's exact normalisation was not available): for a representation ``r`` of a
sample of true class ``k``,

* class-subspace SNR = ``E ||U_k^T r||^2 / E sum_{l != k} ||U_l^T r||^2`` (energy in the own class subspace
  over energy in the other classes' subspaces, averaged over samples before the ratio);
* probe accuracy: the classes are zero-mean and every denoiser here is odd (``r(-x) = -r(x)``), so no probe
  linear in ``r`` beats chance; the probe is therefore a logistic regression that is linear in the
  second-moment features ``vec(r r^T)`` (upper triangle), a basis-free choice.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp, softmax
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

__all__ = [
    "MoLRG",
    "EmpiricalDenoiser",
    "subspace_snr",
    "quadratic_probe_accuracy",
    "representation_curve",
    "TrainedDenoiser",
    "linear_probe_accuracy",
    "copy_fraction",
    "feature_probe_curve",
]


def _check_sigma(sigma: float) -> float:
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a positive finite float, got {sigma!r}")
    return float(sigma)


def _check_points(x: np.ndarray, n_dim: int, name: str = "x") -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != n_dim:
        raise ValueError(f"{name} must have shape (n_samples, {n_dim}), got {x.shape}")
    return x


class MoLRG:
    """Mixture of ``n_classes`` low-rank Gaussians in ``R^n_dim`` with its exact posterior-mean denoiser.

    Parameters
    ----------
    n_dim: ambient dimension ``n``.
    n_classes: number of classes ``K``; needs ``n_classes * subspace_dim <= n_dim``.
    subspace_dim: dimension ``d`` of each class subspace.
    delta: standard deviation of the off-subspace component (``0 <= delta < 1``).
    random_state: seed of the random orthogonal matrix.

    Attributes
    ----------
    bases_: array ``(K, n, d)``, orthonormal class bases ``U_k``; ``U_k^T U_l = 0`` for ``k != l``.
    """

    def __init__(
        self, n_dim: int = 48, n_classes: int = 3, subspace_dim: int = 8, delta: float = 0.2, random_state=0
    ):
        for name, value in (("n_dim", n_dim), ("n_classes", n_classes), ("subspace_dim", subspace_dim)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        if n_classes * subspace_dim > n_dim:
            raise ValueError(
                f"n_classes * subspace_dim = {n_classes * subspace_dim} exceeds n_dim = {n_dim}: "
                "the class subspaces must be mutually orthogonal"
            )
        if not (0.0 <= delta < 1.0):
            raise ValueError(f"delta must lie in [0, 1), got {delta!r}")
        self.n_dim, self.n_classes, self.subspace_dim, self.delta = (
            n_dim,
            n_classes,
            subspace_dim,
            float(delta),
        )
        rng = np.random.default_rng(random_state)
        q, r = np.linalg.qr(rng.standard_normal((n_dim, n_dim)))
        q = q * np.sign(np.diag(r))  # sign fix makes q Haar-distributed
        self.bases_ = np.stack([q[:, k * subspace_dim : (k + 1) * subspace_dim] for k in range(n_classes)])

    def sample(self, n_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n_samples`` clean points. Returns ``x0`` ``(n_samples, n)`` and labels ``(n_samples,)``."""
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        labels = rng.integers(0, self.n_classes, size=n_samples)
        basis = self.bases_[labels]  # (N, n, d)
        a = rng.standard_normal((n_samples, self.subspace_dim))
        in_subspace = np.einsum("bnd,bd->bn", basis, a)
        # delta * U~_k e has the law of delta * (I - P_k) g with g ~ N(0, I_n).
        g = rng.standard_normal((n_samples, self.n_dim))
        off_subspace = g - np.einsum("bnd,bd->bn", basis, np.einsum("bnd,bn->bd", basis, g))
        return in_subspace + self.delta * off_subspace, labels

    def class_posterior(self, x: np.ndarray, sigma: float) -> np.ndarray:
        """Posterior class probabilities ``p(k | x)`` at noise ``sigma``: ``(n_samples, K)``."""
        sigma = _check_sigma(sigma)
        x = _check_points(x, self.n_dim)
        energy = np.einsum("knd,bn->bkd", self.bases_, x) ** 2
        gain = 0.5 * (1.0 / (self.delta**2 + sigma**2) - 1.0 / (1.0 + sigma**2))
        return softmax(gain * energy.sum(axis=2), axis=1)

    def posterior_mean(self, x: np.ndarray, sigma: float) -> np.ndarray:
        """Exact MMSE denoiser ``E[x0 | x0 + sigma eps = x]``: ``(n_samples, n)`` -> ``(n_samples, n)``."""
        sigma = _check_sigma(sigma)
        x = _check_points(x, self.n_dim)
        weights = self.class_posterior(x, sigma)
        zeta = 1.0 / (1.0 + sigma**2)
        xi = self.delta**2 / (self.delta**2 + sigma**2)
        projections = np.einsum("knd,bkd->bkn", self.bases_, np.einsum("knd,bn->bkd", self.bases_, x))
        # sum_k w_k [zeta P_k x + xi (x - P_k x)] with sum_k w_k = 1
        return xi * x + (zeta - xi) * np.einsum("bk,bkn->bn", weights, projections)


class EmpiricalDenoiser:
    """Exact posterior mean for the empirical distribution of ``train_points`` (a memorizing denoiser).

    ``train_points``: ``(N, n)``. ``posterior_mean(x, sigma)`` maps ``(B, n)`` to ``(B, n)``.
    """

    def __init__(self, train_points: np.ndarray):
        train_points = np.asarray(train_points, dtype=np.float64)
        if train_points.ndim != 2 or train_points.shape[0] < 1:
            raise ValueError(f"train_points must have shape (N >= 1, n_dim), got {train_points.shape}")
        self.train_points = train_points

    def posterior_mean(self, x: np.ndarray, sigma: float) -> np.ndarray:
        sigma = _check_sigma(sigma)
        x = _check_points(x, self.train_points.shape[1])
        sq_dist = (
            (x**2).sum(1)[:, None] - 2.0 * x @ self.train_points.T + (self.train_points**2).sum(1)[None, :]
        )
        logits = -sq_dist / (2.0 * sigma**2)
        weights = np.exp(logits - logsumexp(logits, axis=1, keepdims=True))
        return weights @ self.train_points


def subspace_snr(representations: np.ndarray, labels: np.ndarray, bases: np.ndarray) -> float:
    """Class-subspace SNR: own-class subspace energy over other-class subspace energy (see module doc).

    representations: ``(N, n)``; labels: ``(N,)`` ints in ``[0, K)``; bases: ``(K, n, d)``.
    """
    representations = np.asarray(representations, dtype=np.float64)
    labels = np.asarray(labels)
    if representations.ndim != 2 or labels.shape != (representations.shape[0],):
        raise ValueError(
            f"need representations (N, n) and labels (N,), got {representations.shape}, {labels.shape}"
        )
    if labels.min() < 0 or labels.max() >= bases.shape[0]:
        raise ValueError(
            f"labels must lie in [0, {bases.shape[0]}), got range [{labels.min()}, {labels.max()}]"
        )
    energy = (np.einsum("knd,bn->bkd", bases, representations) ** 2).sum(axis=2)  # (N, K)
    own = energy[np.arange(len(labels)), labels]
    others = energy.sum(axis=1) - own
    return float(own.mean() / max(others.mean(), 1e-300))


def _second_moment_features(r: np.ndarray) -> np.ndarray:
    rows, cols = np.triu_indices(r.shape[1])
    return r[:, rows] * r[:, cols]


def quadratic_probe_accuracy(
    train_reps: np.ndarray, train_labels: np.ndarray, test_reps: np.ndarray, test_labels: np.ndarray
) -> float:
    """Test accuracy of a logistic-regression probe linear in ``vec(r r^T)``; reps are ``(N, n)``."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    probe.fit(_second_moment_features(train_reps), train_labels)
    return float(probe.score(_second_moment_features(test_reps), test_labels))


def representation_curve(
    model: MoLRG,
    denoiser,
    sigmas,
    n_eval: int = 600,
    n_probe_train: int = 1200,
    with_probe: bool = True,
    random_state=0,
) -> dict[str, list[float]]:
    """SNR (and probe accuracy) of ``denoiser.posterior_mean(x0 + sigma eps, sigma)`` for each sigma.

    ``denoiser`` is any object with ``posterior_mean(x, sigma)``; the ``model`` supplies fresh clean samples
    and the class bases. Returns lists aligned with ``sigmas``.
    """
    sigmas = [_check_sigma(s) for s in sigmas]
    rng = np.random.default_rng(random_state)
    x_eval, y_eval = model.sample(n_eval, rng)
    x_probe, y_probe = model.sample(n_probe_train, rng) if with_probe else (None, None)
    snr, accuracy = [], []
    for sigma in sigmas:
        r_eval = denoiser.posterior_mean(x_eval + sigma * rng.standard_normal(x_eval.shape), sigma)
        snr.append(subspace_snr(r_eval, y_eval, model.bases_))
        if with_probe:
            r_probe = denoiser.posterior_mean(x_probe + sigma * rng.standard_normal(x_probe.shape), sigma)
            accuracy.append(quadratic_probe_accuracy(r_probe, y_probe, r_eval, y_eval))
    out = {"sigma": sigmas, "snr": snr}
    if with_probe:
        out["probe_accuracy"] = accuracy
    return out


# ---------------------------------------------------------------------------------------------------------
# Trained denoiser (small torch MLP) and its intermediate features
# ---------------------------------------------------------------------------------------------------------


def linear_probe_accuracy(
    train_feats: np.ndarray,
    train_labels: np.ndarray,
    test_feats: np.ndarray,
    test_labels: np.ndarray,
    C: float = 1.0,
) -> float:
    """Test accuracy of a standardised logistic-regression probe linear in the features ``(N, h)``."""
    train_feats, test_feats = np.asarray(train_feats, np.float64), np.asarray(test_feats, np.float64)
    if train_feats.ndim != 2 or test_feats.ndim != 2 or train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"features must be (N, h) with equal h, got {train_feats.shape}, {test_feats.shape}")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000))
    probe.fit(train_feats, train_labels)
    return float(probe.score(test_feats, test_labels))


class TrainedDenoiser:
    """A small noise-conditional MLP denoiser ``D(x, sigma)`` trained by denoising score matching.

    EDM-style preconditioning (Karras et al. 2022) with data scale ``s``:
    ``D = c_skip x + c_out F(c_in x, log sigma)``, ``c_skip = s^2/(s^2+sigma^2)``,
    ``c_out = sigma s / sqrt(s^2+sigma^2)``, ``c_in = 1/sqrt(s^2+sigma^2)``; the loss
    ``||D(x0 + sigma eps, sigma) - x0||^2 / c_out^2`` is averaged over ``log sigma ~ U[log sigma_min,
    log sigma_max]``. ``F`` is an MLP with ``n_layers`` hidden SiLU layers of width ``width``; the noise level
    enters as a learned embedding added to every hidden layer. The *features* of ``x`` at ``sigma`` are the
    activations of one hidden layer (``(B, width)``, the last by default), the analogue of a diffusion
    model's intermediate representation of ``x_t``.

    ``fit(x0)`` trains on the fixed set ``x0`` ``(N, n)`` (small ``N`` + many steps memorizes);
    ``posterior_mean(x, sigma)`` and ``features(x, sigma)`` accept ``(B, n)`` arrays.
    """

    def __init__(
        self,
        width: int = 256,
        n_layers: int = 3,
        steps: int = 3000,
        batch_size: int = 256,
        lr: float = 2e-3,
        sigma_min: float = 0.01,
        sigma_max: float = 20.0,
        random_state: int = 0,
    ):
        for name, value in (
            ("width", width),
            ("n_layers", n_layers),
            ("steps", steps),
            ("batch_size", batch_size),
        ):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (0 < sigma_min < sigma_max) or not np.isfinite(sigma_max):
            raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got {sigma_min!r}, {sigma_max!r}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        self.width, self.n_layers, self.steps, self.batch_size, self.lr = (
            width,
            n_layers,
            steps,
            batch_size,
            lr,
        )
        self.sigma_min, self.sigma_max, self.random_state = float(sigma_min), float(sigma_max), random_state

    # -- network ------------------------------------------------------------------------------------------
    def _build(self, n_dim: int):
        import torch
        from torch import nn

        class _Net(nn.Module):
            def __init__(self, n_dim: int, width: int, n_layers: int):
                super().__init__()
                self.inp = nn.Linear(n_dim, width)
                self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(n_layers - 1))
                # log-sigma embedding: random Fourier features -> one vector per hidden layer
                self.register_buffer("freqs", torch.randn(16) * 2.0)
                self.emb = nn.Sequential(nn.Linear(32, width), nn.SiLU(), nn.Linear(width, width * n_layers))
                self.out = nn.Linear(width, n_dim)
                self.width, self.n_layers = width, n_layers

            def forward(self, x, log_sigma, feature_layer: int | None = None):
                angles = log_sigma[:, None] * self.freqs[None]
                emb = self.emb(torch.cat([angles.sin(), angles.cos()], 1)).view(-1, self.n_layers, self.width)
                h = nn.functional.silu(self.inp(x) + emb[:, 0])
                if feature_layer == 0:
                    return h
                for i, layer in enumerate(self.hidden):
                    h = nn.functional.silu(layer(h) + emb[:, i + 1])
                    if feature_layer == i + 1:
                        return h
                return self.out(h)

        return _Net(n_dim, self.width, self.n_layers)

    def _precond(self, sigma):
        s2 = self.data_scale_**2
        c_skip = s2 / (s2 + sigma**2)
        c_out = sigma * self.data_scale_ / (s2 + sigma**2) ** 0.5
        c_in = 1.0 / (s2 + sigma**2) ** 0.5
        return c_skip, c_out, c_in

    def _denoise_torch(self, x, sigma):
        c_skip, c_out, c_in = self._precond(sigma[:, None])
        return c_skip * x + c_out * self.net_(c_in * x, sigma.log())

    def _loss_torch(self, x0, sigma, eps):
        c_skip, c_out, c_in = self._precond(sigma[:, None])
        denoised = self._denoise_torch(x0 + sigma[:, None] * eps, sigma)
        return (((denoised - x0) / c_out) ** 2).mean(1)

    def fit(self, x0: np.ndarray) -> TrainedDenoiser:
        """Train on clean points ``x0`` ``(N, n)``; records ``loss_history_`` (mean loss per 100 steps)."""
        import torch

        x0 = np.asarray(x0, dtype=np.float64)
        if x0.ndim != 2 or x0.shape[0] < 2 or not np.all(np.isfinite(x0)):
            raise ValueError(f"x0 must be a finite (N >= 2, n_dim) array, got shape {x0.shape}")
        self.n_dim_ = x0.shape[1]
        torch.manual_seed(self.random_state)
        self.data_scale_ = float(np.sqrt((x0**2).mean()))
        self.net_ = self._build(self.n_dim_)
        data = torch.as_tensor(x0, dtype=torch.float32)
        opt = torch.optim.Adam(self.net_.parameters(), lr=self.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.steps)
        gen = torch.Generator().manual_seed(self.random_state)
        log_lo, log_hi = np.log(self.sigma_min), np.log(self.sigma_max)
        self.loss_history_, running = [], []
        for _ in range(self.steps):
            idx = torch.randint(0, data.shape[0], (self.batch_size,), generator=gen)
            batch = data[idx]
            sigma = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(self.batch_size, generator=gen))
            eps = torch.randn(batch.shape, generator=gen)
            loss = self._loss_torch(batch, sigma, eps).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            running.append(float(loss.detach()))
            if len(running) == 100:
                self.loss_history_.append(float(np.mean(running)))
                running = []
        self.net_.eval()
        return self

    def _check_fitted(self, x: np.ndarray, sigma: float):
        if not hasattr(self, "net_"):
            raise RuntimeError("TrainedDenoiser is not fitted; call fit(x0) first")
        return _check_points(x, self.n_dim_), _check_sigma(sigma)

    def posterior_mean(self, x: np.ndarray, sigma: float) -> np.ndarray:
        """Denoised estimate ``D(x, sigma)``: ``(B, n)`` -> ``(B, n)``."""
        import torch

        x, sigma = self._check_fitted(x, sigma)
        with torch.no_grad():
            xt = torch.as_tensor(x, dtype=torch.float32)
            out = self._denoise_torch(xt, torch.full((len(x),), sigma))
        return out.double().numpy()

    def features(self, x: np.ndarray, sigma: float, layer: int = -1) -> np.ndarray:
        """Hidden activations of ``F(c_in x, log sigma)`` at hidden layer ``layer`` (0-based; negative counts
        from the last, default the last): ``(B, n)`` -> ``(B, width)``."""
        import torch

        x, sigma = self._check_fitted(x, sigma)
        if not -self.n_layers <= layer < self.n_layers:
            raise ValueError(f"layer must lie in [-{self.n_layers}, {self.n_layers}), got {layer!r}")
        layer = layer % self.n_layers
        with torch.no_grad():
            s = torch.full((len(x),), sigma)
            _, _, c_in = self._precond(s[:, None])
            h = self.net_(c_in * torch.as_tensor(x, dtype=torch.float32), s.log(), feature_layer=layer)
        return h.double().numpy()

    def denoising_loss(self, x0: np.ndarray, sigmas, random_state=0) -> np.ndarray:
        """Mean squared error ``||D(x0 + sigma eps, sigma) - x0||^2 / n`` per sigma: ``(len(sigmas),)``."""
        rng = np.random.default_rng(random_state)
        x0 = _check_points(x0, self.n_dim_)
        return np.array(
            [
                float(((self.posterior_mean(x0 + s * rng.standard_normal(x0.shape), s) - x0) ** 2).mean())
                for s in (_check_sigma(s) for s in sigmas)
            ]
        )


def copy_fraction(
    denoiser, train_points: np.ndarray, x0: np.ndarray, sigma: float, ratio: float = 1.0 / 3.0, random_state=0
) -> float:
    """Fraction of denoised fresh points that copy a training point.

    ``x0`` ``(B, n)`` are fresh clean points, noised at ``sigma`` and denoised; an output is a copy when its
    distance to the nearest training point is below ``ratio`` times the distance to the second nearest
    (the 1/3 rule used in the diffusion-memorization literature). ``train_points``: ``(N >= 2, n)``.
    """
    train_points = np.asarray(train_points, np.float64)
    if train_points.ndim != 2 or train_points.shape[0] < 2:
        raise ValueError(f"train_points must have shape (N >= 2, n), got {train_points.shape}")
    if not 0 < ratio < 1:
        raise ValueError(f"ratio must lie in (0, 1), got {ratio!r}")
    x0 = _check_points(x0, train_points.shape[1], "x0")
    rng = np.random.default_rng(random_state)
    out = denoiser.posterior_mean(x0 + sigma * rng.standard_normal(x0.shape), sigma)
    sq = (out**2).sum(1)[:, None] - 2 * out @ train_points.T + (train_points**2).sum(1)[None]
    two = np.sqrt(np.maximum(np.sort(sq, axis=1)[:, :2], 0.0))
    return float(np.mean(two[:, 0] < ratio * two[:, 1]))


def feature_probe_curve(
    model: MoLRG,
    denoiser: TrainedDenoiser,
    sigmas,
    n_eval: int = 1000,
    n_probe_train: int = 1000,
    C: float = 1.0,
    layer: int = -1,
    random_state=0,
) -> dict[str, list[float]]:
    """Linear-probe accuracy on ``denoiser.features(x0 + sigma eps, sigma, layer)`` for each sigma (fresh
    data)."""
    sigmas = [_check_sigma(s) for s in sigmas]
    rng = np.random.default_rng(random_state)
    x_eval, y_eval = model.sample(n_eval, rng)
    x_tr, y_tr = model.sample(n_probe_train, rng)
    acc = []
    for s in sigmas:
        f_tr = denoiser.features(x_tr + s * rng.standard_normal(x_tr.shape), s, layer)
        f_ev = denoiser.features(x_eval + s * rng.standard_normal(x_eval.shape), s, layer)
        acc.append(linear_probe_accuracy(f_tr, y_tr, f_ev, y_eval, C=C))
    return {"sigma": sigmas, "probe_accuracy": acc}
