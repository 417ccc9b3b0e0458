"""Generation backends: Hugging Face ``generate`` (``hf``), vLLM offline (``vllm``), OpenAI-compatible server.

A backend turns prompts into completions: ``generate(prompts, n) -> list[list[str]]``, where every prompt of
one call is either chat messages (the ``chat`` format: the model's chat template) or plain text (``raw``:
no template; see :mod:`emreason.evals.prompts`). Completions end at the model's EOS ids and at the stop
strings (``<|im_end|>``, ``<|endoftext|>``, ``<|im_start|>`` and ``GenerationConfig.stop``), which are never
part of the returned text. vLLM is imported only inside :mod:`emreason.evals.backends.vllm_backend`.

Every backend sends the same sampling settings explicitly (top-k off, no repetition penalty unless asked),
because each library otherwise fills in the model's ``generation_config.json`` differently: transformers'
``generate`` and ``vllm serve`` apply its ``repetition_penalty`` / ``top_k`` (Qwen2.5-Instruct: 1.05 / 20),
offline ``LLM.chat`` with explicit ``SamplingParams`` does not. Qwen2.5-Math's evaluation uses neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class GenerationConfig:
    """Sampling settings shared by every backend. ``temperature == 0`` means greedy decoding."""

    max_new_tokens: int = 4096
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0  # 1.0 = off
    seed: int = 0
    batch_size: int = 16
    em_inf: bool = False
    em_inf_options: dict[str, Any] = field(default_factory=dict)
    stop: tuple[str, ...] = ()  # stop strings beyond emreason.evals.prompts.DEFAULT_STOP

    def __post_init__(self) -> None:
        from emreason.evals.prompts import stop_strings

        if isinstance(self.stop, str):  # tuple("ab") would be two one-letter stops
            raise ValueError(f"stop must be a sequence of strings, got the string {self.stop!r}")
        self.stop = tuple(self.stop)
        stop_strings(self.stop)  # rejects empty or non-string stops here, before any model loads
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.em_inf_options and not self.em_inf:
            raise ValueError(f"EM-INF options {sorted(self.em_inf_options)} given without em_inf (--em-inf)")
        if self.em_inf:
            # Checked here, before any engine starts or request is sent, naming the bad value.
            from emreason.em_inf import EMInfConfig

            try:
                EMInfConfig().replace(**self.em_inf_options)
            except (TypeError, ValueError) as error:
                raise ValueError(f"invalid EM-INF option(s) {self.em_inf_options}: {error}") from None

    @property
    def stop_strings(self) -> list[str]:
        """Every stop string: the defaults, then ``stop``."""
        from emreason.evals.prompts import stop_strings

        return stop_strings(self.stop)


def prompt_kind(prompts: Sequence[Any]) -> str:
    """``"raw"`` when every prompt is text, ``"chat"`` when every one is a message list; else an error."""
    raw = [isinstance(p, str) for p in prompts]
    if all(raw):
        return "raw"
    if not any(raw):
        return "chat"
    raise ValueError("one generate call mixes raw-text and chat prompts; send each format separately")


class BackendError(RuntimeError):
    """A backend cannot serve the run: server unreachable, model not served, processor missing..."""


def make_backend(name: str, model: str, config: GenerationConfig, **options: Any):
    """``hf`` | ``vllm`` (``model`` may be an ``http(s)://`` server URL, then the OpenAI client is used)."""
    if name == "hf":
        from emreason.evals.backends.hf import HFBackend

        return HFBackend(model, config, **options)
    if name == "vllm":
        if model.startswith(("http://", "https://")):
            from emreason.evals.backends.openai_server import OpenAIServerBackend

            return OpenAIServerBackend(model, config, **options)
        from emreason.evals.backends.vllm_backend import VLLMBackend

        return VLLMBackend(model, config, **options)
    raise ValueError(f"unknown backend {name!r}; use 'hf' or 'vllm'")
