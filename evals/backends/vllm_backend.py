"""vLLM offline backend: ``LLM.chat`` (chat prompts) or ``LLM.generate`` (raw text); EM-INF per request.

Stops: ``SamplingParams.stop`` holds every stop string and ``stop_token_ids`` the ids of
:func:`~emreason.evals.prompts.stop_token_ids` (EOS of the model's generation config and tokenizer, and the
stop strings that are single added tokens: vLLM matches stop strings on text without special tokens, so
``<|im_start|>`` would otherwise pass). vLLM leaves stops out of the text; each text is cut at the first
stop string again all the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from emreason.evals.backends import BackendError, GenerationConfig, prompt_kind
from emreason.evals.prompts import Prompt, cut_at_stop, stop_token_ids


def em_inf_extra_args(config: GenerationConfig) -> dict | None:
    """The per-request switch read by ``emreason.integrations.vllm.EMInfLogitsProcessor``."""
    if not config.em_inf:
        return None
    return {"em_inf": 1, **{f"em_inf_{k}": v for k, v in config.em_inf_options.items()}}


# A value the EM-INF processor must reject: a 400 / ValueError naming it proves the processor is loaded,
# an ordinary completion proves it is not (vLLM passes unknown vllm_xargs keys through silently).
PROBE_EXTRA_ARGS = {"em_inf": 2}
MISSING_PROCESSOR = (
    "the EM-INF logits processor is not loaded, so em_inf requests would decode without it; "
    "install emreason where vLLM runs (its `em_inf` entry point loads it) or pass "
    "--logits-processors emreason.integrations.vllm:EMInfLogitsProcessor / "
    "LLM(logits_processors=[EMInfLogitsProcessor])"
)


def engine_has_em_inf(llm: Any) -> bool:
    """Whether ``llm`` (a ``vllm.LLM``) validates requests with the EM-INF processor (a 1-token probe)."""
    from vllm import SamplingParams

    try:
        from vllm.exceptions import VLLMValidationError  # vLLM 0.32 wraps the processor's ValueError
    except ImportError:  # older vLLM: the ValueError itself
        VLLMValidationError = ValueError  # noqa: N806

    try:
        llm.generate(["0"], SamplingParams(max_tokens=1, extra_args=PROBE_EXTRA_ARGS), use_tqdm=False)
    except (ValueError, VLLMValidationError) as error:
        return "em_inf" in str(error)
    return False


class VLLMBackend:
    """``LLM.chat`` over whole batches (vLLM schedules them); ``n`` samples per conversation.

    Args:
        model: local checkpoint folder or hub id.
        config: sampling settings; ``config.em_inf`` loads the EM-INF processor into the engine.
        dtype: ``"auto"`` is vLLM's choice, which runs float32 checkpoints in bfloat16 (float16 on some
            GPUs); pass ``"float32"`` to decode what the HF backend decodes in float32.
        llm: an existing ``vllm.LLM`` to reuse (its processors must include EM-INF for ``em_inf``: the
            ``em_inf`` entry point adds it to every engine once emreason is installed).
        **llm_options: more ``vllm.LLM`` arguments (``enforce_eager``, ``max_model_len``, ...).
    """

    def __init__(
        self,
        model: str,
        config: GenerationConfig,
        dtype: str = "auto",
        llm: Any | None = None,
        **llm_options: Any,
    ) -> None:
        self.config = config
        self.extra_args = em_inf_extra_args(config)
        if self.extra_args is not None:
            from emreason.integrations.vllm import parse_request

            try:  # the processor's own parser: the request would be rejected the same way
                parse_request(self.extra_args)
            except ValueError as error:
                raise ValueError(f"invalid EM-INF options for vLLM: {error}") from None
        if llm is None:
            from vllm import LLM

            processors = []
            if config.em_inf:
                from emreason.integrations.vllm import EMInfLogitsProcessor

                processors = [EMInfLogitsProcessor]
            llm = LLM(model=model, seed=config.seed, dtype=dtype, logits_processors=processors, **llm_options)
        self.llm = llm
        if config.em_inf and not engine_has_em_inf(llm):
            raise BackendError(f"vLLM engine for {model}: {MISSING_PROCESSOR}")
        self.name = model
        self.stops = config.stop_strings
        self.stop_ids = stop_token_ids(llm.get_tokenizer(), _generation_eos(llm), self.stops)

    def sampling_params(self, n: int):
        from vllm import SamplingParams

        return SamplingParams(
            n=n,
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            top_k=self.config.top_k,
            repetition_penalty=self.config.repetition_penalty,
            max_tokens=self.config.max_new_tokens,
            seed=self.config.seed,
            stop=self.stops,
            stop_token_ids=self.stop_ids,
            extra_args=self.extra_args,
        )

    def generate(self, prompts: Sequence[Prompt], n: int = 1) -> list[list[str]]:
        """``n`` completions per prompt: chat messages via ``LLM.chat``, raw text via ``LLM.generate``."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not prompts:
            return []
        params = self.sampling_params(n)
        if prompt_kind(prompts) == "raw":
            outputs = self.llm.generate(list(prompts), params, use_tqdm=False)
        else:
            outputs = self.llm.chat([list(c) for c in prompts], params, use_tqdm=False)
        return [[cut_at_stop(choice.text, self.stops) for choice in output.outputs] for output in outputs]


def _generation_eos(llm: Any) -> Any:
    """The EOS id(s) in the engine's model ``generation_config.json`` (None when it has none)."""
    try:
        return llm.llm_engine.model_config.try_get_generation_config().get("eos_token_id")
    except AttributeError:  # an engine without this accessor: the tokenizer's EOS still applies
        return None
