"""Fused EM-INF Adam steps: the loop of `emreason.em_inf.minimize_entropy` in two passes over ``[B, V]``.

The eager core spends 16 tensor operations (23 reads and 13 writes of ``[B, V]``) per Adam step. Per
row, one step only needs::

    pass 1 (reduction):   e = exp(z - M); S = sum e; T = sum e (z - M)      reads z, writes e
                          c = -T / S; H = log S + c; active &= H >= threshold and step < steps
    pass 2 (elementwise): p = e / S; -g = p (c + z - M) + kl (p0 - p)        reads z, e, p0, m, v
                          Adam on -g; z += scale * m / (sqrt(v) + eps')      writes z, m, v (p0 at step 0)
                          M' = max z                                         (reduced in the same pass)

one ``exp`` per element and per step (its result is stored and reused, which costs less than a second
``exp``), no separate max pass (the next step's row max is reduced while the new logits are stored),
and no separate softmax/normalisation pass (``p = e / S`` is formed where it is used). Step 0 writes
``p0 = p`` and starts the moments at zero. The arithmetic is the eager core's, term for term;
only the order of float32 rounding differs (reductions are blocked differently).

Two backends:

- ``"compile"``: the two passes are `torch.compile`d (inductor: C++/OpenMP on CPU, Triton on CUDA) with
  ``dynamic=True``, so one compilation serves every vocabulary size and every batch size >= 2; batch
  size 1 gets its own (torch specializes sizes 0 and 1). A compilation takes tens of seconds on a CPU,
  on the first call of each kind: warm up with `warmup` before serving.
- ``"triton"``: two hand-written Triton kernels, one program per row looping over the vocabulary (CUDA;
  on a CPU only under ``TRITON_INTERPRET=1``, for tests).

Selection: ``minimize_entropy(..., fused=...)`` or, when that is None, the environment variable
``EMREASON_EM_INF_FUSED`` (``off`` (default), ``compile``, ``triton``, ``auto``: Triton on CUDA when
it imports, else compile). The default is off, so a server never stalls on a compilation unless asked.
Any failure of a fused backend (no C++ compiler, no Triton, an inductor error) raises
`FusedUnavailable`; `minimize_entropy` then warns once and reruns the eager core.
"""

from __future__ import annotations

import math
import os
import threading
import warnings

import torch

__all__ = ["ENV_VAR", "BACKENDS", "FusedUnavailable", "resolve_backend", "adam_loop", "warmup"]

ENV_VAR = "EMREASON_EM_INF_FUSED"
BACKENDS = ("off", "compile", "triton", "auto")

_BETA1 = 0.9
_BETA2 = 0.999
_ADAM_EPS = 1e-8


class FusedUnavailable(RuntimeError):
    """A fused backend could not run (compiler, Triton or device missing); the caller falls back."""


def resolve_backend(fused: str | bool | None, device: torch.device) -> str:
    """``"off"``, ``"compile"`` or ``"triton"`` for a ``fused`` argument (None: the environment variable).

    ``True`` and ``"auto"`` pick Triton on CUDA when it imports and inductor otherwise.
    """
    value = os.environ.get(ENV_VAR, "off") if fused is None else fused
    if value is True:
        value = "auto"
    elif value is False:
        value = "off"
    if not isinstance(value, str) or value.strip().lower() not in BACKENDS + ("", "0", "1"):
        source = f"${ENV_VAR}" if fused is None else "fused"
        raise ValueError(f"{source} must be one of {BACKENDS} (or a bool), got {value!r}")
    value = {"": "off", "0": "off", "1": "auto"}.get(value.strip().lower(), value.strip().lower())
    if value == "auto":
        value = "triton" if device.type == "cuda" and _triton_importable() else "compile"
    return value


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


_constants_lock = threading.Lock()
_constants: dict[tuple, torch.Tensor] = {}


def _step_constants(step: int) -> tuple[float, float]:
    """``(factor, eps')`` of Adam step ``step`` (0-based): ``lr * factor`` scales ``m / (sqrt(v) + eps')``.

    torch.optim.Adam's update ``lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)`` rearranged as in the eager core.
    """
    t = step + 1
    sqrt_bc2 = math.sqrt(1 - _BETA2**t)
    return sqrt_bc2 / (1 - _BETA1**t), _ADAM_EPS * sqrt_bc2


