"""Hugging Face transformers backend: batched ``generate`` with left padding, chat template or raw text.

Stops: ``generate`` ends a row at any id of :func:`~emreason.evals.prompts.stop_token_ids` (the generation
config's and tokenizer's EOS, and stop strings that are single added tokens such as ``<|im_start|>``) and,
through :class:`NewTextStop`, at the other stop strings as soon as the *generated* text contains one
(transformers' own ``stop_strings`` also match text that straddles the prompt's end, so a raw prompt ending
in ``.`` would stop on a first generated space under the stop ``". "``). Each row is then cut at its first
stop id, decoded without special tokens, and cut at its first stop string, so the text holds neither.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from emreason.evals.backends import GenerationConfig, prompt_kind
from emreason.evals.prompts import Prompt, cut_at_stop, stop_token_ids, text_stops
from transformers import StoppingCriteria, StoppingCriteriaList


class NewTextStop(StoppingCriteria):
    """Row ``b`` is done once the text of its generated tokens holds a stop string.

    Only the last ``window`` generated tokens are decoded each step (each token is at least one byte, so a
    window of the longest stop's byte length + 2 tokens holds any stop that a new token can complete),
    never the prompt's.
    """

    def __init__(self, tokenizer, stops: Sequence[str], prompt_length: int) -> None:
        self.tokenizer = tokenizer
        self.stops = list(stops)
        self.prompt_length = prompt_length
        self.window = max(len(stop.encode()) for stop in self.stops) + 2

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        """``input_ids [B, prompt + new]`` -> ``[B]`` bool: which rows a stop string ends."""
        start = max(self.prompt_length, input_ids.shape[1] - self.window)
        tails = self.tokenizer.batch_decode(input_ids[:, start:], skip_special_tokens=False)
        done = [any(stop in tail for stop in self.stops) for tail in tails]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


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
        self.stops = config.stop_strings
        self.stop_ids = stop_token_ids(self.tokenizer, self.model.generation_config.eos_token_id, self.stops)
        self.text_stops = text_stops(self.tokenizer, self.stops)

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

    def render(self, prompt: Prompt) -> str:
        """The text the model continues: raw text as given, chat messages through the chat template."""
        if isinstance(prompt, str):
            return prompt
        return self.tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)

    def decode(self, row: torch.Tensor) -> str:
        """One row of new token ids ``[T]`` -> text before its first stop id and first stop string."""
        ids = row.tolist()
        stops = set(self.stop_ids)
        end = next((i for i, token in enumerate(ids) if token in stops), len(ids))
        text = self.tokenizer.decode(ids[:end], skip_special_tokens=True)
        return cut_at_stop(text, self.stops)

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], n: int = 1) -> list[list[str]]:
        """``n`` completions for each prompt (list per prompt, in order); all chat or all raw."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not prompts:
            return []
        # Raw text is tokenized as text is (BOS added where the tokenizer adds one, as vLLM's generate and
        # the completions endpoint do); a rendered chat template already holds its special tokens.
        add_special = prompt_kind(prompts) == "raw"
        texts = [self.render(p) for p in prompts]
        out: list[list[str]] = []
        sample = self.config.temperature > 0
        for start in range(0, len(texts), self.config.batch_size):
            batch = texts[start : start + self.config.batch_size]
            encoded = self.tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=add_special)
            encoded = {k: v.to(self.device) for k, v in encoded.items()}
            kwargs = {
                "max_new_tokens": self.config.max_new_tokens,
                "do_sample": sample,
                "num_return_sequences": n,
                "pad_token_id": self.tokenizer.pad_token_id,
                "eos_token_id": self.stop_ids or None,  # None: the generation config's own
                **self._processor_kwargs(encoded["attention_mask"]),
            }
            if sample:
                kwargs.update(
                    temperature=self.config.temperature, top_p=self.config.top_p, top_k=self.config.top_k
                )
                torch.manual_seed(self.config.seed + start)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            if self.text_stops:  # multi-token stop strings: matched on the generated tail while generating
                prompt_length = encoded["input_ids"].shape[1]
                criterion = NewTextStop(self.tokenizer, self.text_stops, prompt_length)
                kwargs["stopping_criteria"] = StoppingCriteriaList([criterion])
            generated = self.model.generate(**encoded, **kwargs)
            new_tokens = generated[:, encoded["input_ids"].shape[1] :]
            decoded = [self.decode(row) for row in new_tokens]
            out.extend(decoded[i * n : (i + 1) * n] for i in range(len(batch)))
        return out
