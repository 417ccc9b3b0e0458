"""EM-RL rewards (negative entropy) and group advantages, as pure tensor functions.

Shapes: ``B`` completions, ``T`` completion positions, ``G`` generations per prompt. Completions of one
prompt are consecutive rows (TRL's ``RepeatSampler`` order), so ``rewards.view(-1, G)`` groups them.
All values are in nats.
"""

from __future__ import annotations

import torch

__all__ = [
    "REWARD_AGGREGATIONS",
    "REWARD_TYPES",
    "ADVANTAGE_ESTIMATORS",
    "REWARD_SCALINGS",
    "entropy_reward",
    "group_advantages",
]

REWARD_TYPES = ("sequence", "token")
REWARD_AGGREGATIONS = ("sum", "mean")
ADVANTAGE_ESTIMATORS = ("rloo", "grpo")
REWARD_SCALINGS = ("none", "group", "batch")


def _check_mask(values: torch.Tensor, mask: torch.Tensor, name: str) -> None:
    if values.ndim != 2 or mask.shape != values.shape:
        raise ValueError(
            f"expected {name} [B, T] and mask of the same shape; got {tuple(values.shape)} and "
            f"{tuple(mask.shape)}"
        )


def entropy_reward(
    token_logprobs: torch.Tensor,
    token_entropies: torch.Tensor,
    mask: torch.Tensor,
    reward_type: str = "sequence",
    aggregation: str = "sum",
) -> torch.Tensor:
    """Negative-entropy reward of each completion, ``[B]``.

    - ``"sequence"``: ``r(y) = sum_t log pi(y_t | x, y_<t)`` (minus a one-sample estimate of the
      trajectory entropy).
    - ``"token"``: ``r(y) = -sum_t H(pi(. | x, y_<t))``.

    ``aggregation="sum"`` is the paper's definition; ``"mean"`` divides by the number of completion
    tokens, as the authors' veRL code does. Rows with no counted tokens get reward 0.

    Args:
        token_logprobs: ``[B, T]`` log-probabilities of the sampled tokens.
        token_entropies: ``[B, T]`` entropies of the distributions the tokens were sampled from.
        mask: ``[B, T]`` 1 for completion tokens, 0 for padding.
    """
    if reward_type not in REWARD_TYPES:
        raise ValueError(f"reward_type must be one of {REWARD_TYPES}, got {reward_type!r}")
    if aggregation not in REWARD_AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {REWARD_AGGREGATIONS}, got {aggregation!r}")
    values = token_logprobs if reward_type == "sequence" else -token_entropies
    _check_mask(values, mask, "token values")
    weights = mask.to(values.dtype)
    total = (values * weights).sum(-1)
    if aggregation == "sum":
        return total
    return total / weights.sum(-1).clamp_min(1)


def group_advantages(
    rewards: torch.Tensor, num_generations: int, estimator: str = "rloo", scale: str = "none"
) -> torch.Tensor:
    """Advantages ``[N]`` of ``N = P * G`` rewards grouped by prompt.

    - ``"rloo"``: ``A_i = r_i - mean_{j != i} r_j = G / (G - 1) * (r_i - mean_j r_j)``.
    - ``"grpo"``: ``A_i = r_i - mean_j r_j``.

    ``scale`` then divides by a standard deviation: ``"group"`` (TRL's GRPO default: each group to unit
    variance, which turns the tiny entropy differences between a prompt's rollouts into unit-size
    updates), ``"batch"`` (one std over all rewards) or ``"none"`` (the EM-RL default: the advantage keeps
    the size of the entropy difference it comes from).
    """
    if estimator not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"estimator must be one of {ADVANTAGE_ESTIMATORS}, got {estimator!r}")
    if scale not in REWARD_SCALINGS:
        raise ValueError(f"scale must be one of {REWARD_SCALINGS}, got {scale!r}")
    if num_generations < 2:
        raise ValueError(f"group advantages need num_generations >= 2, got {num_generations}")
    if rewards.ndim != 1 or rewards.numel() % num_generations:
        raise ValueError(
            f"rewards must be 1-D with a length divisible by num_generations={num_generations}; "
            f"got shape {tuple(rewards.shape)}"
        )
    grouped = rewards.view(-1, num_generations)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if estimator == "rloo":
        centred = centred * (num_generations / (num_generations - 1))
    if scale == "group":
        centred = centred / (grouped.std(dim=1, keepdim=True) + 1e-4)
    elif scale == "batch":
        centred = centred / (rewards.std() + 1e-4)
    return centred.reshape(-1)
