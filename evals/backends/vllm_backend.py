"""vLLM offline backend (``LLM.chat``); EM-INF is enabled per request through ``extra_args``."""

from __future__ import annotations

from collections.abc import Sequence

from emreason.evals.backends import GenerationConfig


def em_inf_extra_args(config: GenerationConfig) -> dict | None:
    """The per-request switch read by ``emreason.integrations.vllm.EMInfLogitsProcessor``."""
    if not config.em_inf:
        return None
    return {"em_inf": 1, **{f"em_inf_{k}": v for k, v in config.em_inf_options.items()}}


class VLLMBackend:
    def __init__(self, model: str, config: GenerationConfig, **llm_options) -> None:
        from vllm import LLM

        self.config = config
        processors = []
        if config.em_inf:
            from emreason.integrations.vllm import EMInfLogitsProcessor

            processors = [EMInfLogitsProcessor]
        self.llm = LLM(model=model, seed=config.seed, logits_processors=processors, **llm_options)
        self.name = model

    def generate(self, conversations: Sequence[Sequence[dict[str, str]]], n: int = 1) -> list[list[str]]:
        from vllm import SamplingParams

        params = SamplingParams(
            n=n,
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            max_tokens=self.config.max_new_tokens,
            seed=self.config.seed,
            extra_args=em_inf_extra_args(self.config),
        )
        outputs = self.llm.chat([list(c) for c in conversations], params, use_tqdm=True)
        return [[choice.text for choice in output.outputs] for output in outputs]
