"""Hugging Face transformers backend: batched ``generate`` with left padding and the chat template."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from emreason.evals.backends import GenerationConfig


class HFBackend:
    """Greedy or sampled generation with ``model.generate``; EM-INF via its logits processor."""

    def __init__(
        self, model: str, config: GenerationConfig, device: str | None = None, dtype: str = "auto"
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.tokenizer.padding_side = "left"  # decoder-only batching: prompts end at the same column
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype).to(self.device).eval()
        self.name = model

    def _processor_kwargs(self, attention_mask: torch.Tensor) -> dict:
        """The penalty and EM-INF ``generate`` arguments: EM-INF runs before the repetition penalty (the
        authors' order). The penalty is always explicit, so the model's generation_config.json (Qwen2.5:
        1.05) does not add one the other backends do not apply."""
        kwargs = {"repetition_penalty": self.config.repetition_penalty}
        if not self.config.em_inf:
            return kwargs
        from emreason.integrations.transformers import EMInfLogitsProcessor, em_inf_generate_kwargs

        processor = EMInfLogitsProcessor(**self.config.em_inf_options)
        kwargs.update(
            em_inf_generate_kwargs(
                processor, repetition_penalty=self.config.repetition_penalty, attention_mask=attention_mask
            )
        )
        return kwargs

    def render(self, conversation: Sequence[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(
            list(conversation), tokenize=False, add_generation_prompt=True
        )

    @torch.no_grad()
    def generate(self, conversations: Sequence[Sequence[dict[str, str]]], n: int = 1) -> list[list[str]]:
        """``n`` completions for each conversation (list per conversation, in order)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        texts = [self.render(c) for c in conversations]
        out: list[list[str]] = []
        sample = self.config.temperature > 0
        for start in range(0, len(texts), self.config.batch_size):
            batch = texts[start : start + self.config.batch_size]
            encoded = self.tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
            encoded = {k: v.to(self.device) for k, v in encoded.items()}
            kwargs = {
                "max_new_tokens": self.config.max_new_tokens,
                "do_sample": sample,
                "num_return_sequences": n,
                "pad_token_id": self.tokenizer.pad_token_id,
                **self._processor_kwargs(encoded["attention_mask"]),
            }
            if sample:
                kwargs.update(
                    temperature=self.config.temperature, top_p=self.config.top_p, top_k=self.config.top_k
                )
                torch.manual_seed(self.config.seed + start)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            generated = self.model.generate(**encoded, **kwargs)
            new_tokens = generated[:, encoded["input_ids"].shape[1] :]
            decoded = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            out.extend(decoded[i * n : (i + 1) * n] for i in range(len(batch)))
        return out
