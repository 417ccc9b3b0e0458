"""The one home of entropy and log-probability math in emreason.

All entropies are Shannon entropies in nats. Half-precision inputs are upcast to float32 before any
reduction (a bfloat16 softmax over 150k tokens loses most of the tail mass). Entries equal to ``-inf``
are masked tokens: they carry zero probability and contribute exactly zero to the entropy.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = [
    "token_entropy",
    "log_softmax_entropy",
    "sequence_logprob",
    "entropy_from_hidden",
    "SequenceLogProb",
]


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class _Stats(NamedTuple):
    """Per-row statistics of ``softmax(z)`` along the last dim, all ``[..., 1]``.

    With ``m = max z``, ``d_j = m - z_j >= 0`` and ``r = sum_{j != top} exp(-d_j)`` (the top token's
    ``exp(0) = 1`` left out, so a tiny ``r`` keeps its relative precision):

        log Z = m + log1p(r),   log p_j = -d_j - log1p(r),
        H = log1p(r) + c  with  c = sum_j exp(-d_j) d_j / (1 + r),
        dH/dz_j = -p_j (log p_j + H) = -p_j (c - d_j).

    Every sum has non-negative terms, so nothing cancels: the error stays near float32 rounding of the
    logits however large they are (``logsumexp(z) - sum p z`` loses ``|z| * eps`` and more).
    """

    max: torch.Tensor  # m
    log1p_tail: torch.Tensor  # log1p(r)
    c: torch.Tensor  # H - log1p(r)
    valid: torch.Tensor  # bool: finite max (no NaN / +inf, not all -inf)
    masked: bool  # some valid row held -inf entries (their 0 * inf products were zeroed)


def _stats(z: torch.Tensor, want_neg_d: bool = False) -> tuple[_Stats, torch.Tensor | None]:
    """`_Stats` of ``z`` ``[..., V]`` (float32/64, no autograd), and ``z - m`` ``[..., V]`` if asked."""
    # amax + argmax: on CPU two passes are ~1.5x faster than max(dim) returning both; amax propagates NaN.
    m = z.amax(dim=-1, keepdim=True)
    top = z.argmax(dim=-1, keepdim=True)
    valid = torch.isfinite(m)
    neg_d = z - m  # <= 0; -inf for masked tokens
    e = neg_d.exp()
    e.scatter_(-1, top, 0.0)
    r = e.sum(-1, keepdim=True)
    # e * (-d); the top token's term is 1 * 0 whatever e holds there.
    prod = e.mul_(neg_d)
    # -inf entries give 0 * -inf = NaN where an exact zero is meant. Zeroed unconditionally: testing
    # first would read a flag back from the device on every call (a stall per decode step in EM-INF's
    # adaptive-temperature search); invalid rows are NaN'd through ``valid`` anyway.
    minus_t = prod.nan_to_num_(nan=0.0).sum(-1, keepdim=True)
    masked = True  # "may hold masked entries": the backward zeroes their 0 * inf products too
    del prod, e
    one_plus_r = 1 + r
    stats = _Stats(m, torch.log1p(r), -minus_t / one_plus_r, valid, masked)
    return stats, (neg_d if want_neg_d else None)


def _entropy_of(stats: _Stats) -> torch.Tensor:
    """``H [..., 1]``; NaN for invalid rows."""
    h = stats.log1p_tail + stats.c
    return torch.where(stats.valid, h, torch.full_like(h, float("nan")))


def _entropy_grad(neg_d: torch.Tensor, stats: _Stats, grad_h: torch.Tensor) -> torch.Tensor:
    """``grad_h * dH/dz`` ``[..., V]`` from ``z - m`` (consumed in place) and ``grad_h [..., 1]``."""
    p = (neg_d - stats.log1p_tail).exp_()
    grad = neg_d.add_(stats.c).mul_(p).mul_(-grad_h)  # -p (c - d) * grad_h
    if stats.masked:
        grad.nan_to_num_(nan=0.0)
    grad.masked_fill_(~stats.valid, float("nan"))  # unconditional: testing first would sync per chunk
    return grad


class _TokenEntropy(torch.autograd.Function):
    """Entropy over the last dim with the closed-form backward; saves the input and ``[..., 1]`` stats."""

    @staticmethod
    def forward(ctx, logits):
        stats, _ = _stats(_upcast(logits))
        ctx.save_for_backward(logits, stats.max, stats.log1p_tail, stats.c, stats.valid)
        ctx.masked = stats.masked
        return _entropy_of(stats).squeeze(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h):
        logits, m, log1p_tail, c, valid = ctx.saved_tensors
        stats = _Stats(m, log1p_tail, c, valid, ctx.masked)
        neg_d = _upcast(logits) - m
        return _entropy_grad(neg_d, stats, grad_h.unsqueeze(-1)).to(logits.dtype)


def _needs_graph(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def token_entropy(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` along ``dim``, in nats.

    Args:
        logits: any shape ``[..., V, ...]``; ``-inf`` entries are masked tokens.
        dim: the vocabulary dimension.

    Returns:
        ``logits`` with ``dim`` reduced away, float32 (or float64 for float64 input). A row holding NaN
        or ``+inf``, or only ``-inf``, gives NaN (value and gradient), as its distribution is undefined.

    Computed from the max-shifted logits as ``log1p(r) + c`` (see `_Stats`): accurate to float32
    rounding at any logit scale, where ``logsumexp(z) - sum softmax(z) * z`` is off by ~1e-3 nats at
    V = 151,936 and logit std 30. Masked entries contribute exactly 0 to the value and the gradient;
    the gradient is the closed form ``dH/dz_i = -p_i (log p_i + H)`` (no graph over the softmax; double
    backward is not supported).
    """
    z = logits.movedim(dim, -1)
    if _needs_graph(z):
        return _TokenEntropy.apply(z)
    with torch.no_grad():
        return _entropy_of(_stats(_upcast(z))[0]).squeeze(-1)


