"""Hooks into Hugging Face ``generate`` used by both EM trainers' rollouts.

- `RolloutStatsRecorder` records, while the rollout is sampled, each generated token's log-probability
  and the entropy of the distribution it was drawn from, so EM-RL's reward needs no extra forward pass.
- `PerSampleGumbelSampler` draws each row's tokens from its own seeded stream (Gumbel-max), so a rollout
  does not depend on how the batch is split across processes (used to check DDP parity).
- `shadow_generate` routes the ``generate`` call TRL makes internally through a hook.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from transformers import LogitsProcessor

from emreason.entropy import log_softmax_entropy

__all__ = ["RolloutStatsRecorder", "PerSampleGumbelSampler", "shadow_generate"]


class RolloutStatsRecorder(LogitsProcessor):
    """Records per-step entropy and sampled-token log-probability of the model's raw distribution.

    Custom processors run before ``generate``'s temperature/top-k/top-p warpers, so the scores seen here
    are the model's own distribution (temperature 1). The token sampled at step ``t`` is only known at
    step ``t + 1`` (it is then the last column of ``input_ids``), so the step's log-softmax ``[B, V]`` is
    kept for one step; `finish` scores the final step.
    """

    def __init__(self) -> None:
        self.entropies: list[torch.Tensor] = []  # one [B] per step
        self.logprobs: list[torch.Tensor] = []  # one [B] per step, for the token sampled at that step
        self._previous_log_softmax: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._previous_log_softmax is not None:
            chosen = input_ids[:, -1:].to(scores.device)
            self.logprobs.append(self._previous_log_softmax.gather(-1, chosen).squeeze(-1))
        # One normalisation per generated token gives both statistics (this runs on [B, V] every step).
        self._previous_log_softmax, entropy = log_softmax_entropy(scores)
        self.entropies.append(entropy)
        return scores

    def finish(self, sequences: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logprobs [B, S], entropies [B, S])`` of the rollout's ``S`` generated positions.

        ``sequences`` is ``generate``'s output (prompt + completion); its last column is the token
        sampled at the final step.
        """
        if self._previous_log_softmax is None:
            raise RuntimeError("RolloutStatsRecorder saw no generation step; was it passed to generate()?")
        last = sequences[:, -1:].to(self._previous_log_softmax.device)
        logprobs = self.logprobs + [self._previous_log_softmax.gather(-1, last).squeeze(-1)]
        self._previous_log_softmax = None
        return torch.stack(logprobs, dim=1), torch.stack(self.entropies, dim=1)


class PerSampleGumbelSampler(LogitsProcessor):
    """Exact sampling from ``softmax(scores / T)`` with one seeded noise stream per row.

    Adds Gumbel noise to the tempered scores; under greedy decoding the argmax is then a sample of the
    categorical distribution (Gumbel-max trick). Row ``i`` draws from a generator seeded with
    ``seeds[i]``, so its tokens do not depend on which rows share its batch or process.
    """

    def __init__(self, seeds: list[int], temperature: float) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")
        self.temperature = temperature
        self.generators = []
        for seed in seeds:
            generator = torch.Generator()
            generator.manual_seed(int(seed) % (2**63))
            self.generators.append(generator)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.generators):
            raise ValueError(f"batch of {scores.shape[0]} rows but {len(self.generators)} seeds")
        uniform = torch.stack(
            [torch.rand(scores.shape[1], generator=g, dtype=torch.float64) for g in self.generators]
        ).to(scores.device)
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-300, 1.0 - 1e-16)))
        return scores.float() / self.temperature + gumbel.float()


@contextlib.contextmanager
def shadow_generate(model: torch.nn.Module, hook: Callable) -> Iterator[None]:
    """Within the block, ``model.generate(*args, **kwargs)`` runs ``hook(original, *args, **kwargs)``.

    TRL calls ``generate`` on the unwrapped model deep inside its rollout code; shadowing the bound
    method on that one object is the least intrusive way to add processors to that call.
    """
    had_instance_attribute = "generate" in vars(model)
    original = model.generate

    def hooked(*args, **kwargs):
        return hook(original, *args, **kwargs)

    model.generate = hooked
    try:
        yield
    finally:
        if had_instance_attribute:
            model.generate = original
        else:
            del model.generate
