"""Final-model-only training data attribution (FiMO-DA) for regression MLPs.

Wei et al., "Final-Model-Only Data Attribution with a Unifying View of Gradient-Based Methods"
(NeurIPS 2025); IBM's ``fimoda`` repository is the reference for the protocol.

Only the final trained model ``theta_f`` is available. The gold standard measures the sensitivity of the
model to instance ``i`` by *further training*: starting from ``theta_f``, train with plain SGD on the full
training set and, separately, on the set without ``i``, with the same shuffling order (the left-out
instance is deleted from each epoch's permutation, the remaining order and batch boundaries follow as in a
DataLoader). For each further-training epoch ``t`` and test instance ``z``

    gold[t, i, z] = mean over seeds of  loss(z; theta_{-i}(t)) - loss(z; theta_full(t)),

i.e. the leave-one-out effect after subtracting the full-data further-training effect. Positive values
mean that ``i`` helps ``z``. All runs of one seed (full + every left-out instance) are trained together
with ``torch.func.vmap`` (float32, as ``dattri`` requires; the effects are ~1e-3 of the loss, far above
float32 rounding).

Gradient-based approximations of the gold standard come from the ``dattri`` library (Grad-Dot, Grad-Cos,
influence functions with an explicit Hessian, CG and LiSSA inverse-Hessian products, DataInf, TRAK); they
use the final model only. Their sign convention matches the gold standard (positive = helpful).

Deviations: the explicit-Hessian influence function is restricted to the last linear layer (the full
Hessian of the 2 x 128 MLP has 3e8 entries); TRAK's output-to-loss weights ``Q`` are set to 1, its
regression form, because ``dattri``'s ``1 - p(correct)`` weighting is defined for classification.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

__all__ = [
    "make_mlp",
    "train_final_model",
    "FurtherTrainingGoldStandard",
    "sharpness",
    "ATTRIBUTION_METHODS",
    "attribution_scores",
    "agreement",
]

ATTRIBUTION_METHODS = ("grad_dot", "grad_cos", "if_explicit", "if_cg", "if_lissa", "datainf", "trak")


def _as_tensor(name: str, value, ndim: int) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(value), dtype=torch.float32)
    if tensor.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contains non-finite values")
    return tensor


def make_mlp(n_features: int, hidden: int = 128, depth: int = 2, seed: int = 0) -> nn.Sequential:
    """Float32 MLP ``n_features -> hidden (x depth, ReLU) -> 1``; maps ``(B, n_features)`` to ``(B, 1)``."""
    if n_features < 1 or hidden < 1 or depth < 1:
        raise ValueError(f"n_features, hidden, depth must be >= 1, got {n_features}, {hidden}, {depth}")
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    width = n_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers).float()


def _predict(model: nn.Module, params: dict, x: torch.Tensor) -> torch.Tensor:
    return functional_call(model, params, (x.reshape(-1, x.shape[-1]),)).reshape(-1)


def train_final_model(
    model: nn.Module, x, y, epochs: int = 1000, lr: float = 3e-2, batch_size: int = 128, seed: int = 0
) -> nn.Module:
    """Train ``model`` in place with mini-batch SGD on the mean squared error; returns it."""
    x, y = _as_tensor("x", x, 2), _as_tensor("y", y, 1)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y disagree on the number of samples: {x.shape[0]} vs {y.shape[0]}")
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=generator)
        for start in range(0, x.shape[0], batch_size):
            idx = perm[start : start + batch_size]
            loss = ((model(x[idx]).reshape(-1) - y[idx]) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


def _relu_mlp_layers(model: nn.Module) -> list[nn.Linear] | None:
    """The ``nn.Linear`` layers of ``Linear (ReLU Linear)*`` stacks (what ``make_mlp`` builds), else None."""
    if not isinstance(model, nn.Sequential) or len(model) % 2 == 0:
        return None
    for k, layer in enumerate(model):
        if not isinstance(layer, nn.Linear if k % 2 == 0 else nn.ReLU):
            return None
        if k % 2 == 0 and layer.bias is None:
            return None
    return [model[k] for k in range(0, len(model), 2)]


class _BatchedReluMlp:
    """``R`` independent copies of a ReLU MLP trained in lock-step with hand-written batched matmuls.

    About 3x faster on CPU than ``vmap(grad(functional_call))`` for the 2 x 128 MLP, which matters because
    the gold standard needs ~10^4 SGD steps of 40+ models. Weights ``(R, out, in)``, biases ``(R, out)``.
    """

    def __init__(self, layers: list[nn.Linear], n_runs: int):
        self.weights = [ly.weight.detach().float().unsqueeze(0).repeat(n_runs, 1, 1) for ly in layers]
        self.biases = [ly.bias.detach().float().unsqueeze(0).repeat(n_runs, 1) for ly in layers]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``x`` ``(R, B, d)`` -> predictions ``(R, B)`` and the inputs of every layer (``x`` and the
        post-ReLU activations)."""
        inputs, act = [], x
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            inputs.append(act)
            act = torch.baddbmm(b.unsqueeze(1), act, w.transpose(1, 2))
            if k < len(self.weights) - 1:
                act = act.relu_()
        return act.squeeze(-1), inputs

    def sgd_step(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, lr: float) -> None:
        """One SGD step per run on the masked batch mean of the squared error; ``x`` ``(R, B, d)``,
        ``y`` and ``mask`` ``(R, B)``."""
        pred, inputs = self.forward(x)
        count = mask.sum(1, keepdim=True).clamp_min(1.0)  # an empty batch of a left-out run: zero step
        delta = (2.0 * mask * (pred - y) / count).unsqueeze(-1)  # d loss / d output, (R, B, 1)
        for k in range(len(self.weights) - 1, -1, -1):
            grad_w = torch.bmm(delta.transpose(1, 2), inputs[k])
            grad_b = delta.sum(1)
            if k > 0:  # propagate before the weights change; ReLU'(z) = [a > 0], one fused pass
                delta = torch.ops.aten.threshold_backward(torch.bmm(delta, self.weights[k]), inputs[k], 0.0)
            self.weights[k].sub_(grad_w, alpha=lr)
            self.biases[k].sub_(grad_b, alpha=lr)

    def squared_errors(self, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        """Per-run test losses ``(R, n_test)`` for a shared test set ``x`` ``(n_test, d)``."""
        pred, _ = self.forward(x.unsqueeze(0).expand(self.weights[0].shape[0], -1, -1))
        return ((pred - y) ** 2).numpy()


class FurtherTrainingGoldStandard:
    """Leave-one-out further-training gold standard (see module docstring).

    Parameters
    ----------
    checkpoints: further-training epochs at which the effect is recorded (increasing, >= 1).
    n_seeds: number of shuffling orders averaged (fimoda: 100).
    lr, batch_size: SGD settings of further training (fimoda: 3e-2, 128; its final models are trained
        with a 10x larger lr, 3e-1, so further training is well inside the stable step-size range).
    paired: True (fimoda) uses common random numbers: within a seed, the full run and every left-out run
        see the same permutation (minus the left-out instance), so the ordering noise largely cancels in
        the difference. False gives every run its own permutation (only to measure what pairing buys).
    subtract_mean: subtract, per seed and test instance, the mean effect over the left-out instances
        (the paper's eq. 13; fimoda's default). This removes the part of the effect common to all removals
        (e.g. one fewer sample per epoch), which the gradient-based scores do not model.
    random_state: base seed of the shuffling orders.

    Attributes after ``fit``
    ------------------------
    effects_: ``(n_seeds, len(checkpoints), n_leave_out, n_test)``, per-seed effects.
    gold_: ``(len(checkpoints), n_leave_out, n_test)``, their mean over seeds.
    gold_se_: same shape, standard error over seeds (None for one seed).
    snr_: ``(len(checkpoints),)``, mean |gold_| / mean gold_se_ (signal-to-noise; None for one seed).
    full_test_loss_: ``(len(checkpoints), n_test)``, mean full-data test loss (to check stability).
    """

    def __init__(
        self,
        checkpoints: Sequence[int] = (1, 10, 100),
        n_seeds: int = 10,
        lr: float = 3e-2,
        batch_size: int = 128,
        random_state: int = 0,
        paired: bool = True,
        subtract_mean: bool = True,
    ):
        checkpoints = [int(c) for c in checkpoints]
        if not checkpoints or checkpoints[0] < 1 or any(b <= a for a, b in zip(checkpoints, checkpoints[1:])):
            raise ValueError(f"checkpoints must be strictly increasing epochs >= 1, got {checkpoints}")
        if n_seeds < 1 or batch_size < 1 or not lr > 0:
            raise ValueError(f"need n_seeds >= 1, batch_size >= 1, lr > 0; got {n_seeds}, {batch_size}, {lr}")
        self.checkpoints, self.n_seeds, self.lr = checkpoints, int(n_seeds), float(lr)
        self.batch_size, self.random_state = int(batch_size), random_state
        self.paired, self.subtract_mean = bool(paired), bool(subtract_mean)

    @staticmethod
    def _orders(perm: np.ndarray, leave_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row 0: the full run's permutation; row 1 + j: the permutation of left-out run ``j`` without
        ``leave_out[j]``, padded at the end. ``perm`` is one permutation ``(n,)`` shared by all runs
        (paired) or one per run ``(1 + L, n)``. Returns indices and a 0/1 mask, both ``(1 + L, n)``."""
        rows = perm if perm.ndim == 2 else np.tile(perm, (1 + leave_out.size, 1))
        keep = np.ones_like(rows, dtype=bool)
        keep[1:] = rows[1:] != leave_out[:, None]
        order = np.argsort(~keep, axis=1, kind="stable")  # kept entries first, original order preserved
        return np.take_along_axis(rows, order, 1), np.take_along_axis(keep, order, 1)

    def fit(
        self, model: nn.Module, x_train, y_train, x_test, y_test, leave_out
    ) -> FurtherTrainingGoldStandard:
        """Run the further-training experiments from the (final) ``model``; the model is not modified."""
        x_train, y_train = _as_tensor("x_train", x_train, 2), _as_tensor("y_train", y_train, 1)
        x_test, y_test = _as_tensor("x_test", x_test, 2), _as_tensor("y_test", y_test, 1)
        n = x_train.shape[0]
        if y_train.shape[0] != n or y_test.shape[0] != x_test.shape[0]:
            raise ValueError("x and y of the train or test split disagree on the number of samples")
        leave_out = np.asarray(leave_out, dtype=np.int64)
        if leave_out.ndim != 1 or leave_out.size == 0 or leave_out.min() < 0 or leave_out.max() >= n:
            raise ValueError(f"leave_out must be a non-empty 1-D array of indices in [0, {n})")
        if np.unique(leave_out).size != leave_out.size:
            raise ValueError("leave_out contains duplicate indices")
        n_runs = 1 + leave_out.size
        layers = _relu_mlp_layers(model)

        effects = np.zeros((self.n_seeds, len(self.checkpoints), leave_out.size, x_test.shape[0]))
        full_loss = np.zeros((self.n_seeds, len(self.checkpoints), x_test.shape[0]))
        for s in tqdm(range(self.n_seeds), desc="further-training seeds", leave=False):
            rng = np.random.default_rng([self.random_state, s])
            runner = _BatchedReluMlp(layers, n_runs) if layers is not None else _VmapRuns(model, n_runs)
            epoch = 0
            for c, checkpoint in enumerate(self.checkpoints):
                while epoch < checkpoint:
                    perm = (
                        rng.permutation(n)
                        if self.paired
                        else rng.permuted(np.tile(np.arange(n), (n_runs, 1)), axis=1)
                    )
                    idx, mask = self._orders(perm, leave_out)
                    idx_t, mask_t = torch.from_numpy(idx), torch.from_numpy(mask).to(torch.float32)
                    for start in range(0, n, self.batch_size):
                        cols = slice(start, start + self.batch_size)
                        batch_idx = idx_t[:, cols]
                        runner.sgd_step(x_train[batch_idx], y_train[batch_idx], mask_t[:, cols], self.lr)
                    epoch += 1
                with torch.no_grad():
                    losses = runner.squared_errors(x_test, y_test)  # (n_runs, n_test)
                full_loss[s, c] = losses[0]
                effects[s, c] = losses[1:] - losses[0]
        if self.subtract_mean:
            effects -= effects.mean(axis=2, keepdims=True)
        self.effects_ = effects
        self.gold_ = effects.mean(axis=0)
        if self.n_seeds > 1:
            self.gold_se_ = effects.std(axis=0, ddof=1) / np.sqrt(self.n_seeds)
            self.snr_ = np.abs(self.gold_).mean(axis=(1, 2)) / self.gold_se_.mean(axis=(1, 2))
        else:
            self.gold_se_, self.snr_ = None, None
        self.full_test_loss_ = full_loss.mean(axis=0)
        self.leave_out_ = leave_out
        return self


class _VmapRuns:
    """Generic fallback of ``_BatchedReluMlp`` for any module: ``vmap`` over ``functional_call``."""

    def __init__(self, model: nn.Module, n_runs: int):
        self.model = model
        base = {k: v.detach().to(torch.float32) for k, v in model.named_parameters()}
        self.params = {k: v.unsqueeze(0).repeat(n_runs, *([1] * v.ndim)).clone() for k, v in base.items()}

        def batch_loss(params, xb, yb, mb):
            residual = _predict(model, params, xb) - yb
            return (mb * residual**2).sum() / mb.sum().clamp_min(1.0)

        self._grad = vmap(grad(batch_loss))

    def sgd_step(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, lr: float) -> None:
        grads = self._grad(self.params, x, y, mask)
        self.params = {k: self.params[k] - lr * grads[k] for k in self.params}

    def squared_errors(self, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        return vmap(lambda p: (_predict(self.model, p, x) - y) ** 2)(self.params).numpy()


def sharpness(model: nn.Module, x, y, iterations: int = 100, seed: int = 0) -> float:
    """Largest Hessian eigenvalue of the full-batch mean squared error at ``model``'s parameters
    (power iteration on Hessian-vector products). Gradient descent with step ``lr`` is stable near a
    minimum only if this is below ``2 / lr``; a final model near that edge oscillates when trained further.
    """
    x, y = _as_tensor("x", x, 2), _as_tensor("y", y, 1)
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p):
        return ((_predict(model, p, x) - y) ** 2).mean()

    generator = torch.Generator().manual_seed(seed)
    vec = {k: torch.randn(v.shape, generator=generator) for k, v in params.items()}
    eigenvalue = 0.0
    for _ in range(iterations):
        norm = torch.sqrt(sum((v**2).sum() for v in vec.values()))
        vec = {k: v / norm for k, v in vec.items()}
        _, hvp = torch.func.jvp(grad(loss), (params,), (vec,))
        eigenvalue = float(sum((hvp[k] * vec[k]).sum() for k in vec))  # Rayleigh quotient
        vec = hvp
    return eigenvalue


def _dattri_task(model: nn.Module):
    from dattri.task import AttributionTask

    def loss_func(params, data):
        x, y = data
        return ((_predict(model, params, x) - y.reshape(-1)) ** 2).mean()

    checkpoint = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return AttributionTask(loss_func=loss_func, model=model, checkpoints=checkpoint)


def attribution_scores(
    method: str,
    model: nn.Module,
    x_train,
    y_train,
    x_test,
    y_test,
    leave_out,
    damping: float = 1e-3,
    cg_iterations: int = 50,
    lissa_depth: int = 500,
    lissa_scaling: float = 50.0,
    lissa_batch: int = 32,
    trak_dim: int = 512,
) -> np.ndarray:
    """Scores ``(n_leave_out, n_test)`` of one ``dattri`` method on the final ``model``.

    ``method`` is one of ``ATTRIBUTION_METHODS``. ``damping`` is added to the Hessian / Fisher (``lambda I``)
    of the inverse-Hessian methods and to TRAK's kernel. Scores of the influence methods approximate
    ``g_test^T H^{-1} g_i`` (positive = helpful); ``grad_cos`` is the cosine of the two gradients.
    """
    if method not in ATTRIBUTION_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {ATTRIBUTION_METHODS}")
    from dattri.algorithm.influence_function import (
        IFAttributorCG,
        IFAttributorDataInf,
        IFAttributorExplicit,
        IFAttributorLiSSA,
    )
    from dattri.algorithm.tracin import TracInAttributor
    from dattri.algorithm.trak import TRAKAttributor

    x_train, y_train = _as_tensor("x_train", x_train, 2), _as_tensor("y_train", y_train, 1)
    x_test, y_test = _as_tensor("x_test", x_test, 2), _as_tensor("y_test", y_test, 1)
    leave_out = torch.as_tensor(np.asarray(leave_out, dtype=np.int64))
    task = _dattri_task(model)
    n_train = x_train.shape[0]
    full_loader = DataLoader(TensorDataset(x_train, y_train), batch_size=n_train, shuffle=False)
    subset_loader = DataLoader(
        TensorDataset(x_train[leave_out], y_train[leave_out]), batch_size=len(leave_out), shuffle=False
    )
    test_loader = DataLoader(TensorDataset(x_test, y_test), batch_size=x_test.shape[0], shuffle=False)
    last_layer = [name for name, _ in model.named_parameters()][-2:]

    if method in ("grad_dot", "grad_cos"):
        # A single final checkpoint with unit weight turns TracIn into Grad-Dot / Grad-Cos.
        attributor = TracInAttributor(
            task=task,
            weight_list=torch.ones(1, dtype=torch.float32),
            normalized_grad=method == "grad_cos",
            projector_kwargs=None,
        )
        attributor.projector_kwargs = None  # no random projection: exact gradients
        return attributor.attribute(subset_loader, test_loader).detach().numpy()
    if method == "if_explicit":
        attributor = IFAttributorExplicit(task=task, layer_name=last_layer, regularization=damping)
    elif method == "if_cg":
        attributor = IFAttributorCG(task=task, max_iter=cg_iterations, regularization=damping)
    elif method == "if_lissa":
        attributor = IFAttributorLiSSA(
            task=task,
            recursion_depth=lissa_depth,
            damping=damping,
            scaling=lissa_scaling,
            batch_size=lissa_batch,
        )
    elif method == "datainf":
        attributor = IFAttributorDataInf(task=task, regularization=damping)
    else:
        attributor = TRAKAttributor(
            task=task,
            correct_probability_func=lambda params, data: torch.zeros((), dtype=torch.float32),
            projector_kwargs={
                "proj_dim": trak_dim,
                "proj_max_batch_size": 32,
                "proj_seed": 0,
                "device": "cpu",
            },
            regularization=damping,
        )
        attributor.cache(full_loader)
        # TRAK scores the cached training set; keep the rows of the left-out instances.
        return attributor.attribute(test_loader).detach().numpy()[leave_out.numpy()]
    attributor.cache(full_loader)
    return attributor.attribute(subset_loader, test_loader).detach().numpy()


def agreement(scores: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """Agreement of ``scores`` with ``gold`` (both ``(n_leave_out, n_test)``): per test instance, the cosine
    similarity and Spearman correlation across left-out instances, averaged over test instances;
    ``cosine_se`` is the standard error of that average over test instances (fimoda's error band)."""
    scores, gold = np.asarray(scores, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    if scores.shape != gold.shape or scores.ndim != 2:
        raise ValueError(f"scores and gold must be 2-D of equal shape, got {scores.shape}, {gold.shape}")
    norms = np.linalg.norm(scores, axis=0) * np.linalg.norm(gold, axis=0)
    cosine = np.sum(scores * gold, axis=0) / np.where(norms > 0, norms, np.nan)
    rho = [spearmanr(scores[:, j], gold[:, j]).statistic for j in range(gold.shape[1])]
    finite = cosine[np.isfinite(cosine)]
    cosine_se = float(finite.std(ddof=1) / np.sqrt(finite.size)) if finite.size > 1 else float("nan")
    return {"cosine": float(np.nanmean(cosine)), "cosine_se": cosine_se, "spearman": float(np.nanmean(rho))}
