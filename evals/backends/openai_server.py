"""OpenAI-compatible server backend (e.g. ``vllm serve``): chat completions for chat prompts, the
``completions`` endpoint for raw text; EM-INF via ``vllm_xargs``.

Stops: every request sends the stop strings as ``stop``; the server adds its model's EOS ids (vLLM reads
``generation_config.json``). Stop strings that are single tokens are also sent as ``stop_token_ids``
(vLLM matches ``stop`` on text without special tokens, so ``<|im_start|>`` would otherwise pass): their
ids come from vLLM's ``/tokenize`` at start-up; a server without it gets the strings only. Each returned
text is cut at the first stop string again.

Checked once at start-up, each failure a :class:`BackendError` naming the cause: the server answers
``/v1/models``; the requested model is one it serves; with EM-INF, the server runs the EM-INF processor
(a probe with an invalid switch must come back 400, since vLLM passes unknown ``vllm_xargs`` through
silently) and accepts this run's EM-INF options.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from emreason.evals.backends import BackendError, GenerationConfig, prompt_kind
from emreason.evals.backends.vllm_backend import MISSING_PROCESSOR, PROBE_EXTRA_ARGS, em_inf_extra_args
from emreason.evals.prompts import Prompt, cut_at_stop

PROBE_MESSAGES = [{"role": "user", "content": "0"}]


class OpenAIServerBackend:
    """Chat completions against ``url`` (with or without the ``/v1`` suffix), ``concurrency`` at a time.

    Args:
        url: ``http(s)://host:port`` of the server.
        config: sampling settings; sent explicitly with every request (see :mod:`..backends`).
        served_model: the model name to request; default: the server's only (first) model.
        api_key: whatever the server expects (vLLM: ``--api-key``, else anything).
        concurrency: requests in flight (vLLM batches them on the server).
        timeout_s: per-request HTTP timeout in seconds.
        max_retries: the OpenAI client's retries on connection errors and 5xx.
    """

    def __init__(
        self,
        url: str,
        config: GenerationConfig,
        served_model: str | None = None,
        api_key: str = "EMPTY",
        concurrency: int = 16,
        timeout_s: float = 600.0,
        max_retries: int = 2,
    ) -> None:
        import openai

        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.config = config
        base = url.rstrip("/")
        self.base_url = base if base.endswith("/v1") else base + "/v1"
        self.client = openai.OpenAI(
            base_url=self.base_url, api_key=api_key, timeout=timeout_s, max_retries=max_retries
        )
        served = self._served_models()
        if served_model is not None and served_model not in served:
            raise BackendError(
                f"the server at {self.base_url} does not serve {served_model!r}; it serves {served} "
                "(--served-model must be one of these)"
            )
        self.model = served_model or served[0]
        self.concurrency = concurrency
        self.stops = config.stop_strings
        self.stop_ids = self._single_token_ids(self.stops, timeout_s)
        self.extra_body: dict[str, Any] = {
            "top_k": config.top_k,
            "repetition_penalty": config.repetition_penalty,
        }
        if self.stop_ids:
            self.extra_body["stop_token_ids"] = self.stop_ids
        extra = em_inf_extra_args(config)
        if extra is not None:
            self._check_em_inf(extra)
            self.extra_body["vllm_xargs"] = extra
        self.name = f"{url}#{self.model}"

    def _served_models(self) -> list[str]:
        import openai

        try:
            served = [model.id for model in self.client.models.list().data]
        except openai.APIConnectionError as error:
            raise BackendError(
                f"cannot reach an OpenAI-compatible server at {self.base_url} ({error}); "
                "is `vllm serve` running there?"
            ) from None
        except openai.APIStatusError as error:
            raise BackendError(
                f"{self.base_url}/models answered HTTP {error.status_code}: {error.message}"
            ) from None
        if not served:
            raise BackendError(f"the server at {self.base_url} serves no models")
        return served

    def _single_token_ids(self, texts: Sequence[str], timeout_s: float) -> list[int]:
        """Sorted ids of the ``texts`` the served tokenizer encodes as one token (vLLM's ``/tokenize``);
        empty when the server has no such endpoint."""
        root = self.base_url[: -len("/v1")]
        ids = set()
        for text in texts:
            body = {"model": self.model, "prompt": text, "add_special_tokens": False}
            request = urllib.request.Request(
                f"{root}/tokenize", json.dumps(body).encode(), {"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=timeout_s) as response:
                    tokens = json.loads(response.read()).get("tokens")
            except (urllib.error.URLError, OSError, ValueError, AttributeError):
                return []  # not vLLM (or no tokenizer endpoint): stop strings only
            if not isinstance(tokens, list):
                return []
            if len(tokens) == 1:
                ids.add(int(tokens[0]))
        return sorted(ids)

    def _probe(self, xargs: dict[str, Any]) -> None:
        self.client.chat.completions.create(
            model=self.model, messages=PROBE_MESSAGES, max_tokens=1, temperature=0.0,
            extra_body={"vllm_xargs": xargs},
        )  # fmt: skip

    def _check_em_inf(self, extra: dict[str, Any]) -> None:
        import openai

        try:
            self._probe(PROBE_EXTRA_ARGS)
        except openai.BadRequestError as error:
            if "em_inf" not in str(error):
                raise BackendError(f"EM-INF probe rejected for another reason: {error}") from None
        else:
            raise BackendError(f"server at {self.base_url}: {MISSING_PROCESSOR}")
        try:  # the server's processor may have other defaults or checks: ask it about these options
            self._probe(extra)
        except openai.BadRequestError as error:
            raise ValueError(f"the server rejected the EM-INF options {extra}: {error.message}") from None

    def _one(self, prompt: Prompt, n: int) -> list[str]:
        import openai

        settings = {
            "model": self.model,
            "n": n,
            "temperature": self.config.temperature,
            "top_p": self.config.top_p,
            "max_tokens": self.config.max_new_tokens,
            "seed": self.config.seed,
            "stop": self.stops,
            "extra_body": self.extra_body,
        }
        try:
            if isinstance(prompt, str):  # raw text: the completions endpoint, no chat template
                response = self.client.completions.create(prompt=prompt, **settings)
            else:
                response = self.client.chat.completions.create(messages=list(prompt), **settings)
        except openai.APIConnectionError as error:
            raise BackendError(f"lost the server at {self.base_url}: {error} (rerun to resume)") from None
        except openai.APIStatusError as error:
            raise BackendError(
                f"the server at {self.base_url} answered HTTP {error.status_code}: {error.message}"
            ) from None
        if len(response.choices) != n:
            raise BackendError(f"asked the server for n={n} completions, got {len(response.choices)}")
        choices = sorted(response.choices, key=lambda choice: choice.index)
        if isinstance(prompt, str):
            texts = [choice.text or "" for choice in choices]
        else:
            texts = [choice.message.content or "" for choice in choices]
        return [cut_at_stop(text, self.stops) for text in texts]

    def generate(self, prompts: Sequence[Prompt], n: int = 1) -> list[list[str]]:
        """``n`` completions per prompt (all chat or all raw), ``concurrency`` requests at a time."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not prompts:
            return []
        prompt_kind(prompts)  # one format per call, as the other backends require
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda p: self._one(p, n), prompts))
