"""EM-INF and the adaptive-temperature baseline as ``transformers`` logits processors.

    >>> from transformers import LogitsProcessorList
    >>> from emreason.integrations.transformers import EMInfLogitsProcessor
    >>> model.generate(**batch, do_sample=True, temperature=1.0,
    ...                logits_processor=LogitsProcessorList([EMInfLogitsProcessor(steps=10, threshold=0.1)]))

``generate`` runs user processors before its own temperature / top-k / top-p warpers, so, as in vLLM, the
request's sampling settings apply to the entropy-minimized logits. It runs them *after* its own
processors, repetition penalty included, which Qwen2.5-Instruct's generation config turns on (1.05); the
EM-INF authors adjust the raw logits before any penalty. `em_inf_generate_kwargs` restores their order:

    >>> kwargs = em_inf_generate_kwargs(EMInfLogitsProcessor(), model.generation_config,
    ...                                 attention_mask=batch["attention_mask"])
    >>> model.generate(**batch, do_sample=True, **kwargs)
"""

from __future__ import annotations

import dataclasses

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from emreason.em_inf import (
    AdaptiveTemperatureConfig,
    EMInfConfig,
    EMInfWorkspace,
    adaptive_temperature,
    minimize_entropy,
)

__all__ = [
    "EMInfLogitsProcessor",
    "AdaptiveTemperatureLogitsProcessor",
    "em_inf_generate_kwargs",
    "PROCESSOR_ORDERS",
]

PROCESSOR_ORDERS = ("first", "after_penalties")


class EMInfLogitsProcessor(LogitsProcessor):
    """EM-INF on every row of ``scores`` (``[B, V]``) at every decoding step.

    Args:
        config: the EM-INF hyper-parameters (``EMInfConfig()`` when None).
        **overrides: fields of ``EMInfConfig`` to change, e.g. ``steps=10, threshold=0.1``.
    """

    def __init__(self, config: EMInfConfig | None = None, **overrides) -> None:
        if config is not None and not isinstance(config, EMInfConfig):
            raise TypeError(f"config must be an EMInfConfig, got {type(config).__name__}")
        self.config = (config or EMInfConfig()).replace(**overrides)
        self._workspace = EMInfWorkspace()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return minimize_entropy(scores, self.config, workspace=self._workspace).to(scores.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


class AdaptiveTemperatureLogitsProcessor(LogitsProcessor):
    """The paper's adaptive-temperature baseline (Algorithm 1) on every row of ``scores``.

    Args:
        config: ``AdaptiveTemperatureConfig()`` when None.
        **overrides: fields of ``AdaptiveTemperatureConfig`` to change, e.g. ``alpha=0.5``.
    """

    def __init__(self, config: AdaptiveTemperatureConfig | None = None, **overrides) -> None:
        if config is not None and not isinstance(config, AdaptiveTemperatureConfig):
            raise TypeError(f"config must be an AdaptiveTemperatureConfig, got {type(config).__name__}")
        base = config or AdaptiveTemperatureConfig()
        self.config = dataclasses.replace(base, **overrides)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return adaptive_temperature(scores, self.config).to(scores.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


def em_inf_generate_kwargs(
    processor: LogitsProcessor,
    generation_config: GenerationConfig | None = None,
    *,
    repetition_penalty: float | None = None,
    attention_mask: torch.Tensor | None = None,
    order: str = "first",
) -> dict:
    """``generate`` keyword arguments that run ``processor`` (EM-INF) in the chosen place.

    ``order="first"`` (the default, the authors' order): EM-INF sees the model's raw logits and the
    repetition penalty applies to its output. ``generate`` itself would run a user processor after its
    repetition penalty, so its own penalty is switched off for the call (``repetition_penalty=1.0``) and
    the same penalty is re-added as a processor after EM-INF (with ``generate``'s left-padding handling).
    ``order="after_penalties"``: ``generate``'s own order (penalty, then EM-INF).

    Only the repetition penalty moves. ``generate``'s masking processors (``min_new_tokens``,
    ``bad_words_ids``, ``no_repeat_ngram_size``, ...) still run before EM-INF, which then optimizes over
    the tokens they allow; temperature / top-k / top-p run after it either way.

    Args:
        processor: the EM-INF (or adaptive-temperature) processor.
        generation_config: the model's (``model.generation_config``); ``GenerationConfig()`` when None.
        repetition_penalty: overrides the config's value (what ``generate(repetition_penalty=...)``
            would), > 0.
        attention_mask: the batch's ``[B, T]`` mask; with left padding it keeps pad tokens out of the
            penalty, as ``generate`` does.
        order: one of `PROCESSOR_ORDERS`.

    Returns:
        ``generate`` keyword arguments: ``logits_processor`` and, when a penalty is set,
        ``repetition_penalty`` (do not pass that one to ``generate`` yourself). The model's generation
        config is not changed.
    """
    if order not in PROCESSOR_ORDERS:
        raise ValueError(f"order must be one of {PROCESSOR_ORDERS}, got {order!r}")
    if repetition_penalty is not None:
        if isinstance(repetition_penalty, bool) or not repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty!r}")
        penalty = float(repetition_penalty)
    else:
        penalty = (generation_config or GenerationConfig()).repetition_penalty
    if penalty is None or penalty == 1.0:
        return {"logits_processor": LogitsProcessorList([processor])}
    if order == "after_penalties":
        return {"logits_processor": LogitsProcessorList([processor]), "repetition_penalty": penalty}
    # generate's own rule: a left-padded row's first real token is its first non-zero mask entry.
    ignore = None if attention_mask is None else (attention_mask != 0).int().argmax(dim=1)
    penalty_processor = RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=ignore)
    # repetition_penalty=1.0 turns generate's own (earlier) penalty off for this call only.
    return {
        "logits_processor": LogitsProcessorList([processor, penalty_processor]),
        "repetition_penalty": 1.0,
    }
