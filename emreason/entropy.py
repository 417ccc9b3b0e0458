"""The one home of entropy and log-probability math in emreason.

All entropies are Shannon entropies in nats. Half-precision inputs are upcast to float32 before any
reduction (a bfloat16 softmax over 150k tokens loses most of the tail mass). Entries equal to ``-inf``
are masked tokens: they carry zero probability and contribute exactly zero to the entropy.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["token_entropy", "sequence_logprob", "entropy_from_hidden", "SequenceLogProb"]


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

    The full ``[tokens, V]`` logits are never alive at once, in the forward or the backward pass:
    each chunk is wrapped in activation checkpointing, so only its ``[chunk_size, V]`` logits exist
    while it is processed and they are recomputed during backward. This is what keeps an EM-FT step's
    peak memory at or below a plain SFT step (whose loss materializes all logits).

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
    needs_grad = torch.is_grad_enabled() and (
        flat.requires_grad or lm_head_weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    pieces = []
    for start in range(0, flat.shape[0], chunk_size):
        chunk = flat[start : start + chunk_size]
        if needs_grad:
            pieces.append(
                torch.utils.checkpoint.checkpoint(
                    _chunk_entropy, chunk, lm_head_weight, bias, use_reentrant=False
                )
            )
        else:
            pieces.append(_chunk_entropy(chunk, lm_head_weight, bias))
    if not pieces:
        return flat.new_zeros(leading, dtype=_upcast(flat).dtype)
    return torch.cat(pieces).reshape(leading)


def _chunk_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    logits = torch.nn.functional.linear(hidden, weight, bias)
    return token_entropy(logits, dim=-1)