class _LogSoftmaxEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits):
        stats, neg_d = _stats(_upcast(logits), want_neg_d=True)
        entropy = _entropy_of(stats).squeeze(-1)
        log_p = neg_d.sub_(stats.log1p_tail)
        ctx.save_for_backward(logits, stats.max, stats.log1p_tail, stats.c, stats.valid)
        ctx.masked = stats.masked
        return log_p, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_log_p, grad_h):
        logits, m, log1p_tail, c, valid = ctx.saved_tensors
        stats = _Stats(m, log1p_tail, c, valid, ctx.masked)
        neg_d = _upcast(logits) - m
        grad = None
        if grad_log_p is not None:
            # d log_softmax: g - softmax * sum(g); masked entries have p = 0 and pass g through.
            p = (neg_d - log1p_tail).exp_()
            grad = grad_log_p - p * grad_log_p.sum(-1, keepdim=True)
        if grad_h is not None:
            from_h = _entropy_grad(neg_d, stats, grad_h.unsqueeze(-1))
            grad = from_h if grad is None else grad.add_(from_h)
        return grad.to(logits.dtype)


def log_softmax_entropy(logits: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log_softmax(logits), entropy)`` from one normalisation pass, for callers that need both.

    Shapes as `token_entropy` (log-probabilities keep ``logits``' shape, upcast like it); masked
    (``-inf``) entries have log-probability ``-inf`` and contribute 0 to the entropy. Both come from the
    same max-shifted statistics as `token_entropy`, so the entropy is as accurate; differentiable in both
    outputs (closed-form backward).
    """
    z = logits.movedim(dim, -1)
    if _needs_graph(z):
        log_p, entropy = _LogSoftmaxEntropy.apply(z)
    else:
        with torch.no_grad():
            stats, neg_d = _stats(_upcast(z), want_neg_d=True)
            entropy = _entropy_of(stats).squeeze(-1)
            log_p = neg_d.sub_(stats.log1p_tail)
    return log_p.movedim(-1, dim), entropy


class SequenceLogProb(NamedTuple):
    """Per-sequence log-probability of given tokens: ``sum`` and ``mean`` are ``[B]`` (nats)."""

    sum: torch.Tensor
    mean: torch.Tensor
    token_logprobs: torch.Tensor  # [B, T], zero where the mask is zero


def sequence_logprob(
    logits: torch.Tensor, token_ids: torch.Tensor, mask: torch.Tensor | None = None
) -> SequenceLogProb:
    """Sum and mean over tokens of ``log softmax(logits)[token_ids]``.

    Args:
        logits: ``[B, T, V]``; row ``t`` is the distribution that produced ``token_ids[:, t]`` (already
            shifted: for a causal LM pass ``logits[:, :-1]`` with ``input_ids[:, 1:]``).
        token_ids: ``[B, T]`` integer ids.
        mask: ``[B, T]`` (bool or 0/1); 1 marks tokens that count. Defaults to all ones.

    Returns:
        ``SequenceLogProb(sum [B], mean [B], token_logprobs [B, T])``. The mean of a row with no
        counted tokens is 0.
    """
    if logits.ndim != 3 or token_ids.shape != logits.shape[:2]:
        raise ValueError(
            f"expected logits [B, T, V] and token_ids [B, T]; got {tuple(logits.shape)} and "
            f"{tuple(token_ids.shape)}"
        )
    if mask is None:
        mask = torch.ones_like(token_ids, dtype=torch.bool)
    elif mask.shape != token_ids.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != token_ids shape {tuple(token_ids.shape)}")
    z = _upcast(logits)
    picked = torch.gather(z, -1, token_ids.long().unsqueeze(-1)).squeeze(-1)
    token_logprobs = (picked - torch.logsumexp(z, dim=-1)) * mask.to(z.dtype)
    total = token_logprobs.sum(-1)
    count = mask.to(z.dtype).sum(-1)
    return SequenceLogProb(total, total / count.clamp_min(1), token_logprobs)


# Default byte budget of the logits `entropy_from_hidden` keeps from forward to backward under
# ``recompute_logits="auto"``: 2 GiB, ~3,500 tokens of float32 logits at V = 151,936.
KEEP_LOGITS_MAX_BYTES = 2 * 1024**3


def entropy_from_hidden(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    chunk_size: int = 1024,
    bias: torch.Tensor | None = None,
    recompute_logits: bool | str = "auto",
    keep_logits_max_bytes: int = KEEP_LOGITS_MAX_BYTES,
) -> torch.Tensor:
    """Per-token entropy of ``softmax(hidden @ W.T + b)``, computed ``chunk_size`` tokens at a time.

    Forward computes one chunk's ``[chunk_size, V]`` logits at a time and keeps per-token statistics.
    Backward needs each chunk's logits again; it either recomputes them (one extra vocabulary-sized
    matmul per chunk, memory: one ``[chunk, V]`` block plus one scratch block at any time) or uses the
    shifted logits kept from the forward (no recompute; memory: the kept ``[tokens, V]`` float32 logits
    plus one scratch block). Either way the gradient is the closed form ``dH/dz_i = -p_i (log p_i + H)``
    (no autograd graph over the softmax), followed by two matmuls for the input and weight gradients.
    An SFT step holds its full ``[tokens, V]`` logits and their gradient, so keeping stays below its peak.
    Double backward is not supported.

    Args:
        hidden: ``[..., D]`` final hidden states (any leading shape).
        lm_head_weight: ``[V, D]`` output projection.
        chunk_size: tokens per chunk (> 0).
        bias: optional ``[V]`` output bias; ``-inf`` entries mask tokens.
        recompute_logits: ``True``: recompute every chunk in backward (least memory). ``False``: keep
            every chunk's logits (fastest). ``"auto"``: keep whole chunks, first to last, while the kept
            logits take at most ``keep_logits_max_bytes``, and recompute the rest.
        keep_logits_max_bytes: byte budget of the kept logits under ``"auto"`` (>= 0).

    Returns:
        ``[...]`` entropies in nats (float32 for half-precision inputs), differentiable with respect to
        ``hidden``, ``lm_head_weight`` and ``bias``. Without a bias, a linear map of finite inputs can
        give ``-inf`` logits only by overflowing the float range; such a row gives NaN.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if hidden.shape[-1] != lm_head_weight.shape[-1]:
        raise ValueError(
            f"hidden size {hidden.shape[-1]} does not match lm_head_weight {tuple(lm_head_weight.shape)}"
        )
    if recompute_logits not in (True, False, "auto") or not isinstance(recompute_logits, (bool, str)):
        raise ValueError(f'recompute_logits must be True, False or "auto", got {recompute_logits!r}')
    if keep_logits_max_bytes < 0:
        raise ValueError(f"keep_logits_max_bytes must be >= 0, got {keep_logits_max_bytes}")
    leading = hidden.shape[:-1]
    flat = hidden.reshape(-1, hidden.shape[-1])
    if flat.shape[0] == 0:
        return flat.new_zeros(leading, dtype=_upcast(flat).dtype)
    needs_grad = torch.is_grad_enabled() and (
        flat.requires_grad or lm_head_weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    if needs_grad:
        kept_rows = _kept_rows(
            flat.shape[0], lm_head_weight, chunk_size, recompute_logits, keep_logits_max_bytes
        )
        entropy = _ChunkedEntropy.apply(flat, lm_head_weight, bias, chunk_size, kept_rows)
    else:
        entropy = torch.cat(
            [
                token_entropy(torch.nn.functional.linear(flat[i : i + chunk_size], lm_head_weight, bias))
                for i in range(0, flat.shape[0], chunk_size)
            ]
        )
    return entropy.reshape(leading)


def _kept_rows(tokens: int, weight: torch.Tensor, chunk_size: int, recompute: bool | str, budget: int) -> int:
    """How many leading tokens (whole chunks, or all tokens) keep their logits for the backward."""
    if recompute is True:
        return 0
    if recompute is False:
        return tokens
    row_bytes = weight.shape[0] * _upcast(torch.empty(0, dtype=weight.dtype)).element_size()
    return min(tokens, budget // (row_bytes * chunk_size) * chunk_size)


def _chunk_logits_(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor
) -> torch.Tensor:
    """Writes ``x W^T + b`` ``[n, V]`` into ``out`` (float32/64, ``[n, V]``) and returns it.

    Same-dtype inputs go through ``addmm``/``mm`` with ``out=`` (the kernel ``F.linear`` uses, so the
    forward and the recompute agree bit for bit), which writes into a reused buffer instead of a fresh
    vocabulary-sized allocation; half-precision logits are computed as the model would, then upcast."""
    if x.dtype == weight.dtype == out.dtype and (bias is None or bias.dtype == out.dtype):
        if bias is None:
            return torch.mm(x, weight.t(), out=out)
        return torch.addmm(bias, x, weight.t(), out=out)
    return out.copy_(torch.nn.functional.linear(x, weight, bias))


def _shifted_stats_(z: torch.Tensor, scratch: torch.Tensor, may_mask: bool) -> _Stats:
    """`_Stats` of ``z`` ``[n, V]``, turning ``z`` into ``z - m`` in place; ``scratch`` ``[n, V]`` is
    overwritten. The same sums as `_stats`, with no vocabulary-sized allocation. ``may_mask``: whether
    ``z`` may hold ``-inf`` entries whose ``0 * inf`` products must be zeroed (a pass over ``[n, V]``)."""
    # One max pass for value and index (measured here: 275 ms vs 422 ms for amax + argmax on
    # 896 x 151,936 float32, one core); it propagates NaN like amax.
    m, top = z.max(dim=-1, keepdim=True)
    valid = torch.isfinite(m)
    neg_d = z.sub_(m)
    e = torch.exp(neg_d, out=scratch)
    e.scatter_(-1, top, 0.0)
    r = e.sum(-1, keepdim=True)
    prod = e.mul_(neg_d)
    if may_mask:
        prod.nan_to_num_(nan=0.0)
    minus_t = prod.sum(-1, keepdim=True)
    return _Stats(m, torch.log1p(r), -minus_t / (1 + r), valid, may_mask)


class _ChunkedEntropy(torch.autograd.Function):
    """Chunked entropy of ``softmax(x W^T + b)`` with a closed-form backward.

    Forward keeps ``[N]``-sized statistics per token (max logit, ``log1p`` of the tail mass and
    ``c = H - log1p``, see `_Stats`) and, for the first ``kept_rows`` tokens, the shifted logits
    ``z - m``; backward recomputes the other chunks' logits with one matmul each. Neither needs further
    reductions over the vocabulary. The incoming gradient (and NaN for invalid rows) is applied as a
    per-row factor to the ``[n, D]`` matmul operands and results, not as passes over ``[n, V]``.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, chunk_size, kept_rows):
        n_tokens, vocab = hidden.shape[0], weight.shape[0]
        dtype = _upcast(torch.empty(0, dtype=weight.dtype)).dtype
        # Without a bias, finite inputs give no -inf logits (short of overflow), so the passes that
        # zero masked entries' 0 * inf products are skipped.
        may_mask = bias is not None
        block = min(chunk_size, n_tokens)
        with torch.no_grad():
            scratch = hidden.new_empty(block, vocab, dtype=dtype)
            reused = None  # one logits block, reused by every chunk whose logits are not kept
            kept, parts = [], []
            for start in range(0, n_tokens, chunk_size):
                x = hidden[start : start + chunk_size]
                if start < kept_rows:
                    out = hidden.new_empty(x.shape[0], vocab, dtype=dtype)
                else:
                    reused = hidden.new_empty(block, vocab, dtype=dtype) if reused is None else reused
                    out = reused[: x.shape[0]]
                z = _chunk_logits_(x, weight, bias, out)
                parts.append(_shifted_stats_(z, scratch[: x.shape[0]], may_mask))
                if start < kept_rows:
                    kept.append(z)
            del reused
        stats = _Stats(
            *(torch.cat([getattr(s, f) for s in parts]) for f in ("max", "log1p_tail", "c", "valid")),
            masked=may_mask,
        )
        ctx.save_for_backward(hidden, weight, bias, stats.max, stats.log1p_tail, stats.c, stats.valid)
        ctx.chunk_size, ctx.masked = chunk_size, may_mask
        # Kept blocks are consumed in place by the first backward (a second one, under retain_graph,
        # recomputes); the scratch block is only held over when logits are kept anyway.
        ctx.kept = kept
        ctx.scratch = scratch if kept else None
        return _entropy_of(stats).squeeze(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_entropy):
        hidden, weight, bias, m, log1p_tail, c, valid = ctx.saved_tensors
        chunk_size, kept, scratch = ctx.chunk_size, ctx.kept, ctx.scratch
        ctx.kept, ctx.scratch = [], None
        want_hidden, want_weight, want_bias = ctx.needs_input_grad[:3]
        n_tokens, vocab = hidden.shape[0], weight.shape[0]
        dtype = m.dtype
        accumulate = torch.float64 if weight.dtype == torch.float64 else torch.float32
        if scratch is None:
            scratch = hidden.new_empty(min(chunk_size, n_tokens), vocab, dtype=dtype)
        # dH/dz = -p (c - d): the chunk below holds q = p (c - d); the factor -grad_h (NaN for invalid
        # rows, whose distribution is undefined) multiplies q's [n, D] matmul operands / results.
        scale = torch.where(valid, -grad_entropy[:, None].to(dtype), torch.full_like(m, float("nan")))
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=accumulate) if want_weight else None
        grad_bias = torch.zeros(vocab, dtype=accumulate, device=weight.device) if want_bias else None
        reused = None
        for index, start in enumerate(range(0, n_tokens, chunk_size)):
            rows = slice(start, start + chunk_size)
            x = hidden[rows]
            if index < len(kept):
                neg_d = kept[index]
                kept[index] = None  # freed once used
            else:
                reused = torch.empty_like(scratch) if reused is None else reused
                neg_d = _chunk_logits_(x, weight, bias, reused[: x.shape[0]]).sub_(m[rows])
            p = torch.sub(neg_d, log1p_tail[rows], out=scratch[: x.shape[0]]).exp_()
            q = neg_d.add_(c[rows]).mul_(p)
            if ctx.masked:
                q.nan_to_num_(nan=0.0)
            row_scale = scale[rows]
            if want_hidden:
                grad_hidden[rows] = ((q.to(weight.dtype) @ weight) * row_scale).to(hidden.dtype)
            if want_weight:
                grad_weight.addmm_(q.T.to(accumulate), (x.to(accumulate) * row_scale.to(accumulate)))
            if want_bias:
                grad_bias.addmv_(q.T.to(accumulate), row_scale.squeeze(-1).to(accumulate))
            del neg_d, p, q
        if want_weight:
            grad_weight = grad_weight.to(weight.dtype)
        if want_bias:
            grad_bias = grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None
