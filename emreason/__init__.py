"""emreason: entropy minimization for LLM reasoning (EM-FT, EM-RL, EM-INF), SpectraLDS, and extras.

Public names are imported lazily, so ``import emreason`` stays cheap and does not pull in TRL.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "token_entropy": "emreason.entropy",
    "sequence_logprob": "emreason.entropy",
    "entropy_from_hidden": "emreason.entropy",
    "EMInfConfig": "emreason.em_inf",
    "minimize_entropy": "emreason.em_inf",
    "adaptive_temperature": "emreason.em_inf",
    "EMFTConfig": "emreason.trainers",
    "EMFTTrainer": "emreason.trainers",
    "EMRLConfig": "emreason.trainers",
    "EMRLTrainer": "emreason.trainers",
}

__all__ = [
    "EMFTConfig",
    "EMFTTrainer",
    "EMInfConfig",
    "EMRLConfig",
    "EMRLTrainer",
    "__version__",
    "adaptive_temperature",
    "entropy_from_hidden",
    "minimize_entropy",
    "sequence_logprob",
    "token_entropy",
]

if TYPE_CHECKING:  # pragma: no cover
    from emreason.em_inf import EMInfConfig, adaptive_temperature, minimize_entropy
    from emreason.entropy import entropy_from_hidden, sequence_logprob, token_entropy
    from emreason.trainers import EMFTConfig, EMFTTrainer, EMRLConfig, EMRLTrainer


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'emreason' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
