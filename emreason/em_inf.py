"""EM-INF: inference-time entropy minimization of next-token logits, and the adaptive-temperature baseline.

EM-INF (Agarwal et al., "The Unreasonable Effectiveness of Entropy Minimization in LLM Reasoning") treats
one decoding step's logits ``z`` as free parameters and lowers their entropy with a few Adam steps before
sampling; the model's weights never change. Per row, independently::

    z <- float32 logits; p0 = softmax(z)
    repeat up to `steps` times:
        p = softmax(z); H = -sum p log p
        if H < threshold: stop (this row only)
        loss = H + kl_weight * KL(p0 || p)
        one Adam step on z (betas 0.9/0.999, eps 1e-8, learning rate lr)
    return z

The request's own temperature / top-p / top-k apply afterwards. The authors' released code sums the
entropy over the batch, which is only right at batch size 1 (how they ran it); here every row is its own
problem, with its own parameters. Gradients are closed-form, so everything runs under
``torch.inference_mode()``::

    dH/dz_i          = -p_i (log p_i + H)
    dKL(p0||p)/dz_i  = p_i - p0_i

Units: entropies and thresholds are in nats. Masked tokens (``-inf``) stay ``-inf``; a row holding NaN or
``+inf``, or only ``-inf``, is returned unchanged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch

from emreason import em_inf_fused
from emreason.entropy import token_entropy

__all__ = [
    "EMInfConfig",
    "AdaptiveTemperatureConfig",
    "minimize_entropy",
    "adaptive_temperature",
    "valid_rows",
    "EMInfWorkspace",
    "bisection_iterations",
    "CHECK_EVERY",
]

_BETA1 = 0.9
_BETA2 = 0.999
_ADAM_EPS = 1e-8


@dataclass(frozen=True)
class EMInfConfig:
    """EM-INF hyper-parameters (defaults: the authors' evaluation script).

    The paper's text recommends 5-15 steps and ``0.1 < threshold < 0.5``; the released evaluation script
    uses ``steps=3, lr=0.1, threshold=0.3, kl_weight=0.05``.

    Attributes:
        steps: maximum Adam steps per row (>= 0; 0 disables the row).
        lr: Adam learning rate, in logit units per step (> 0).
        threshold: a row stops as soon as its entropy falls below this (nats, >= 0).
        kl_weight: weight of ``KL(p0 || p)``, which keeps ``p`` near the model's own distribution (>= 0).
    """

    steps: int = 3
    lr: float = 0.1
    threshold: float = 0.3
    kl_weight: float = 0.05

    def __post_init__(self) -> None:
        validate_em_inf_params(**asdict(self))

    def replace(self, **overrides) -> EMInfConfig:
        """A copy with ``overrides`` applied (unknown names raise TypeError)."""
        unknown = set(overrides) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"unknown EMInfConfig field(s): {sorted(unknown)}")
        return EMInfConfig(**{**asdict(self), **overrides})


def validate_em_inf_params(steps, lr, threshold, kl_weight) -> None:
    """Raise TypeError/ValueError naming the first bad EM-INF scalar parameter."""
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an int, got {steps!r}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    for name, value, low_ok in (
        ("lr", lr, False),
        ("threshold", threshold, True),
        ("kl_weight", kl_weight, True),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value) or value < 0 or (value == 0 and not low_ok):
            raise ValueError(f"{name} must be {'>= 0' if low_ok else '> 0'} and finite, got {value!r}")


class EMInfWorkspace:
    """Reusable scratch memory for `minimize_entropy`: five ``[B, V]`` buffers in one block that grows as
    needed. Not thread-safe: give each concurrent caller its own."""

    _COUNT = 5

    def __init__(self) -> None:
        self._storage: torch.Tensor | None = None

    def buffers(
        self, shape: torch.Size, dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, ...]:
        numel = self._COUNT * shape[0] * shape[1]
        storage = self._storage
        stale = (
            storage is None or storage.numel() < numel or storage.dtype != dtype or storage.device != device
        )
        # Inference tensors cannot be written outside inference mode (e.g. created in vLLM, used by HF).
        if stale or (storage.is_inference() and not torch.is_inference_mode_enabled()):
            storage = self._storage = torch.empty(numel, dtype=dtype, device=device)
        return storage[:numel].view(self._COUNT, *shape).unbind(0)


def valid_rows(logits: torch.Tensor) -> torch.Tensor:
    """``[B]`` bool: rows with no NaN or ``+inf`` and at least one finite entry (``-inf`` is a mask)."""
    if logits.shape[-1] == 0:
        return torch.zeros(logits.shape[:-1], dtype=torch.bool, device=logits.device)
    # One reduction instead of several element-wise passes: the row max is NaN if any entry is NaN (amax
    # propagates NaN), +inf if any entry is +inf, and -inf only if every entry is -inf.
    return torch.isfinite(logits.amax(dim=-1))


def _per_row_checked(
    value, name: str, batch: int, dtype: torch.dtype, device: torch.device, *, skip: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A per-row ``[B]`` parameter tensor; Python scalars are checked on the host (no device sync). With
    ``skip``, no check on the host: ``(tensor, ok)`` where ``ok`` is a ``[B]`` bool
    tensor of the rows whose value is finite and >= 0 (None: all are), and bad values are replaced by 0
    so they cannot leak NaN into the arithmetic of the other rows' buffers."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        good = math.isfinite(value) and value >= 0
        if not good and not skip:
            raise ValueError(f"{name} must be finite and >= 0 in every row, got {value}")
        tensor = torch.full((batch,), float(value) if good else 0.0, dtype=dtype, device=device)
        return tensor, None if good else torch.zeros(batch, dtype=torch.bool, device=device)
    tensor = torch.as_tensor(value, dtype=dtype, device=device)
    if tensor.ndim == 0:
        tensor = tensor.expand(batch)
    if tensor.shape != (batch,):
        raise ValueError(f"{name} must be a scalar or have shape [{batch}], got shape {tuple(tensor.shape)}")
    good = torch.isfinite(tensor) & (tensor >= 0)
    if not skip:
        if not bool(good.all()):
            raise ValueError(f"{name} must be finite and >= 0 in every row, got {tensor.tolist()}")
        return tensor, None
    return torch.where(good, tensor, torch.zeros((), dtype=dtype, device=device)), good


def _all_ok(masks) -> torch.Tensor | None:
    """AND of the non-None ``[B]`` masks (None when there are none)."""
    out = None
    for mask in masks:
        if mask is not None:
            out = mask if out is None else out & mask
    return out


def _check_logits(logits) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape [B, V], got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got {logits.dtype}")


@torch.no_grad()
def minimize_entropy(
    logits: torch.Tensor,
    config: EMInfConfig | None = None,
    *,
    steps: int | torch.Tensor | None = None,
    lr: float | torch.Tensor | None = None,
    threshold: float | torch.Tensor | None = None,
    kl_weight: float | torch.Tensor | None = None,
    workspace: EMInfWorkspace | None = None,
    max_steps: int | None = None,
    early_exit: bool = True,
    invalid_params: str = "raise",
    out: torch.Tensor | None = None,
    fused: str | bool | None = None,
    fused_fallback: bool = True,
) -> torch.Tensor:
    """EM-INF on a batch of next-token logits, each row with its own parameters.

    Args:
        logits: ``[B, V]`` logits (any float dtype; not modified). ``-inf`` entries are masked tokens.
        config: defaults for every row (``EMInfConfig()`` when None).
        steps, lr, threshold, kl_weight: optional per-row overrides, each a scalar or a ``[B]`` tensor;
            ``steps == 0`` leaves a row untouched.
        workspace: scratch memory to reuse across calls (as the integrations do, one per processor);
            saves re-faulting five fresh ``[B, V]`` buffers into memory at every decoding step.
        max_steps: a host-side bound on every row's steps (rows asking more run ``max_steps``). Without
            it, per-row ``steps`` given as a tensor cost one device-to-host read of their maximum.
        early_exit: stop the loop as soon as every row has stopped, which reads a flag back from the
            device once per step and, for ``-inf`` masks and broken rows, once per call. ``False`` runs
            the full step count with masks instead and reads nothing back from the device: the call never
            synchronises (what a serving engine wants); results are the same.
        invalid_params: ``"raise"`` (ValueError naming the parameter) or ``"skip"``: a row whose parameter
            is NaN, infinite or negative, or whose result is not finite, is returned unchanged (upcast);
            nothing is checked on the host.
        out: optional ``[B, V]`` tensor of the result dtype to write the result into (not ``logits``).
        fused: run the Adam steps in two fused passes per step (`emreason.em_inf_fused`): ``"compile"``
            (torch.compile), ``"triton"`` (CUDA), ``"auto"``/True, ``"off"``/False; None (default) reads
            the ``EMREASON_EM_INF_FUSED`` environment variable, which defaults to off. Same results up to
            float rounding; the first call of each kind may compile for tens of seconds.
        fused_fallback: when the fused backend cannot run, warn once and use the eager loop (default);
            False raises `emreason.em_inf_fused.FusedUnavailable` instead.

    Returns:
        ``[B, V]`` optimized logits, float32 (float64 for float64 input): ``out``, or a new tensor. Masked
        entries are still ``-inf``; rows with NaN / ``+inf`` / only ``-inf`` are returned as they came
        (upcast).

    Memory: the returned ``[B, V]`` tensor plus five ``[B, V]`` workspace buffers (p0, Adam's two moments,
    two scratch), and with ``early_exit=False`` a ``[B, V]`` bool mask; the loop allocates only
    ``[B]``-sized tensors.
    """
    _check_logits(logits)
    if invalid_params not in ("raise", "skip"):
        raise ValueError(f"invalid_params must be 'raise' or 'skip', got {invalid_params!r}")
    if max_steps is not None and (
        isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0
    ):
        raise ValueError(f"max_steps must be an int >= 0, got {max_steps!r}")
    skip = invalid_params == "skip"
    config = config or EMInfConfig()
    batch, _ = logits.shape
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    device = logits.device
    steps_value = config.steps if steps is None else steps
    checked = [
        _per_row_checked(value, name, batch, dtype, device, skip=skip)
        for name, value in (
            ("steps", steps_value),
            ("lr", config.lr if lr is None else lr),
            ("threshold", config.threshold if threshold is None else threshold),
            ("kl_weight", config.kl_weight if kl_weight is None else kl_weight),
        )
    ]
    (steps_t, _), (lr_t, _), (threshold_t, _), (kl_t, _) = checked
    params_ok = _all_ok(ok for _, ok in checked)

    if out is None:
        z = logits.to(dtype=dtype, copy=True)
    else:
        if out.shape != logits.shape or out.dtype != dtype or out.device != device:
            raise ValueError(
                f"out must be a {dtype} tensor of shape {tuple(logits.shape)} on {device}, got "
                f"{out.dtype} {tuple(out.shape)} on {out.device}"
            )
        if out.data_ptr() == logits.data_ptr():
            raise ValueError("out must not be logits itself: broken rows are restored from logits")
        z = out.copy_(logits)
    if isinstance(steps_value, int) and not isinstance(steps_value, bool):
        host_steps = steps_value if steps_value >= 0 else 0  # known on the host: no device sync
        run_steps = host_steps if max_steps is None else min(host_steps, max_steps)
    elif max_steps is not None:
        run_steps = max_steps
    else:
        run_steps = int(steps_t.max().item()) if batch else 0
    if not batch or run_steps == 0:
        return z
    args = (z, logits, steps_t, lr_t, threshold_t, kl_t, params_ok, run_steps, workspace)

    def run(backend: str) -> None:
        if early_exit:
            _minimize_early_exit(*args, backend=backend)
        else:
            _minimize_fixed(*args, skip, backend=backend)

    try:
        run(em_inf_fused.resolve_backend(fused, device))
    except em_inf_fused.FusedUnavailable as error:
        if not fused_fallback:
            raise
        em_inf_fused.warn_fallback(error)
        z.copy_(logits)  # the fused loop may have moved z before failing: start again
        run("off")
    return z


def _minimize_early_exit(
    z, logits, steps_t, lr_t, threshold_t, kl_t, params_ok, run_steps, workspace, *, backend="off"
):
    """The loop with host-side shortcuts: skips mask passes when nothing is masked, stops when all stop."""
    dtype = z.dtype
    ok = valid_rows(z)
    if params_ok is not None:
        ok &= params_ok
    # Masked (-inf) tokens get a huge finite logit while optimizing: their probability is still exactly 0,
    # but p * log p and the gradient are exact zeros instead of 0 * -inf = NaN, with no per-step masking.
    # Whether any valid row is masked, from one min reduction: `isneginf(z).any()` costs about 1.5
    # softmaxes at B = 1 (a bool [B, V] write and a slow bool reduction). A row holding NaN has a NaN
    # minimum and may be missed, but it is invalid and restored from `logits` below anyway.
    any_masked = bool(torch.isneginf(z.amin(dim=-1)).any())
    masked = torch.isneginf(z) if any_masked else None
    floor = torch.finfo(dtype).min / 4
    if any_masked:
        z.masked_fill_(masked, floor)
    all_ok = bool(ok.all())
    if not all_ok:
        z[~ok] = floor
    _adam_loop(
        z, steps_t, lr_t, threshold_t, kl_t, ok, run_steps, workspace, early_exit=True, backend=backend
    )
    if any_masked:
        z.masked_fill_(masked, float("-inf"))
    if params_ok is not None:  # "skip": a row whose result is not finite comes back unchanged
        ok &= valid_rows(z)
        all_ok = bool(ok.all())
    if not all_ok:
        bad = ~ok
        z[bad] = logits[bad].to(dtype)


def _minimize_fixed(
    z, logits, steps_t, lr_t, threshold_t, kl_t, params_ok, run_steps, workspace, skip, *, backend="off"
):
    """The same computation with masks only: no value is read back from the device."""
    dtype = z.dtype
    ok = valid_rows(z)
    if params_ok is not None:
        ok &= params_ok
    masked = torch.isneginf(z)
    floor = torch.finfo(dtype).min / 4
    z.masked_fill_(masked, floor)
    ok_col = ok.unsqueeze(-1)
    z.masked_fill_(~ok_col, floor)  # a constant row: harmless arithmetic, restored below
    _adam_loop(
        z, steps_t, lr_t, threshold_t, kl_t, ok, run_steps, workspace, early_exit=False, backend=backend
    )
    z.masked_fill_(masked, float("-inf"))
    if skip:
        ok_col = (ok & valid_rows(z)).unsqueeze(-1)
    torch.where(ok_col, z, logits.to(dtype), out=z)


def _adam_loop(
    z, steps_t, lr_t, threshold_t, kl_t, ok, run_steps, workspace, *, early_exit: bool, backend: str = "off"
) -> None:
    """Up to ``run_steps`` closed-form Adam steps on ``z`` in place; rows outside ``ok`` never move."""
    if backend != "off":
        args = (z, steps_t, lr_t, threshold_t, kl_t, ok, run_steps, workspace)
        em_inf_fused.adam_loop(*args, early_exit=early_exit, backend=backend)
        return
    workspace = workspace if workspace is not None else EMInfWorkspace()
    # neg_d: z - max z, then -e*d, then the negated gradient; p: e = exp(z - max z), then Adam's
    # normalized update; exp_avg tracks the NEGATED gradient's first moment.
    neg_d, p, p0, exp_avg, exp_avg_sq = workspace.buffers(z.shape, z.dtype, z.device)
    exp_avg.zero_()
    exp_avg_sq.zero_()
    kl_col = kl_t.unsqueeze(-1)
    active = ok.clone()
    for step in range(run_steps):
        # Entropy from max-shifted logits (as emreason.entropy.token_entropy): with d = max z - z >= 0,
        # e = exp(-d) and S = sum e, H = log S + c with c = sum e d / S, and -dH/dz = p (log p + H) =
        # p (c - d). No sum cancels and no log_softmax is taken (torch's float32 CPU log_softmax is off
        # by ~1e-5 at logit std 5). Unlike token_entropy, S keeps the top token's 1 (log S is then exact
        # to ~1e-7 nats absolute, plenty for a threshold test), which saves an argmax pass per step.
        z_max = z.amax(dim=-1, keepdim=True)
        torch.sub(z, z_max, out=neg_d)
        torch.exp(neg_d, out=p)
        total = p.sum(-1, keepdim=True)  # S
        # Masked tokens sit at a huge finite logit (the callers' floor): e = 0 and e * d = -0, no NaN.
        minus_t = neg_d.mul_(p).sum(-1, keepdim=True)  # neg_d now holds -e*d
        c = minus_t.div_(total).neg_()
        if step == 0:
            torch.div(p, total, out=p0)  # z has not moved yet
        entropy = torch.log(total).add_(c).squeeze(-1)
        # Rows stop for good: the first time H < threshold (authors' `break`) or their step budget runs out.
        active &= (entropy >= threshold_t) & (step < steps_t)
        if early_exit and not bool(active.any()):
            break
        # -grad = p (c - d) + kl_weight (p0 - p) = [-e d + e (c - kl)] / S + kl p0, built in place
        # (p = e / S is never formed after step 0).
        neg_grad = neg_d.addcmul_(p, c - kl_col).div_(total).addcmul_(p0, kl_col)
        exp_avg.lerp_(neg_grad, 1 - _BETA1)
        exp_avg_sq.mul_(_BETA2).addcmul_(neg_grad, neg_grad, value=1 - _BETA2)
        # torch.optim.Adam's update, rearranged: lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)
        #   = [lr * sqrt(bc2) / bc1] * m / (sqrt(v) + eps * sqrt(bc2)).
        t = step + 1
        sqrt_bc2 = math.sqrt(1 - _BETA2**t)
        update = torch.sqrt(exp_avg_sq, out=p).add_(_ADAM_EPS * sqrt_bc2)
        torch.div(exp_avg, update, out=update)
        scale = lr_t * (sqrt_bc2 / (1 - _BETA1**t)) * active
        z.addcmul_(update, scale.unsqueeze(-1))  # + because the moments track the negated gradient


@dataclass(frozen=True)
class AdaptiveTemperatureConfig:
    """Adaptive temperature (the paper's Algorithm 1 baseline); defaults from the authors' released code.

    Rows whose entropy ``H0`` exceeds ``delta`` get the temperature ``tau`` in ``[tau_min, tau_max]``, found
    by bisection, at which ``H(softmax(z / tau))`` is within ``tol`` of ``max(delta, alpha * H0)``.

    Attributes:
        alpha: target fraction of the initial entropy (0 < alpha <= 1).
        delta: entropy floor in nats (>= 0); rows at or below it are left alone.
        tau_min, tau_max: bisection bracket (0 < tau_min < tau_max).
        tol: stop once ``|H - target| < tol`` (nats, > 0).
        max_iter: bisection iterations at most (>= 1).
    """

    alpha: float = 0.2
    delta: float = 1e-6
    tau_min: float = 0.01
    tau_max: float = 1.0
    tol: float = 0.1
    max_iter: int = 100

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha!r}")
        if not (math.isfinite(self.delta) and self.delta >= 0):
            raise ValueError(f"delta must be finite and >= 0, got {self.delta!r}")
        if not 0 < self.tau_min < self.tau_max < math.inf:
            raise ValueError(f"need 0 < tau_min < tau_max < inf, got {self.tau_min!r}, {self.tau_max!r}")
        if not (math.isfinite(self.tol) and self.tol > 0):
            raise ValueError(f"tol must be finite and > 0, got {self.tol!r}")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ValueError(f"max_iter must be an int >= 1, got {self.max_iter!r}")


@torch.no_grad()
def adaptive_temperature(
    logits: torch.Tensor,
    config: AdaptiveTemperatureConfig | None = None,
    *,
    alpha: float | torch.Tensor | None = None,
    delta: float | torch.Tensor | None = None,
    return_tau: bool = False,
    early_exit: bool = True,
    invalid_params: str = "raise",
    exit_checks: int = 0,
):
    """Batched Algorithm 1: per-row bisection on the temperature toward a target entropy.

    Args:
        logits: ``[B, V]`` logits (not modified); ``-inf`` entries are masked tokens.
        config: ``AdaptiveTemperatureConfig()`` when None.
        alpha, delta: optional per-row overrides of ``config.alpha`` / ``config.delta`` (scalar or ``[B]``).
        return_tau: also return the ``[B]`` temperatures used.
        early_exit: stop bisecting once every row has converged (one device-to-host read per
            iteration). ``False`` runs `bisection_iterations` iterations and reads nothing back; the
            result is the same, because by then every row's bracket has shrunk to one float.
        exit_checks: with ``early_exit=False``, allow this many device-to-host reads: after every
            `CHECK_EVERY` iterations (at most ``exit_checks`` times) stop if no row is still searching.
            Same result; most rows converge within 8 iterations, so one check saves most of the fixed cost.
        invalid_params: ``"raise"`` (ValueError) or ``"skip"``: a row whose alpha is outside (0, 1] or
            whose delta is NaN, infinite or negative gets ``tau = 1``, with no check on the host.

    Returns:
        ``z / tau`` as ``[B, V]`` float32 (float64 for float64 input), and ``tau`` when asked. Rows with
        ``H0 <= delta`` and invalid rows (NaN / ``+inf`` / all ``-inf``) get ``tau = 1``. As in the authors'
        code, a row that never meets ``tol`` ends at the last midpoint tried.
    """
    _check_logits(logits)
    if invalid_params not in ("raise", "skip"):
        raise ValueError(f"invalid_params must be 'raise' or 'skip', got {invalid_params!r}")
    skip = invalid_params == "skip"
    config = config or AdaptiveTemperatureConfig()
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    z = logits.to(dtype)
    ok = valid_rows(z)
    safe = torch.where(ok.unsqueeze(-1), z, torch.zeros((), dtype=dtype, device=z.device))
    batch = z.shape[0]
    alpha_value = config.alpha if alpha is None else alpha
    alpha_t, alpha_ok = _per_row_checked(alpha_value, "alpha", batch, dtype, z.device, skip=skip)
    delta_t, delta_ok = _per_row_checked(
        config.delta if delta is None else delta, "delta", batch, dtype, z.device, skip=skip
    )
    in_range = (alpha_t > 0) & (alpha_t <= 1)
    if skip:
        ok = _all_ok((ok, alpha_ok, delta_ok, in_range))
    elif isinstance(alpha_value, (int, float)):
        if not 0 < alpha_value <= 1:  # host scalar: no device read
            raise ValueError(f"alpha must be in (0, 1] in every row, got {alpha_value}")
    elif not bool(in_range.all()):
        raise ValueError(f"alpha must be in (0, 1] in every row, got {alpha_t.tolist()}")
    h0 = token_entropy(safe)
    target = torch.maximum(alpha_t * h0, delta_t)
    searching = ok & (h0 > delta_t)
    tau = torch.ones_like(h0)
    low = torch.full_like(h0, config.tau_min)
    high = torch.full_like(h0, config.tau_max)
    iterations = config.max_iter if early_exit else min(config.max_iter, bisection_iterations(config, dtype))
    if isinstance(exit_checks, bool) or not isinstance(exit_checks, int) or exit_checks < 0:
        raise ValueError(f"exit_checks must be an int >= 0, got {exit_checks!r}")
    for i in range(iterations):
        if early_exit:
            if not bool(searching.any()):
                break
        elif i and i % CHECK_EVERY == 0 and i // CHECK_EVERY <= exit_checks and not bool(searching.any()):
            break
        mid = (low + high) / 2
        tau = torch.where(searching, mid, tau)
        h = token_entropy(safe / mid.unsqueeze(-1))
        converged = (h - target).abs() < config.tol
        too_cold = h < target  # entropy below target: the temperature must rise
        low = torch.where(searching & ~converged & too_cold, mid, low)
        high = torch.where(searching & ~converged & ~too_cold, mid, high)
        searching &= ~converged
    out = z / tau.unsqueeze(-1)
    return (out, tau) if return_tau else out


CHECK_EVERY = 8  # adaptive_temperature(exit_checks=k): iterations between its host-side checks


def bisection_iterations(config: AdaptiveTemperatureConfig, dtype: torch.dtype = torch.float32) -> int:
    """Iterations after which `adaptive_temperature`'s bisection can no longer change any row.

    Each iteration halves a searching row's bracket ``[low, high]`` (from ``tau_max - tau_min``); once it
    is narrower than one unit in the last place of ``tau_min`` the midpoint rounds to ``low`` or ``high``
    and every later iteration repeats the same midpoint, entropy and decision. Two more iterations cover
    the rounding of the midpoints on the way. About 32 for float32 and the default bracket.
    """
    ulp = torch.finfo(dtype).eps * config.tau_min / 2
    return math.ceil(math.log2((config.tau_max - config.tau_min) / ulp)) + 2
