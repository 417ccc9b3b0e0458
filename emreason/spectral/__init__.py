"""SpectraLDS: spectral (STU) layers, their provable distillation to linear dynamical systems, and a
transformers causal LM that decodes in constant time per token once distilled.

Importing this package registers ``SpectraLDSConfig`` / ``SpectraLDSForCausalLM`` with ``AutoConfig`` and
``AutoModelForCausalLM`` (model type ``"spectralds"``).
"""

from transformers import AutoConfig, AutoModelForCausalLM

from .conv import causal_conv_fft
from .filters import hankel_matrix, recommended_num_filters, spectral_filters
from .lds import LDS, DistillationError, distill_lds, impulse_responses, tail_energy
from .modeling import SpectraLDSConfig, SpectraLDSForCausalLM, SpectraLDSModel, to_lds
from .stu import LDSSTU, STU

AutoConfig.register(SpectraLDSConfig.model_type, SpectraLDSConfig, exist_ok=True)
AutoModelForCausalLM.register(SpectraLDSConfig, SpectraLDSForCausalLM, exist_ok=True)

__all__ = [
    "causal_conv_fft",
    "hankel_matrix",
    "recommended_num_filters",
    "spectral_filters",
    "LDS",
    "DistillationError",
    "distill_lds",
    "impulse_responses",
    "tail_energy",
    "STU",
    "LDSSTU",
    "SpectraLDSConfig",
    "SpectraLDSForCausalLM",
    "SpectraLDSModel",
    "to_lds",
]
