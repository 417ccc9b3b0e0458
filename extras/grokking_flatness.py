"""Relative flatness vs neural collapse along grokking on modular addition.

Han, Adilova, Petzka, Kleesiek, Kamp, "Flatness is Necessary, Neural Collapse is Not: Rethinking
Generalization via Grokking" (NeurIPS 2025).

Model: a one-hidden-layer MLP on learned token embeddings, ``(a, b) -> phi = relu(W1 [E_a; E_b] + b1)``
(penultimate features, ``h``-dimensional) ``-> logits = W phi`` (``W``: ``p x h``, no bias), trained
full-batch with AdamW on softmax cross-entropy for ``(a + b) mod p``. :class:`ModularTransformer` is the
paper's setting: a small pre-norm transformer (1 or 2 layers) on the sequence ``a, b, =``, whose
penultimate features are the final-normed residual stream at ``=`` and whose head is a bias-free unembedding
(``GrokkingConfig(architecture="transformer")``).

Metrics, all on the training split:

* relative flatness of the last layer (Petzka et al.): ``kappa = sum_{s,s'} <w_s, w_s'> Tr(H_{s,s'})`` with
  ``H`` the Hessian of the mean loss with respect to ``W``. For softmax cross-entropy
  ``H_{s,s'} = mean_x (diag p - p p^T)_{s s'} phi phi^T``, hence
  ``kappa = mean_x ||phi||^2 Tr(W W^T (diag p - p p^T))``;
* the upper bound ``||W||_F^2 * mean_x ||phi||^2 sum_k p_k (1 - p_k)`` that the authors compute
  (it bounds kappa because the eigenvalues of ``diag p - p p^T`` are at most ``sum_k p_k (1 - p_k)``);
* neural-collapse clustering ("NCC", Galanti et al.; the authors' ``compute_cluster``): mean over pairs of
  the classes present of ``(V_c + V_c') / (2 ||mu_c - mu_c'||^2)``, ``mu_c`` the class mean of the raw
  features ``phi`` and ``V_c`` the mean squared distance of a class's features to ``mu_c`` (a class seen once
  has ``V_c = 0``). Small = collapsed.

Regularisers, as the paper (and the authors' code) defines them: linear terms on the training batch's
penultimate features, nothing detached, no clipping, on from the first step to the end:
``loss - lambda * NCC`` (anti-collapse; the authors use it on ResNet-18 / CIFAR-10 with SGD, lambda = 1e-3,
and report that lambda = 1e-2 breaks training), ``loss + lambda * NCC`` (collapse: the sign-flipped mirror;
the authors' code has no such term) and ``loss - lambda * kappa`` (anti-flatness; the authors' code
penalises the upper bound above rather than kappa itself).

Our additions: ``regularizer_from`` / ``regularizer_until`` delay or end a regulariser; ``reg_cap`` clamps the
metric from above (``-lambda * min(NCC, cap)`` is bounded); ``nc_detach_distances`` stops the gradient
through the class-mean distances; ``reg_form="log"`` uses ``log(NC)`` / ``log(kappa)``. Both metrics are
unbounded above, and with AdamW the linear anti-collapse term either does nothing or runs away.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

__all__ = [
    "modular_addition_split",
    "ModularMLP",
    "ModularTransformer",
    "relative_flatness",
    "flatness_upper_bound",
    "collapse_metric",
    "GrokkingConfig",
    "train_grokking",
]


def modular_addition_split(p: int, train_fraction: float, seed: int = 0):
    """All pairs ``(a, b)`` in ``Z_p^2`` with labels ``(a + b) mod p``, split at random.

    Returns ``(x_train, y_train, x_val, y_val)``: long tensors of shapes ``(n, 2)`` and ``(n,)``.
    """
    if not isinstance(p, int) or p < 3:
        raise ValueError(f"p must be an integer >= 3, got {p!r}")
    if not (0.0 < train_fraction < 1.0):
        raise ValueError(f"train_fraction must lie in (0, 1), got {train_fraction!r}")
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    x = torch.stack([a.reshape(-1), b.reshape(-1)], dim=1)
    y = (x[:, 0] + x[:, 1]) % p
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(seed))
    n_train = int(round(train_fraction * p * p))
    train, val = perm[:n_train], perm[n_train:]
    return x[train], y[train], x[val], y[val]


class ModularMLP(nn.Module):
    """``(n, 2)`` token pairs -> ``(n, p)`` logits; ``features`` gives the penultimate ``(n, hidden)``."""

    def __init__(self, p: int, embed_dim: int = 128, hidden: int = 128, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(p, embed_dim)
        self.hidden = nn.Linear(2 * embed_dim, hidden)
        self.head = nn.Linear(hidden, p, bias=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.hidden(self.embed(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ModularTransformer(nn.Module):
    """Pre-norm transformer on ``(a, b, =)``: ``(n, 2)`` pairs -> ``(n, p)`` logits.

    ``features`` is the layer-normed residual stream at the ``=`` position, ``(n, d_model)``; the head is a
    bias-free linear unembedding, so :func:`relative_flatness` applies to it as to the MLP's head.
    """

    def __init__(
        self,
        p: int,
        d_model: int = 128,
        n_heads: int = 4,
        n_layers: int = 1,
        d_mlp: int = 512,
        seed: int = 0,
    ):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        torch.manual_seed(seed)
        self.p = p
        self.embed = nn.Embedding(p + 1, d_model)  # token p is "="
        self.position = nn.Parameter(torch.randn(3, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, d_mlp, dropout=0.0, activation="relu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, p, bias=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        equals = torch.full((x.shape[0], 1), self.p, dtype=x.dtype, device=x.device)
        tokens = torch.cat([x, equals], dim=1)  # (n, 3)
        hidden = self.blocks(self.embed(tokens) + self.position)
        return self.norm(hidden[:, -1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _check_features(features: torch.Tensor, weight: torch.Tensor) -> None:
    if features.ndim != 2 or weight.ndim != 2 or weight.shape[1] != features.shape[1]:
        raise ValueError(
            f"need features (n, h) and weight (classes, h), got {tuple(features.shape)} and "
            f"{tuple(weight.shape)}"
        )


def relative_flatness(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Last-layer relative flatness ``mean ||phi||^2 Tr(W W^T (diag p - p p^T))`` (differentiable).

    features: ``(n, h)``; weight: ``(classes, h)``. Returns a scalar tensor.
    """
    _check_features(features, weight)
    probs = torch.softmax(features @ weight.T, dim=1)  # (n, C)
    gram = weight @ weight.T  # (C, C)
    # Tr(G (diag p - p p^T)) = sum_s G_ss p_s - p^T G p, per sample
    trace = probs @ torch.diagonal(gram) - torch.einsum("ns,st,nt->n", probs, gram, probs)
    return (features.pow(2).sum(1) * trace).mean()


