"""Prompt formats (chat | raw) and stops on the Qwen2.5-format fixture with the HF backend, and the runner's
refusal to resume with other prompt settings. (vLLM offline and server: vllm_suite/test_vllm_eval.py.)"""

from __future__ import annotations

import json

import pytest
import torch
from emreason.evals.backends import GenerationConfig, prompt_kind
from emreason.evals.backends.hf import HFBackend
from emreason.evals.cli import main
from emreason.evals.prompts import DEFAULT_STOP, PromptFormat, cut_at_stop, render_raw, stop_strings
from emreason.evals.runner import read_samples
from emreason.evals.tasks.base import MATH_SYSTEM_PROMPT

from emreason import toy
from emreason.toy.qwen_format import ENDOFTEXT, IM_END, IM_START, QWEN_DEFAULT_SYSTEM

QUESTION = "Compute 47+8-3."
MATH = [{"role": "system", "content": MATH_SYSTEM_PROMPT}, {"role": "user", "content": QUESTION}]
# The exact strings docs/evals.md documents.
CHAT_TEXT = (
    "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
    "<|im_start|>user\nCompute 47+8-3.<|im_end|>\n<|im_start|>assistant\n"
)
RAW_TEXT = "Compute 47+8-3.\nPlease reason step by step, and put your final answer within \\boxed{}."
MAX_NEW = 40


def test_raw_rendering_system_override_and_stops():
    assert render_raw(MATH) == RAW_TEXT
    assert PromptFormat("raw").apply(MATH) == RAW_TEXT
    assert PromptFormat("raw", system_prompt="").apply(MATH) == QUESTION
    assert PromptFormat("raw", system_prompt="Be brief.").apply(MATH) == f"{QUESTION}\nBe brief."
    assert PromptFormat("chat").apply(MATH) == MATH
    assert PromptFormat("chat", system_prompt="").apply(MATH) == MATH[1:]
    two_turns = [*MATH[1:], {"role": "assistant", "content": "A."}, {"role": "user", "content": " Q2 "}]
    assert render_raw([MATH[0], *two_turns]) == f"{QUESTION}\n\nA.\n\n Q2 \n{MATH_SYSTEM_PROMPT}"
    with pytest.raises(ValueError, match="end with the user's turn"):
        render_raw([*MATH, {"role": "assistant", "content": "4"}])
    with pytest.raises(ValueError, match="prompt format must be one of"):
        PromptFormat("completion")
    with pytest.raises(ValueError, match="mixes raw-text and chat"):
        prompt_kind([RAW_TEXT, MATH])
    assert stop_strings(["\n\nQuestion:", IM_END]) == [*DEFAULT_STOP, "\n\nQuestion:"]
    with pytest.raises(ValueError, match="non-empty"):
        GenerationConfig(stop=("",))
    with pytest.raises(ValueError, match="sequence of strings"):
        GenerationConfig(stop="\n\n")
    assert cut_at_stop("a}b<|im_end|>c", ["<|im_end|>", "}"]) == "a"


@pytest.fixture(scope="module")
def backend():
    """The HF backend on the fixture; ``backend.captured`` holds each ``generate`` call's new token ids."""
    hf = HFBackend(
        str(toy.qwen_format_path()), GenerationConfig(max_new_tokens=MAX_NEW, batch_size=8), device="cpu",
        dtype="float32",
    )  # fmt: skip
    original = hf.model.generate
    hf.captured = []

    def capture(**kwargs):
        out = original(**kwargs)
        hf.captured.append(out[:, kwargs["input_ids"].shape[1] :])
        return out

    hf.model.generate = capture
    return hf


def ids(backend, *tokens: str) -> list[int]:
    return [backend.tokenizer.convert_tokens_to_ids(t) for t in tokens]


def assert_stopped_at_eos(backend, rows: torch.Tensor, texts: list[str]) -> None:
    """Every row ends at its first <|im_end|> (then only padding) or runs to the token limit, and its text
    is exactly the tokens before that stop, without any special token."""
    im_end, pad = ids(backend, IM_END, ENDOFTEXT)
    assert backend.stop_ids == sorted(ids(backend, ENDOFTEXT, IM_START, IM_END))
    for row, text in zip(rows.tolist(), texts):
        end = row.index(im_end) if im_end in row else len(row)
        assert end < len(row) or len(row) == MAX_NEW
        assert all(token == pad for token in row[end + 1 :])  # nothing generated after the stop
        assert text == backend.tokenizer.decode(row[:end])
        assert "<|" not in text


def test_chat_prompts_stop_at_im_end_and_answer(backend):
    assert backend.render(PromptFormat("chat").apply(MATH)) == CHAT_TEXT
    dropped = backend.render(PromptFormat("chat", system_prompt="").apply(MATH))
    assert dropped.startswith(f"{IM_START}system\n{QWEN_DEFAULT_SYSTEM}{IM_END}\n")  # the template's own
    problems = toy.make_problems("heldout", 8, seed=3)
    prompts = [PromptFormat("chat").apply([MATH[0], {"role": "user", "content": p.prompt}]) for p in problems]
    backend.captured.clear()
    texts = [t[0] for t in backend.generate(prompts)]
    rows = backend.captured[0]
    assert_stopped_at_eos(backend, rows, texts)
    assert all(ids(backend, IM_END)[0] in row for row in rows.tolist())  # all finished by EOS here
    assert sum(toy.grade(t, p.answer) for t, p in zip(texts, problems)) >= 4, texts


