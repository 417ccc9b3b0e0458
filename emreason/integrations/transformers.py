"""EM-INF and the adaptive-temperature baseline as ``transformers`` logits processors.

    >>> from transformers import LogitsProcessorList
    >>> from emreason.integrations.transformers import EMInfLogitsProcessor
    >>> model.generate(**batch, do_sample=True, temperature=1.0,
    ...                logits_processor=LogitsProcessorList([EMInfLogitsProcessor(steps=10, threshold=0.1)]))

``generate`` runs user processors before its own temperature / top-k / top-p warpers, so, as in vLLM, the
request's sampling settings apply to the entropy-minimized logits.
"""

from __future__ import annotations

import dataclasses

import torch
from transformers import LogitsProcessor

from emreason.em_inf import (
    AdaptiveTemperatureConfig,
    EMInfConfig,
    EMInfWorkspace,
    adaptive_temperature,
    minimize_entropy,
)

__all__ = ["EMInfLogitsProcessor", "AdaptiveTemperatureLogitsProcessor"]


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
