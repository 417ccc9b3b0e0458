"""Where EM-INF runs in ``generate``'s processor chain: before the repetition penalty by default (the
authors' order), or after it (``generate``'s own order), and the two give different scores."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from emreason.em_inf import EMInfConfig, minimize_entropy
from emreason.integrations.transformers import EMInfLogitsProcessor, em_inf_generate_kwargs

PENALTY = 1.05  # Qwen2.5-Instruct's generation config
CONFIG = EMInfConfig(steps=10, threshold=0.0, lr=0.5)


@pytest.fixture(scope="module")
def model_and_tokenizer():
    from emreason.toy.pretrain import ToyPretrainConfig, build_model
    from emreason.toy.tokenizer import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = build_model(ToyPretrainConfig(num_layers=2), tokenizer).eval()
    # Larger logits, so a repeated token's penalty moves EM-INF's optimum visibly.
    with torch.no_grad():
        model.lm_head.weight.mul_(3)
    model.generation_config.repetition_penalty = PENALTY
    return model, tokenizer


def run(model, tokenizer, order: str):
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in ("Q: 3+4=?", "Q: (2+5)*3-1=?")
    ]
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    kwargs = em_inf_generate_kwargs(
        EMInfLogitsProcessor(CONFIG),
        model.generation_config,
        attention_mask=batch["attention_mask"],
        order=order,
    )
    out = model.generate(
        **batch,
        **kwargs,
        max_new_tokens=6,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        return_dict_in_generate=True,
        output_scores=True,
        output_logits=True,
    )
    return out, batch


def expected_scores(out, batch, order: str) -> list[torch.Tensor]:
    """Each step's final scores recomputed from the raw logits, in the given order."""
    prompt_len = batch["input_ids"].shape[1]
    ignore = (batch["attention_mask"] != 0).int().argmax(dim=1)
    penalty = RepetitionPenaltyLogitsProcessor(PENALTY, prompt_ignore_length=ignore)
    expected = []
    for step, raw in enumerate(out.logits):
        seen = out.sequences[:, : prompt_len + step]
        if order == "first":
            expected.append(penalty(seen, minimize_entropy(raw.float(), CONFIG)))
        else:
            expected.append(minimize_entropy(penalty(seen, raw.float().clone()), CONFIG))
    return expected


@pytest.mark.parametrize("order", ["first", "after_penalties"])
def test_generate_runs_em_inf_in_the_chosen_place(model_and_tokenizer, order):
    model, tokenizer = model_and_tokenizer
    out, batch = run(model, tokenizer, order)
    other = "after_penalties" if order == "first" else "first"
    mine, theirs = expected_scores(out, batch, order), expected_scores(out, batch, other)
    differs = 0.0
    for got, want, alt in zip(out.scores, mine, theirs):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        differs = max(differs, (want - alt).abs().max().item())
    assert differs > 1e-2, "the order must matter for this check to mean anything"
    assert model.generation_config.repetition_penalty == PENALTY, "the model's config is not changed"


def test_kwargs_contract():
    processor = EMInfLogitsProcessor()
    base = GenerationConfig(repetition_penalty=PENALTY)
    first = em_inf_generate_kwargs(processor, base)
    assert first["repetition_penalty"] == 1.0 and base.repetition_penalty == PENALTY
    chain = list(first["logits_processor"])
    assert chain[0] is processor and isinstance(chain[1], RepetitionPenaltyLogitsProcessor)
    assert chain[1].penalty == PENALTY
    after = em_inf_generate_kwargs(processor, base, order="after_penalties")
    assert list(after["logits_processor"]) == [processor] and after["repetition_penalty"] == PENALTY
    # No penalty: nothing to move; an explicit override wins over the config.
    assert em_inf_generate_kwargs(processor) == {"logits_processor": [processor]}
    override = em_inf_generate_kwargs(processor, base, repetition_penalty=1.2)
    assert list(override["logits_processor"])[1].penalty == 1.2
    with pytest.raises(ValueError, match="order"):
        em_inf_generate_kwargs(processor, base, order="last")
    with pytest.raises(ValueError, match="repetition_penalty"):
        em_inf_generate_kwargs(processor, base, repetition_penalty=0.0)
