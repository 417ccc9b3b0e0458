"""EM-RL reward and advantage functions against direct float64 loops."""

from __future__ import annotations

import pytest
import torch

from emreason.trainers.rewards import entropy_reward, group_advantages


def _random_stats(seed=0, batch=6, length=7):
    g = torch.Generator().manual_seed(seed)
    logprobs = -torch.rand(batch, length, generator=g, dtype=torch.float64) * 3
    entropies = torch.rand(batch, length, generator=g, dtype=torch.float64) * 2
    lengths = torch.randint(0, length + 1, (batch,), generator=g)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    return logprobs, entropies, mask, lengths


@pytest.mark.parametrize("reward_type", ["sequence", "token"])
@pytest.mark.parametrize("aggregation", ["sum", "mean"])
def test_entropy_reward_matches_loop(reward_type, aggregation):
    logprobs, entropies, mask, lengths = _random_stats()
    got = entropy_reward(logprobs, entropies, mask, reward_type, aggregation)
    for row, n in enumerate(lengths.tolist()):
        values = logprobs[row, :n] if reward_type == "sequence" else -entropies[row, :n]
        expected = sum(values.tolist())
        if aggregation == "mean":
            expected = expected / n if n else 0.0
        assert got[row].item() == pytest.approx(expected, abs=1e-12)


def test_rloo_is_leave_one_out_baseline():
    rewards = torch.tensor([1.0, 2.0, 4.0, -3.0, 0.5, 0.5, 7.0, 1.0], dtype=torch.float64)
    got = group_advantages(rewards, 4, "rloo", "none")
    for i, r in enumerate(rewards.tolist()):
        group = rewards[(i // 4) * 4 : (i // 4) * 4 + 4].tolist()
        others = group[: i % 4] + group[i % 4 + 1 :]
        assert got[i].item() == pytest.approx(r - sum(others) / len(others), abs=1e-12)


def test_grpo_scalings():
    rewards = torch.tensor([1e-3, 2e-3, 4e-3, 3e-3], dtype=torch.float64)
    centred = rewards - rewards.mean()
    assert torch.allclose(group_advantages(rewards, 4, "grpo", "none"), centred)
    # Group scaling blows a 1e-3 spread up to unit size; that is why it is not the EM-RL default.
    scaled = group_advantages(rewards, 4, "grpo", "group")
    assert scaled.std().item() == pytest.approx(1.0, rel=0.1)
    assert torch.allclose(
        group_advantages(rewards, 2, "grpo", "batch"),
        (rewards - torch.tensor([1.5e-3, 1.5e-3, 3.5e-3, 3.5e-3], dtype=torch.float64))
        / (rewards.std() + 1e-4),
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(estimator="ppo"), "estimator"),
        (dict(scale="unit"), "scale"),
        (dict(num_generations=3), "divisible"),
        (dict(num_generations=1), "num_generations >= 2"),
    ],
)
def test_group_advantages_rejects_bad_input(kwargs, match):
    params = dict(num_generations=2, estimator="rloo", scale="none") | kwargs
    with pytest.raises(ValueError, match=match):
        group_advantages(torch.zeros(4), **params)


def test_entropy_reward_rejects_bad_input():
    logprobs, entropies, mask, _ = _random_stats()
    with pytest.raises(ValueError, match="reward_type"):
        entropy_reward(logprobs, entropies, mask, "trajectory")
    with pytest.raises(ValueError, match="aggregation"):
        entropy_reward(logprobs, entropies, mask, "token", "max")
    with pytest.raises(ValueError, match="same shape"):
        entropy_reward(logprobs, entropies, mask[:, :3], "token")