def flatness_upper_bound(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``||W||_F^2 * mean_x ||phi||^2 sum_k p_k (1 - p_k)``; shapes as in :func:`relative_flatness`."""
    _check_features(features, weight)
    probs = torch.softmax(features @ weight.T, dim=1)
    spread = (probs * (1 - probs)).sum(1)
    return weight.pow(2).sum() * (features.pow(2).sum(1) * spread).mean()


def collapse_metric(
    features: torch.Tensor, labels: torch.Tensor, n_classes: int, detach_distances: bool = False
) -> torch.Tensor:
    """Class-distance-normalised variance ("NCC"), differentiable, as the authors compute it.

    Mean over ordered pairs ``c != c'`` of the classes present in ``labels`` of
    ``(V_c + V_c') / (2 ||mu_c - mu_c'||^2)`` on the raw (un-normalised) features, no detach anywhere, with
    ``V_c`` the mean squared distance of class ``c``'s features to their mean ``mu_c``. A class with a single
    sample counts with ``V_c = 0`` (as in the authors' code, which evaluates it per mini-batch).

    ``detach_distances=True`` (our variant, not the authors') stops the gradient through the class-mean
    distances, so that as a regulariser the metric can only move the within-class spread: ``-lambda * NCC``
    can then not grow by merging class means, the route by which it breaks training.

    features: ``(n, h)``; labels: ``(n,)`` in ``[0, n_classes)``. Returns a scalar tensor (small = collapsed).
    """
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(
            f"need features (n, h) and labels (n,), got {tuple(features.shape)}, {tuple(labels.shape)}"
        )
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes})")
    counts = torch.bincount(labels, minlength=n_classes).to(features.dtype)
    present = counts >= 1
    if int(present.sum()) < 2:
        raise ValueError("collapse_metric needs at least two classes present")
    sums = torch.zeros(n_classes, features.shape[1], dtype=features.dtype).index_add_(0, labels, features)
    all_means = sums / counts.clamp_min(1.0)[:, None]
    # squared distances to the own class mean (not E||phi||^2 - ||mu||^2, which cancels catastrophically)
    sq = torch.zeros(n_classes, dtype=features.dtype).index_add_(
        0, labels, (features - all_means[labels]).pow(2).sum(1)
    )
    means = all_means[present]
    variances = sq[present] / counts[present]
    # squared distances from the difference, not torch.cdist: cdist's backward is NaN at zero distance
    diff = means[:, None, :] - means[None, :, :]
    dist = diff.pow(2).sum(-1)
    if detach_distances:
        dist = dist.detach()
    rows, cols = torch.triu_indices(means.shape[0], means.shape[0], offset=1)
    # the ratio is symmetric in (c, c'), so the mean over unordered pairs equals the authors' ordered mean
    ratio = (variances[rows] + variances[cols]) / (2 * dist[rows, cols].clamp_min(1e-12))
    return ratio.mean()


@dataclass
class GrokkingConfig:
    """One grokking run.

    ``regularizer``: ``None``, ``"collapse"``, ``"anti_collapse"`` or ``"anti_flatness"``, active for
    ``regularizer_from <= step < regularizer_until`` (the paper: from step 0 to the end, the defaults).
    ``stop_after_generalized``: if set, stop this many steps after the first logged step with validation
    accuracy ``>= generalized_acc`` (saves time in sweeps that only need the generalisation step).
    ``abort_below_train_acc``: if set, stop at the first logged step ``>= abort_after`` whose training
    accuracy is below it (a run the regulariser has broken; it would not recover in the budget).
    """

    p: int = 59
    train_fraction: float = 0.4
    embed_dim: int = 128
    hidden: int = 128
    lr: float = 1e-3
    weight_decay: float = 1.0
    steps: int = 3000
    log_every: int = 50
    regularizer: str | None = None
    reg_strength: float = 0.0
    regularizer_until: int | None = None
    regularizer_from: int = 0
    reg_form: str = "linear"
    nc_detach_distances: bool = False
    reg_cap: float | None = None
    architecture: str = "mlp"
    n_layers: int = 1
    n_heads: int = 4
    adam_beta2: float = 0.999
    grad_clip: float | None = None
    stop_after_generalized: int | None = None
    generalized_acc: float = 0.9
    abort_below_train_acc: float | None = None
    abort_after: int = 1000
    seed: int = 0

    def __post_init__(self):
        if self.regularizer not in (None, "collapse", "anti_collapse", "anti_flatness"):
            raise ValueError(
                "regularizer must be None, 'collapse', 'anti_collapse' or 'anti_flatness', "
                f"got {self.regularizer!r}"
            )
        if self.architecture not in ("mlp", "transformer"):
            raise ValueError(f"architecture must be 'mlp' or 'transformer', got {self.architecture!r}")
        if self.n_layers < 1 or self.n_heads < 1:
            raise ValueError(f"n_layers and n_heads must be >= 1, got {self.n_layers}, {self.n_heads}")
        if not 0.0 <= self.adam_beta2 < 1.0:
            raise ValueError(f"adam_beta2 must lie in [0, 1), got {self.adam_beta2}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip}")
        if self.reg_form not in ("linear", "log"):
            raise ValueError(f"reg_form must be 'linear' or 'log', got {self.reg_form!r}")
        if self.steps < 1 or self.log_every < 1:
            raise ValueError(f"steps and log_every must be >= 1, got {self.steps}, {self.log_every}")
        if self.reg_cap is not None and not self.reg_cap > 0:
            raise ValueError(f"reg_cap must be positive or None, got {self.reg_cap}")
        if self.regularizer_from < 0:
            raise ValueError(f"regularizer_from must be >= 0, got {self.regularizer_from}")
        if self.reg_strength < 0:
            raise ValueError(f"reg_strength must be >= 0, got {self.reg_strength}")
        if self.stop_after_generalized is not None and self.stop_after_generalized < 0:
            raise ValueError(
                f"stop_after_generalized must be >= 0 or None, got {self.stop_after_generalized}"
            )
        if not 0.0 < self.generalized_acc <= 1.0:
            raise ValueError(f"generalized_acc must lie in (0, 1], got {self.generalized_acc}")


def train_grokking(config: GrokkingConfig, progress: bool = False) -> dict:
    """Train one model; returns the config, logged curves (step, accuracies, losses, metrics) and the CPU
    seconds of this process spent on it."""
    cpu_start = time.process_time()
    x_tr, y_tr, x_va, y_va = modular_addition_split(config.p, config.train_fraction, config.seed)
    if config.architecture == "transformer":
        model = ModularTransformer(
            config.p,
            d_model=config.embed_dim,
            n_heads=config.n_heads,
            n_layers=config.n_layers,
            d_mlp=4 * config.embed_dim,
            seed=config.seed,
        )
    else:
        model = ModularMLP(config.p, config.embed_dim, config.hidden, config.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.lr,
        betas=(0.9, config.adam_beta2),
        weight_decay=config.weight_decay,
    )
    until = config.steps if config.regularizer_until is None else config.regularizer_until
    log: dict[str, list] = {
        k: []
        for k in (
            "step",
            "train_acc",
            "val_acc",
            "train_loss",
            "val_loss",
            "flatness",
            "flatness_bound",
            "collapse",
        )
    }
    steps = tqdm(range(config.steps + 1), desc="grokking", disable=not progress, leave=False)
    stop_at = config.steps
    for step in steps:
        feats = model.features(x_tr)
        logits = feats @ model.head.weight.T
        loss = F.cross_entropy(logits, y_tr)
        if step % config.log_every == 0 or step == stop_at:
            with torch.no_grad():
                model.eval()  # no dropout anywhere; eval() only skips the encoder's training-mode checks
                val_logits = model(x_va)
                model.train()
                log["step"].append(step)
                log["train_acc"].append(float((logits.argmax(1) == y_tr).float().mean()))
                log["val_acc"].append(float((val_logits.argmax(1) == y_va).float().mean()))
                log["train_loss"].append(float(loss))
                log["val_loss"].append(float(F.cross_entropy(val_logits, y_va)))
                log["flatness"].append(float(relative_flatness(feats, model.head.weight)))
                log["flatness_bound"].append(float(flatness_upper_bound(feats, model.head.weight)))
                log["collapse"].append(float(collapse_metric(feats, y_tr, config.p)))
                if (
                    config.stop_after_generalized is not None
                    and stop_at == config.steps
                    and log["val_acc"][-1] >= config.generalized_acc
                ):
                    # the logging condition above also logs the stopping step itself
                    stop_at = min(config.steps, step + config.stop_after_generalized)
                if (
                    config.abort_below_train_acc is not None
                    and step >= config.abort_after
                    and log["train_acc"][-1] < config.abort_below_train_acc
                ):
                    stop_at = step
        if step == stop_at:
            break
        objective = loss
        active = config.regularizer_from <= step < until
        if config.regularizer is not None and active and config.reg_strength > 0:
            if config.regularizer in ("collapse", "anti_collapse"):
                metric = collapse_metric(feats, y_tr, config.p, config.nc_detach_distances)
            else:
                metric = relative_flatness(feats, model.head.weight)
            if config.reg_cap is not None:
                # bounded variant: no gradient once the metric is above the cap, so -lambda * metric
                # cannot run away (our addition)
                metric = metric.clamp_max(config.reg_cap)
            if config.reg_form == "log":
                metric = torch.log(metric.clamp_min(1e-12))
            sign = 1.0 if config.regularizer == "collapse" else -1.0
            objective = loss + sign * config.reg_strength * metric
        optimizer.zero_grad()
        objective.backward()
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
    return {"config": asdict(config), **log, "cpu_seconds": time.process_time() - cpu_start}


def first_step_reaching(log: dict, key: str, threshold: float) -> int | None:
    """First logged step at which ``log[key] >= threshold`` (``None`` if never)."""
    for step, value in zip(log["step"], log[key]):
        if value >= threshold:
            return int(step)
    return None


def as_numpy(log: dict, key: str) -> np.ndarray:
    return np.asarray(log[key], dtype=np.float64)