def _constants_tensor(step: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[4]`` tensor (factor, eps', step, is_first), cached per device: made (copied to the device) once,
    so later calls neither copy from the host nor recompile for a new Python constant."""
    key = (step, dtype, device)
    tensor = _constants.get(key)
    if tensor is None:
        factor, eps = _step_constants(step)
        with _constants_lock:
            tensor = _constants.setdefault(
                key, torch.tensor([factor, eps, float(step), float(step == 0)], dtype=dtype, device=device)
            )
    return tensor


# --------------------------------------------------------------------------------------------------
# Backend "compile": the two passes as plain tensor code, compiled by inductor.


def _exp_stats(z, row_max, active, steps_t, threshold_t, consts):
    """``e = exp(z - M)`` ``[B, V]``, ``S = sum e`` and ``c`` ``[B, 1]``, and the rows still ``active [B]``
    (entropy ``log S + c`` at or above the threshold, step below the row's step count)."""
    neg_d = z - row_max
    ex = torch.exp(neg_d)
    total = ex.sum(-1, keepdim=True)
    # c = sum e d / S with d = M - z >= 0 (as the eager core: no log_softmax, nothing cancels).
    c = -(ex * neg_d).sum(-1, keepdim=True) / total
    entropy = (torch.log(total) + c).squeeze(-1)
    return ex, total, c, active & (entropy >= threshold_t) & (consts[2] < steps_t)


def _stats(z, e, row_max, active, steps_t, threshold_t, consts):
    """Pass 1: ``e = exp(z - M)`` into ``e``; returns ``S [B,1]``, ``c [B,1]``, the new ``active [B]``."""
    ex, total, c, active = _exp_stats(z, row_max, active, steps_t, threshold_t, consts)
    e.copy_(ex)
    return total, c, active


def _adam(z, p, p0, c, m, v, row_max, active, lr_t, kl_t, consts):
    """The Adam step on ``z``, ``m``, ``v`` in place, from ``p``, ``p0``, ``c``; returns the new row max
    ``[B, 1]``. ``m`` tracks the negated gradient's first moment, as in the eager core."""
    first = consts[3] > 0
    kl = kl_t.unsqueeze(-1)
    neg_grad = p * (c + (z - row_max)) + kl * (p0 - p)
    m_prev = torch.where(first, 0.0, m)  # the moments start at zero; their buffers are not cleared
    v_prev = torch.where(first, 0.0, v)
    m_new = m_prev + (1 - _BETA1) * (neg_grad - m_prev)  # torch.lerp's formula for weights < 0.5
    v_new = v_prev * _BETA2 + neg_grad * neg_grad * (1 - _BETA2)
    scale = (lr_t * consts[0] * active).unsqueeze(-1)
    z_new = z + (m_new / (torch.sqrt(v_new) + consts[1])) * scale
    m.copy_(m_new)
    v.copy_(v_new)
    z.copy_(z_new)
    return z_new.amax(-1, keepdim=True)


def _update(z, e, e0, m, v, row_max, total, c, total0, active, lr_t, kl_t, consts):
    """Pass 2. ``p0 = e0 / S0`` from step 0's exponentials, which the stats pass wrote into ``e0``'s buffer
    (at step 0 the caller passes that buffer as ``e``, and ``e0``/``total0`` are unused: ``p0 = p``, so
    the KL gradient is exactly zero), so p0 is never written separately."""
    p = e / total
    p0 = torch.where(consts[3] > 0, p, e0 / total0)
    return _adam(z, p, p0, c, m, v, row_max, active, lr_t, kl_t, consts)


def _step(z, e0, m, v, row_max, total0, active, steps_t, threshold_t, lr_t, kl_t, consts):
    """Both passes as one graph (one compiled call per step, for B = 1): ``e`` lives in inductor's own
    scratch; step 0's is kept in ``e0``. Returns the new row max, ``active`` and ``S`` (``S0`` at step 0)."""
    ex, total, c, active = _exp_stats(z, row_max, active, steps_t, threshold_t, consts)
    first = consts[3] > 0
    p = ex / total
    p0 = torch.where(first, p, e0 / total0)
    e0.copy_(torch.where(first, ex, e0))
    return _adam(z, p, p0, c, m, v, row_max, active, lr_t, kl_t, consts), active, total


_compiled: dict[str, object] = {}
_compile_lock = threading.Lock()


def _compiled_fns():
    with _compile_lock:
        if not _compiled:
            _compiled["stats"] = torch.compile(_stats, dynamic=True, fullgraph=True)
            _compiled["update"] = torch.compile(_update, dynamic=True, fullgraph=True)
            _compiled["step"] = torch.compile(_step, dynamic=True, fullgraph=True)
    return _compiled["stats"], _compiled["update"], _compiled["step"]


# --------------------------------------------------------------------------------------------------
# Backend "triton": the same two passes as kernels, one program per row.

_triton_kernels = None


def _triton():
    """The two kernels, defined on first use (``TRITON_INTERPRET`` is read when they are decorated)."""
    global _triton_kernels
    if _triton_kernels is not None:
        return _triton_kernels
    import triton
    import triton.language as tl

    @triton.jit
    def stats_kernel(
        z_ptr, e_ptr, max_ptr, total_ptr, c_ptr, active_ptr, steps_ptr, threshold_ptr, step, vocab,
        BLOCK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0)
        base = row.to(tl.int64) * vocab
        row_max = tl.load(max_ptr + row)
        acc_e = tl.zeros([BLOCK], dtype=z_ptr.dtype.element_ty)
        acc_ed = tl.zeros([BLOCK], dtype=z_ptr.dtype.element_ty)
        for start in range(0, vocab, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            inside = cols < vocab
            z = tl.load(z_ptr + base + cols, mask=inside, other=0.0)
            neg_d = tl.where(inside, z - row_max, 0.0)  # no exp overflow past the row's end
            ex = tl.where(inside, tl.exp(neg_d), 0.0)
            tl.store(e_ptr + base + cols, ex, mask=inside)
            acc_e += ex
            acc_ed += ex * neg_d
        total = tl.sum(acc_e, axis=0)
        c = -tl.sum(acc_ed, axis=0) / total
        entropy = tl.log(total) + c
        active = tl.load(active_ptr + row) != 0
        threshold = tl.load(threshold_ptr + row)
        steps = tl.load(steps_ptr + row)
        active = active & (entropy >= threshold) & (step < steps)
        tl.store(total_ptr + row, total)
        tl.store(c_ptr + row, c)
        tl.store(active_ptr + row, active.to(tl.int8))

    @triton.jit
    def update_kernel(
        z_ptr, e_ptr, p0_ptr, m_ptr, v_ptr, max_ptr, total_ptr, c_ptr, active_ptr, lr_ptr, kl_ptr,
        factor, eps, vocab, FIRST: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0)
        base = row.to(tl.int64) * vocab
        row_max = tl.load(max_ptr + row)
        total = tl.load(total_ptr + row)
        c = tl.load(c_ptr + row)
        kl = tl.load(kl_ptr + row)
        active = tl.load(active_ptr + row) != 0
        scale = tl.load(lr_ptr + row) * factor * active.to(z_ptr.dtype.element_ty)
        new_max = tl.full([BLOCK], float("-inf"), dtype=z_ptr.dtype.element_ty)
        for start in range(0, vocab, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            inside = cols < vocab
            z = tl.load(z_ptr + base + cols, mask=inside, other=0.0)
            p = tl.load(e_ptr + base + cols, mask=inside, other=0.0) / total
            if FIRST:
                tl.store(p0_ptr + base + cols, p, mask=inside)
                neg_grad = p * (c + (z - row_max))
                m = 0.1 * neg_grad
                v = neg_grad * neg_grad * 0.001
            else:
                p0 = tl.load(p0_ptr + base + cols, mask=inside, other=0.0)
                neg_grad = p * (c + (z - row_max)) + kl * (p0 - p)
                m = tl.load(m_ptr + base + cols, mask=inside, other=0.0)
                v = tl.load(v_ptr + base + cols, mask=inside, other=0.0)
                m = m + 0.1 * (neg_grad - m)
                v = v * 0.999 + neg_grad * neg_grad * 0.001
            z = z + (m / (tl.sqrt(v) + eps)) * scale
            tl.store(m_ptr + base + cols, m, mask=inside)
            tl.store(v_ptr + base + cols, v, mask=inside)
            tl.store(z_ptr + base + cols, z, mask=inside)
            new_max = tl.maximum(new_max, tl.where(inside, z, float("-inf")))
        tl.store(max_ptr + row, tl.max(new_max, axis=0))

    _triton_kernels = (stats_kernel, update_kernel)
    return _triton_kernels


def _triton_block() -> int:
    """Columns per loop iteration: 4096 on a GPU (untested: no GPU here); 32768 in the interpreter,
    which runs each block as numpy operations, so fewer, larger blocks are much faster."""
    return 32768 if os.environ.get("TRITON_INTERPRET") == "1" else 4096


# --------------------------------------------------------------------------------------------------


def adam_loop(z, steps_t, lr_t, threshold_t, kl_t, ok, run_steps, workspace, *, early_exit, backend) -> None:
    """`emreason.em_inf._adam_loop` with a fused ``backend`` (``"compile"`` or ``"triton"``).

    ``z`` ``[B, V]`` contiguous float32/float64, masked and broken entries already at the finite floor;
    ``steps_t``, ``lr_t``, ``threshold_t``, ``kl_t`` ``[B]`` of ``z``'s dtype; ``ok`` ``[B]`` bool.
    Raises `FusedUnavailable` when the backend cannot run (nothing in ``z`` has changed then, except
    when a backend fails after its first step: the caller restarts from the input logits).
    """
    from emreason.em_inf import EMInfWorkspace

    if not z.is_contiguous():
        raise FusedUnavailable("fused EM-INF needs contiguous logits")
    workspace = workspace if workspace is not None else EMInfWorkspace()
    # Buffers 1-4 of the workspace block: all at a storage offset >= 2, so swapping e and e0 between
    # steps does not trip torch.compile's 0/1 specialization of the offset (a recompile per role).
    e, e0, m, v = workspace.buffers(z.shape, z.dtype, z.device)[1:]
    active = ok.clone()
    try:
        row_max = z.amax(dim=-1, keepdim=True)
        if backend == "compile":
            stats, update, fused_step = _compiled_fns()
            # One graph per step at B = 1, where the ~0.1 ms per compiled call matters most (measured:
            # 3.6 against 4.5 softmax-equivalents per step); two at B > 1, where the merged graph's own
            # [B, V] scratch for e costs more than the call (1.7 against 0.9 at B = 64).
            merged = z.shape[0] == 1
            total0 = torch.ones_like(row_max)  # read only from step 1 on; a distinct tensor (no aliasing)
            for step in range(run_steps):
                consts = _constants_tensor(step, z.dtype, z.device)
                if merged:
                    # Also with early_exit: when every row has stopped, the update moves nothing (its
                    # scale is 0), so checking after it gives the same result.
                    row_max, active, total = fused_step(
                        z, e0, m, v, row_max, total0, active, steps_t, threshold_t, lr_t, kl_t, consts
                    )
                else:
                    # Step 0 stores its exponentials in e0's buffer: they are p0 * S0 for later steps.
                    e_now, e_then = (e0, e) if step == 0 else (e, e0)
                    total, c, active = stats(z, e_now, row_max, active, steps_t, threshold_t, consts)
                    if early_exit and not bool(active.any()):
                        break
                    row_max = update(
                        z, e_now, e_then, m, v, row_max, total, c, total0, active, lr_t, kl_t, consts
                    )
                if step == 0:
                    total0 = total
                if merged and early_exit and not bool(active.any()):
                    break
        elif backend == "triton":
            if z.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
                raise FusedUnavailable("the Triton backend needs CUDA (or TRITON_INTERPRET=1)")
            stats_kernel, update_kernel = _triton()
            p0 = e0
            batch, vocab = z.shape
            row_max = row_max.squeeze(-1).contiguous()
            total = torch.empty_like(row_max)
            c = torch.empty_like(row_max)
            active_i8 = active.to(torch.int8)
            block = _triton_block()
            for step in range(run_steps):
                stats_kernel[(batch,)](
                    z, e, row_max, total, c, active_i8, steps_t, threshold_t, float(step), vocab,
                    BLOCK=block,
                )  # fmt: skip
                if early_exit and not bool(active_i8.any()):
                    break
                factor, eps = _step_constants(step)
                update_kernel[(batch,)](
                    z, e, p0, m, v, row_max, total, c, active_i8, lr_t, kl_t, factor, eps, vocab,
                    FIRST=step == 0, BLOCK=block,
                )  # fmt: skip
        else:
            raise ValueError(f"unknown fused backend {backend!r}")
    except FusedUnavailable:
        raise
    except Exception as error:  # compiler missing, inductor/Triton failure: the caller falls back
        raise FusedUnavailable(f"fused EM-INF backend {backend!r} failed: {error!r}") from error


_warned: set[str] = set()


def warn_fallback(error: Exception) -> None:
    """Warn once per distinct message that the fused path fell back to the eager core."""
    message = str(error)
    if message not in _warned:
        _warned.add(message)
        warnings.warn(f"{message}; using the eager EM-INF core", RuntimeWarning, stacklevel=3)


def warmup(
    backend: str = "compile",
    device: torch.device | str = "cpu",
    dtypes: tuple[torch.dtype, ...] = (torch.float32,),
    vocab: int = 151_936,
) -> None:
    """Compile ahead of time (e.g. before a server takes requests): batch sizes 1 and 2 for each dtype,
    under inference mode and no_grad (their tensors differ to torch's guards). With ``dynamic=True`` the
    compiled code then serves every batch size of those dtypes without compiling again, and every
    vocabulary size above 4096 (inductor's reduction code guards on ``V <= 4096`` vs larger): pass the
    model's ``vocab``. Raises `FusedUnavailable` on failure."""
    from emreason.em_inf import EMInfConfig, minimize_entropy

    device = torch.device(device)
    config = EMInfConfig(steps=2, threshold=0.0)
    for dtype in dtypes:
        for batch in (1, 2):  # B = 1 runs its own graph (and torch specializes size 1)
            logits = torch.randn(batch, vocab, dtype=dtype, device=device)
            with torch.inference_mode():  # vLLM's mode: its tensors are inference tensors
                minimize_entropy(logits, config, fused=backend, fused_fallback=False)
            with torch.no_grad():  # transformers' generate
                minimize_entropy(logits, config, fused=backend, fused_fallback=False)
