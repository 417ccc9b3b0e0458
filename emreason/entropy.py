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


def token_entropy(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` along ``dim``, in nats.

    Args:
        logits: any shape ``[..., V, ...]``; ``-inf`` entries are masked tokens.
        dim: the vocabulary dimension.

    Returns:
        ``logits`` with ``dim`` reduced away, float32 (or float64 for float64 input). A row whose
        entries are all ``-inf`` gives NaN, as its distribution is undefined.

    Uses ``H = logsumexp(z) - sum softmax(z) * z``, with masked (``-inf``) entries contributing 0
    rather than ``0 * -inf = NaN``, in the value and in its gradient.
    """
    z = _upcast(logits)
    log_normalizer = torch.logsumexp(z, dim=dim, keepdim=True)
    p = torch.exp(z - log_normalizer)
    # Zero the logit itself (not the product) where p == 0, so that backward never forms 0 * -inf.
    z_finite = torch.where(p > 0, z, torch.zeros((), dtype=z.dtype, device=z.device))
    return (log_normalizer - (p * z_finite).sum(dim=dim, keepdim=True)).squeeze(dim)


def log_softmax_entropy(logits: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log_softmax(logits), entropy)`` from one normalisation pass, for callers that need both.

    Shapes as `token_entropy` (log-probabilities keep ``logits``' shape, upcast like it); masked
    (``-inf``) entries have log-probability ``-inf`` and contribute 0 to the entropy.
    """
    log_p = torch.log_softmax(_upcast(logits), dim=dim)
    p = log_p.exp()
    log_p_finite = torch.where(p > 0, log_p, torch.zeros((), dtype=log_p.dtype, device=log_p.device))
    return log_p, -(p * log_p_finite).sum(dim)


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


def entropy_from_hidden(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    chunk_size: int = 1024,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token entropy of ``softmax(hidden @ W.T + b)``, computed ``chunk_size`` tokens at a time.

    The full ``[tokens, V]`` logits are never alive at once, in the forward or the backward pass: only
    one chunk's ``[chunk_size, V]`` logits exist while it is processed, and backward recomputes them.
    This is what keeps an EM-FT step's peak memory at or below a plain SFT step (whose loss holds all
    logits). Backward uses the closed form ``dH/dz_i = -p_i (log p_i + H)`` on the recomputed chunk
    (two ``[chunk, V]`` buffers, no autograd graph over the softmax), then two matmuls for the input and
    weight gradients. Double backward is not supported.

    Args:
        hidden: ``[..., D]`` final hidden states (any leading shape).
        lm_head_weight: ``[V, D]`` output projection.
        chunk_size: tokens per chunk (> 0).
        bias: optional ``[V]`` output bias.

    Returns:
        ``[...]`` entropies in nats (float32 for half-precision inputs), differentiable with respect to
        ``hidden``, ``lm_head_weight`` and ``bias``.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if hidden.shape[-1] != lm_head_weight.shape[-1]:
        raise ValueError(
            f"hidden size {hidden.shape[-1]} does not match lm_head_weight {tuple(lm_head_weight.shape)}"
        )
    leading = hidden.shape[:-1]
    flat = hidden.reshape(-1, hidden.shape[-1])
    if flat.shape[0] == 0:
        return flat.new_zeros(leading, dtype=_upcast(flat).dtype)
    needs_grad = torch.is_grad_enabled() and (
        flat.requires_grad or lm_head_weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    if needs_grad:
        entropy = _ChunkedEntropy.apply(flat, lm_head_weight, bias, chunk_size)
    else:
        entropy = torch.cat(
            [
                token_entropy(torch.nn.functional.linear(flat[i : i + chunk_size], lm_head_weight, bias))
                for i in range(0, flat.shape[0], chunk_size)
            ]
        )
    return entropy.reshape(leading)


class _ChunkedEntropy(torch.autograd.Function):
    """Chunked entropy of ``softmax(x W^T + b)`` with a recomputing, closed-form backward.

    Forward keeps only ``[N]``-sized statistics per token (log-normalizer and entropy), so backward
    recomputes a chunk's logits with one matmul and needs no further reductions over the vocabulary.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, chunk_size):
        # Logits of a linear layer are finite unless the bias masks tokens with -inf.
        masked = bias is not None and not bool(torch.isfinite(bias).all())
        log_normalizers, entropies = [], []
        with torch.no_grad():
            for start in range(0, hidden.shape[0], chunk_size):
                log_p = _upcast(torch.nn.functional.linear(hidden[start : start + chunk_size], weight, bias))
                log_normalizer = torch.logsumexp(log_p, dim=-1, keepdim=True)
                log_p.sub_(log_normalizer)
                p_log_p = log_p.exp().mul_(log_p)
                if masked:
                    p_log_p.nan_to_num_(nan=0.0)
                log_normalizers.append(log_normalizer)
                entropies.append(-p_log_p.sum(-1))
        entropy = torch.cat(entropies)
        ctx.save_for_backward(hidden, weight, bias, torch.cat(log_normalizers), entropy)
        ctx.chunk_size, ctx.masked = chunk_size, masked
        return entropy

    @staticmethod
    def backward(ctx, grad_entropy):
        hidden, weight, bias, log_normalizer, entropy = ctx.saved_tensors
        chunk_size = ctx.chunk_size
        want_hidden, want_weight, want_bias = ctx.needs_input_grad[:3]
        accumulate = torch.float64 if weight.dtype == torch.float64 else torch.float32
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=accumulate) if want_weight else None
        grad_bias = (
            torch.zeros(weight.shape[0], dtype=accumulate, device=weight.device) if want_bias else None
        )
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            chunk = hidden[rows]
            log_p = _upcast(torch.nn.functional.linear(chunk, weight, bias)).sub_(log_normalizer[rows])
            p = log_p.exp()
            # dH/dz = -p (log p + H), times the incoming gradient; computed in the log p buffer.
            grad_logits = log_p.add_(entropy[rows, None]).mul_(p).mul_(-grad_entropy[rows, None])
            del p
            if ctx.masked:
                grad_logits.nan_to_num_(nan=0.0)
            if want_hidden:
                grad_hidden[rows] = (grad_logits.to(weight.dtype) @ weight).to(hidden.dtype)
            if want_weight:
                grad_weight.addmm_(grad_logits.T.to(accumulate), chunk.to(accumulate))
            if want_bias:
                grad_bias.add_(grad_logits.sum(0).to(accumulate))
        if want_weight:
            grad_weight = grad_weight.to(weight.dtype)
        if want_bias:
            grad_bias = grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None