def test_raw_prompts_stop_at_im_end_and_at_a_stop_string(backend):
    raw = PromptFormat("raw").apply(MATH)
    assert backend.render(raw) == RAW_TEXT
    encoded = backend.tokenizer(RAW_TEXT)["input_ids"]
    assert not set(encoded) & set(backend.stop_ids)  # no special tokens in a raw prompt
    # Given raw text, the chat-tuned fixture answers, emits <|im_end|> and, without stops, keeps going
    # past its answer: the stop is what ends the completion.
    prompts = [raw, "Compute 47+8-3.\n"]
    backend.captured.clear()
    texts = [t[0] for t in backend.generate(prompts)]
    assert_stopped_at_eos(backend, backend.captured[0], texts)
    tokens = backend.tokenizer(prompts, return_tensors="pt", padding=True)
    unstopped = backend.model.generate(
        **tokens, max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=[], pad_token_id=0,
        repetition_penalty=1.0, temperature=None, top_p=None, top_k=None,
    )[:, tokens["input_ids"].shape[1] :]  # fmt: skip
    for text, row in zip(texts, unstopped):
        full = backend.tokenizer.decode(row)
        assert full.startswith(text + IM_END) and len(full) > len(text + IM_END) + 5
    # A stop string inside the answer: generation ends right after the token that completes it, and the
    # text is everything before it. The stop is taken from the fixture's own answer (the text of a later
    # generated token not seen before it), since the fixture's build is not bit-reproducible across
    # machines and its exact answer to this prompt may differ.
    answer = unstopped[1].tolist()
    stop = next(
        piece
        for k in range(2, len(answer))
        if (piece := backend.tokenizer.decode(answer[k : k + 1]).strip())
        and piece not in backend.tokenizer.decode(answer[:k])
        and piece in texts[1]
    )
    stopped = HFBackend.__new__(HFBackend)
    stopped.__dict__.update(backend.__dict__)
    stopped.stops = [*backend.stops, stop]
    stopped.text_stops = [stop]
    backend.captured.clear()
    second = stopped.generate(["Compute 47+8-3.\n"])[0][0]
    assert second == texts[1].split(stop)[0] and second, (stop, second, texts[1])
    row = backend.captured[0][0].tolist()
    assert backend.tokenizer.decode(row).endswith(stop)  # stopped by stop_strings, not cut afterwards
    assert len(row) < MAX_NEW
    # Only generated text counts: the prompt ends with "." and a first generated space is no ". " stop
    # (transformers' own stop_strings would stop there, matching across the prompt's end).
    stopped.stops, stopped.text_stops = [*backend.stops, ". "], [". "]
    assert ". " not in texts[0] and texts[0].startswith(" ")
    assert stopped.generate([raw])[0][0] == texts[0]


def test_decode_drops_specials_and_text_after_a_stop(backend):
    im_start, im_end = ids(backend, IM_START, IM_END)
    answer = backend.tokenizer("\\boxed{52}", add_special_tokens=False)["input_ids"]
    tail = backend.tokenizer("user\nmore", add_special_tokens=False)["input_ids"]
    assert backend.decode(torch.tensor([*answer, im_start, *tail])) == "\\boxed{52}"
    assert backend.decode(torch.tensor([*answer, im_end, *tail, im_end])) == "\\boxed{52}"
    split = backend.tokenizer("52 <|im", add_special_tokens=False)["input_ids"]
    rest = backend.tokenizer("_end|> x", add_special_tokens=False)["input_ids"]
    assert backend.decode(torch.tensor([*split, *rest])) == "52 "  # stop text spelt in ordinary tokens


def test_cli_records_prompt_format_and_refuses_a_mixed_resume(tmp_path, capsys):
    model = str(toy.qwen_format_path())
    args = ["--task", "toy", "--toy-size", "3", "--model", model, "--output", str(tmp_path), "--quiet"]
    args += ["--max-new-tokens", "24", "--dtype", "float32", "--device", "cpu"]
    assert main([*args, "--prompt-format", "raw", "--stop", "\n\n"]) == 0
    records = read_samples(tmp_path / "toy")
    assert len(records) == 3
    for record in records:
        assert record["prompt_format"] == "raw" and record["system_prompt"] is None
        assert record["prompt"].startswith("Compute ") and record["prompt"].endswith(".")  # the raw text
        assert "<|" not in record["completion"] and "\n\n" not in record["completion"]
    config = json.loads((tmp_path / "toy" / "metrics.json").read_text())["config"]
    assert config["prompt_format"] == "raw" and config["stop"] == [*DEFAULT_STOP, "\n\n"]
    for other, named in (
        (["--prompt-format", "chat"], "chat"),
        (["--system-prompt", "Be brief."], "Be brief"),
    ):
        with pytest.raises(SystemExit):
            main([*args, "--prompt-format", "raw", *other])
        error = capsys.readouterr().err
        assert "--prompt-format raw" in error and named in error and "another --output" in error
    assert main([*args, "--prompt-format", "raw"]) == 0  # the same settings resume (nothing left)
    assert len(read_samples(tmp_path / "toy")) == 3
