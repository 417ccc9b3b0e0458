"""Prompt formats (``chat`` | ``raw``) and stop handling shared by every backend.

``chat`` (default) sends the task's messages through the model's chat template, as Qwen2.5-Math's
evaluation does with ``--prompt_type qwen25-math-cot``: for a math problem the system turn is
``Please reason step by step, and put your final answer within \\boxed{}.`` and the user turn the question.

``raw`` is for base models: no chat template and no special tokens. A conversation becomes plain text
the way Qwen2.5-Math's zero-shot non-chat prompt types do (``mathstral``: the question, a newline, then
the step-by-step/``\\boxed{}`` instruction)::

    render_raw([{"role": "system", "content": S}, {"role": "user", "content": Q}]) == Q + "\\n" + S

Precisely: the non-system turns' contents joined by a blank line (``"\\n\\n"``), then, when the conversation
has system turns, a newline and their contents (joined by a newline), then spaces stripped at both ends
(Qwen2.5-Math's ``construct_prompt`` ends with ``.strip(" ")``). The last turn must be the user's.

Stops. Completions end at the model's EOS ids (its ``generation_config.json`` and tokenizer) and at the
stop strings ``DEFAULT_STOP`` (Qwen2.5-Math's ``<|im_end|>`` and ``<|endoftext|>``, plus ``<|im_start|>``,
which a chat-tuned model given a raw prompt may emit to open a new turn) plus any the user adds. Stop
strings that are single added tokens of the tokenizer are also stop *ids*, because backends drop special
tokens from the decoded text before matching stop strings against it. Whatever a backend returns is cut
at the first stop string again (:func:`cut_at_stop`), so no stop text or anything after it is recorded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

PROMPT_FORMATS = ("chat", "raw")
DEFAULT_STOP = ("<|im_end|>", "<|endoftext|>", "<|im_start|>")

Conversation = list[dict[str, str]]
Prompt = Conversation | str  # chat messages, or raw text (the ``raw`` format)


def render_raw(messages: Sequence[dict[str, str]]) -> str:
    """The plain-text prompt of ``messages`` for the ``raw`` format (see the module docstring)."""
    if not messages:
        raise ValueError("cannot render an empty conversation")
    if messages[-1].get("role") != "user":
        raise ValueError(
            f"raw prompts end with the user's turn; this one ends with {messages[-1].get('role')!r}"
        )
    instructions = [m["content"] for m in messages if m["role"] == "system"]
    turns = [m["content"] for m in messages if m["role"] != "system"]
    text = "\n\n".join(turns)
    if instructions:
        text += "\n" + "\n".join(instructions)
    return text.strip(" ")


def with_system_prompt(messages: Sequence[dict[str, str]], system_prompt: str | None) -> Conversation:
    """``messages`` with their system turns replaced by ``system_prompt`` (None: unchanged; ``""``: none)."""
    if system_prompt is None:
        return list(messages)
    rest = [m for m in messages if m["role"] != "system"]
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + rest


@dataclass(frozen=True)
class PromptFormat:
    """How the runner turns a task's messages into what the backend receives.

    Attributes:
        kind: ``chat`` (messages for the chat template) or ``raw`` (plain text, :func:`render_raw`).
        system_prompt: None keeps each task's own system turn (math: Qwen2.5-Math's step-by-step one);
            a string replaces it (or adds one); ``""`` drops it (a chat template may then add its default).
    """

    kind: str = "chat"
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in PROMPT_FORMATS:
            raise ValueError(f"prompt format must be one of {PROMPT_FORMATS}, got {self.kind!r}")

    def apply(self, messages: Sequence[dict[str, str]]) -> Prompt:
        messages = with_system_prompt(messages, self.system_prompt)
        return render_raw(messages) if self.kind == "raw" else messages

    def describe(self) -> dict[str, Any]:
        """What runs record (config, samples) and compare on resume."""
        return {"prompt_format": self.kind, "system_prompt": self.system_prompt}


def stop_strings(extra: Iterable[str] = ()) -> list[str]:
    """``DEFAULT_STOP`` then ``extra``, without duplicates or empty strings (order kept)."""
    out: list[str] = []
    for text in (*DEFAULT_STOP, *extra):
        if not isinstance(text, str) or not text:
            raise ValueError(f"stop strings must be non-empty strings, got {text!r}")
        if text not in out:
            out.append(text)
    return out


def cut_at_stop(text: str, stops: Iterable[str]) -> str:
    """``text`` up to (not including) the earliest occurrence of any of ``stops``."""
    end = len(text)
    for stop in stops:
        found = text.find(stop)
        if 0 <= found < end:
            end = found
    return text[:end]


def _as_ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def stop_token_ids(tokenizer: Any, generation_eos: Any, stops: Iterable[str]) -> list[int]:
    """Sorted ids that end a completion: the generation config's EOS id(s), the tokenizer's EOS, and
    every stop string that is one added (special) token of ``tokenizer``."""
    ids = set(_as_ids(generation_eos)) | set(_as_ids(getattr(tokenizer, "eos_token_id", None)))
    added = tokenizer.get_added_vocab()  # token text -> id, matched atomically in text
    ids.update(added[stop] for stop in stops if stop in added)
    return sorted(ids)


def text_stops(tokenizer: Any, stops: Iterable[str]) -> list[str]:
    """The stop strings that are not single added tokens (those need text matching while decoding)."""
    added = tokenizer.get_added_vocab()
    return [stop for stop in stops if stop not in added]
