"""OpenAI-compatible server backend (e.g. ``vllm serve``): chat completions, EM-INF via ``vllm_xargs``."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from emreason.evals.backends import GenerationConfig
from emreason.evals.backends.vllm_backend import em_inf_extra_args


class OpenAIServerBackend:
    def __init__(
        self,
        url: str,
        config: GenerationConfig,
        served_model: str | None = None,
        api_key: str = "EMPTY",
        concurrency: int = 16,
    ) -> None:
        from openai import OpenAI

        self.config = config
        base = url.rstrip("/")
        self.client = OpenAI(base_url=base if base.endswith("/v1") else base + "/v1", api_key=api_key)
        self.model = served_model or self.client.models.list().data[0].id
        self.concurrency = concurrency
        self.name = f"{url}#{self.model}"

    def _one(self, conversation: Sequence[dict[str, str]], n: int) -> list[str]:
        extra = em_inf_extra_args(self.config)
        response = self.client.chat.completions.create(
            model=self.model,
            messages=list(conversation),
            n=n,
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            max_tokens=self.config.max_new_tokens,
            seed=self.config.seed,
            extra_body={"vllm_xargs": extra} if extra else None,
        )
        return [choice.message.content or "" for choice in response.choices]

    def generate(self, conversations: Sequence[Sequence[dict[str, str]]], n: int = 1) -> list[list[str]]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda c: self._one(c, n), conversations))
