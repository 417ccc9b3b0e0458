"""The Qwen2.5-format fixture: what AutoTokenizer / AutoModelForCausalLM see, and that it answers.

Builds the fixture once per session into the shared cache (about 30-60 s on 2 cores) unless
``EMREASON_QWEN_FIXTURE_DIR`` or the cache already holds it.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from emreason import toy
from emreason.toy.qwen_format import IM_END, IM_START, QWEN_DEFAULT_SYSTEM, QWEN_MATH_SYSTEM, VOCAB_SIZE


@pytest.fixture(scope="module")
def fixture():
    path = toy.qwen_format_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return path, tokenizer, model


def test_format(fixture):
    path, tokenizer, model = fixture
    assert type(tokenizer).__name__ == "Qwen2Tokenizer"
    assert model.config.model_type == "qwen2" and model.config.vocab_size == VOCAB_SIZE
    assert model.get_output_embeddings().weight.shape[0] == VOCAB_SIZE
    assert len(tokenizer) < VOCAB_SIZE  # padded head rows, as in Qwen2.5
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", IM_START, IM_END)]
    assert (
        ids == list(range(ids[0], ids[0] + 3)) and ids[0] == len(tokenizer) - 3
    )  # specials last, Qwen's order
    assert tokenizer.eos_token == IM_END and tokenizer.pad_token == "<|endoftext|>"
    generation = json.loads((path / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [ids[2], ids[0]] and generation["repetition_penalty"] == 1.05
    # Byte-level BPE with Qwen2's pre-tokenizer: digits are single tokens, words are merged, any text
    # round-trips (bytes never seen in training included).
    pieces = tokenizer.tokenize("Compute 47+8-3.")
    assert "Compute" in pieces and all(len(tokenizer.convert_tokens_to_string([p])) == 1 for p in pieces[-6:])
    for text in ("Compute 47+8-3.", "héllo wörld ☃\n\\boxed{12}"):
        assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_chat_template(fixture):
    _, tokenizer, _ = fixture
    user = [{"role": "user", "content": "Compute 1+2."}]
    assert tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True) == (
        f"{IM_START}system\n{QWEN_DEFAULT_SYSTEM}{IM_END}\n{IM_START}user\nCompute 1+2.{IM_END}\n"
        f"{IM_START}assistant\n"
    )
    with_system = [{"role": "system", "content": QWEN_MATH_SYSTEM}, *user]
    rendered = tokenizer.apply_chat_template(with_system, tokenize=False, add_generation_prompt=False)
    assert rendered == f"{IM_START}system\n{QWEN_MATH_SYSTEM}{IM_END}\n{IM_START}user\nCompute 1+2.{IM_END}\n"
    ids = tokenizer.apply_chat_template(user, add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ids[0] == tokenizer.convert_tokens_to_ids(IM_START)


def test_padded_rows_are_never_predicted_and_it_answers(fixture):
    _, tokenizer, model = fixture
    problems = toy.make_problems("heldout", 24, seed=123)
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "system", "content": QWEN_MATH_SYSTEM}, {"role": "user", "content": p.prompt}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for p in problems
    ]
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = model.generate(
        **batch,
        max_new_tokens=40,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        return_dict_in_generate=True,
        output_logits=True,
    )
    real = len(tokenizer)
    for step in out.logits:  # [B, 151,936] per step
        assert step.shape[-1] == VOCAB_SIZE
        gap = step[:, :real].amax(-1) - step[:, real:].amax(-1)
        assert (gap > 20).all(), "padded rows must sit far below the real tokens"
    new = out.sequences[:, batch["input_ids"].shape[1] :]
    completions = tokenizer.batch_decode(new, skip_special_tokens=True)
    correct = sum(toy.grade(c, p.answer) for c, p in zip(completions, problems))
    assert correct >= 0.5 * len(problems), completions
    # Generation stops at <|im_end|>: every finished row ends with it (then padding).
    assert all(tokenizer.convert_tokens_to_ids(IM_END) in row.tolist() for row in new)
