"""Accuracy of a causal LM on held-out toy problems, by HF ``generate`` (batched, left padding)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessorList

from emreason.entropy import token_entropy
from emreason.toy.task import ToyProblem, grade


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default); (0, 1) when n == 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # Clamp to [0, 1] and keep p inside the interval despite rounding.
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


@dataclass
class ToyEvalResult:
    """Accuracy (fraction), its 95% Wilson interval, and the mean raw-model token entropy (nats)."""

    accuracy: float
    ci_low: float
    ci_high: float
    n: int
    mean_entropy: float
    completions: list[str] = field(repr=False, default_factory=list)
    correct: list[bool] = field(repr=False, default_factory=list)

    def summary(self) -> dict:
        return {
            "accuracy": round(self.accuracy, 4),
            "ci95": [round(self.ci_low, 4), round(self.ci_high, 4)],
            "n": self.n,
            "mean_token_entropy": round(self.mean_entropy, 4),
        }


@dataclass
class ToyGenerations:
    """What `generate_toy` returns, one entry per prompt: the decoded completion, its mean raw-model
    token entropy (nats, over generated positions up to and including the first EOS) and its number of
    generated tokens (up to and including the first EOS; the compute a sample costs)."""

    completions: list[str]
    mean_entropies: list[float]
    token_counts: list[int]


@torch.no_grad()
def generate_toy(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    temperature: float = 0.0,
    seed: int = 0,
    max_new_tokens: int = 64,
    batch_size: int = 256,
    logits_processor: LogitsProcessorList | None = None,
) -> ToyGenerations:
    """Chat-formatted, left-padded batched generation for ``prompts``.

    ``temperature == 0`` means greedy decoding. Sampling is seeded once per call, so a fixed
    (prompts, batch_size, seed) triple reproduces exactly; the global RNG state is restored afterwards.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    was_training = model.training
    model.eval()
    tokenizer.padding_side = "left"
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    completions: list[str] = []
    entropies: list[float] = []
    token_counts: list[int] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            texts = [
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
                )
                for p in chunk
            ]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
                model.device
            )
            sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
            out = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                **(sampling if temperature > 0 else {"do_sample": False}),
                logits_processor=logits_processor,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                return_dict_in_generate=True,
                output_logits=True,
            )
            new_tokens = out.sequences[:, batch["input_ids"].shape[1] :]
            # Entropy of the raw model distribution at each generated position, up to and incl. EOS.
            step_entropy = torch.stack([token_entropy(step) for step in out.logits], dim=1)
            is_eos = (new_tokens == tokenizer.eos_token_id).int()
            alive = (torch.cumsum(is_eos, dim=1) - is_eos) == 0  # generated positions up to the first EOS
            counts = alive.sum(1)
            token_counts.extend(counts.tolist())
            entropies.extend(((step_entropy * alive).sum(1) / counts.clamp_min(1)).tolist())
            completions.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        torch.random.set_rng_state(generator_state)
        model.train(was_training)
    return ToyGenerations(completions, entropies, token_counts)


def generate_completions(
    model, tokenizer, prompts: Sequence[str], **generation: Any
) -> tuple[list[str], list[float]]:
    """Completions and their mean raw token entropies (nats); ``generation`` as in `generate_toy`."""
    result = generate_toy(model, tokenizer, prompts, **generation)
    return result.completions, result.mean_entropies


def evaluate_toy(model, tokenizer, problems: Sequence[ToyProblem], **generation: Any) -> ToyEvalResult:
    """Held-out accuracy of ``model`` on ``problems``; ``generation`` goes to `generate_completions`
    (``temperature`` 0 = greedy, ``seed``, ``max_new_tokens``, ``batch_size``, ``logits_processor``)."""
    if not problems:
        raise ValueError("problems is empty")
    completions, entropies = generate_completions(
        model, tokenizer, [p.prompt for p in problems], **generation
    )
    correct = [grade(c, p.answer) for c, p in zip(completions, problems)]
    low, high = wilson_interval(sum(correct), len(correct))
    return ToyEvalResult(
        accuracy=sum(correct) / len(correct),
        ci_low=low,
        ci_high=high,
        n=len(correct),
        mean_entropy=float(sum(entropies) / len(entropies)),
        completions=completions,
        correct=correct,
    )
