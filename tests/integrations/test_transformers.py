"""The transformers twin inside ``model.generate``: scores equal the core applied to the raw logits."""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessorList

from emreason.em_inf import AdaptiveTemperatureConfig, EMInfConfig, adaptive_temperature, minimize_entropy
from emreason.entropy import token_entropy
from emreason.integrations.transformers import AdaptiveTemperatureLogitsProcessor, EMInfLogitsProcessor


@pytest.fixture(scope="module")
def model_and_tokenizer():
    """A randomly initialised toy-shaped Qwen2 (generation only needs the architecture)."""
    from emreason.toy.pretrain import ToyPretrainConfig, build_model
    from emreason.toy.tokenizer import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = build_model(ToyPretrainConfig(num_layers=2), tokenizer).eval()
    return model, tokenizer


def masked_raw(raw: torch.Tensor, tokenizer) -> torch.Tensor:
    """The raw logits as EM-INF sees them: ``min_new_tokens`` has already masked EOS with -inf."""
    return raw.index_fill(-1, torch.tensor([tokenizer.eos_token_id]), float("-inf"))


def generate(model, tokenizer, processors, *, do_sample: bool, seed: int = 0):
    prompts = ["Q: 3+4=?", "Q: (2+5)*3-1=?", "Q: 8-6=?"]
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(seed)
    sampling = (
        {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
        if do_sample
        else {"do_sample": False}
    )
    return model.generate(
        **batch,
        max_new_tokens=8,
        min_new_tokens=8,
        **sampling,
        logits_processor=LogitsProcessorList(processors),
        pad_token_id=tokenizer.pad_token_id,
        return_dict_in_generate=True,
        output_scores=True,
        output_logits=True,
    )


def test_generate_applies_em_inf_to_every_step(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    config = EMInfConfig(steps=10, threshold=0.1)
    out = generate(model, tokenizer, [EMInfLogitsProcessor(steps=10, threshold=0.1)], do_sample=True)
    for raw, processed in zip(out.logits, out.scores):
        raw = masked_raw(raw, tokenizer)
        torch.testing.assert_close(processed, minimize_entropy(raw, config), rtol=0, atol=1e-6)
        assert torch.isneginf(processed[:, tokenizer.eos_token_id]).all(), "masks survive EM-INF"
        moved = token_entropy(raw) >= config.threshold
        assert moved.any() and (token_entropy(processed)[moved] < token_entropy(raw)[moved]).all()


def test_greedy_output_is_unchanged(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    plain = generate(model, tokenizer, [], do_sample=False)
    with_em = generate(model, tokenizer, [EMInfLogitsProcessor()], do_sample=False)
    assert torch.equal(plain.sequences, with_em.sequences), "EM-INF keeps each step's argmax"


def test_adaptive_temperature_processor(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    out = generate(model, tokenizer, [AdaptiveTemperatureLogitsProcessor(alpha=0.5)], do_sample=True)
    for raw, processed in zip(out.logits, out.scores):
        expected = adaptive_temperature(masked_raw(raw, tokenizer), AdaptiveTemperatureConfig(alpha=0.5))
        torch.testing.assert_close(processed, expected, rtol=0, atol=1e-6)


def test_constructor_contract():
    assert EMInfLogitsProcessor().config == EMInfConfig()
    assert EMInfLogitsProcessor(EMInfConfig(steps=5), lr=0.2).config == EMInfConfig(steps=5, lr=0.2)
    with pytest.raises(TypeError, match="EMInfConfig"):
        EMInfLogitsProcessor({"steps": 5})
    with pytest.raises(ValueError, match="threshold"):
        EMInfLogitsProcessor(threshold=-1.0)
    with pytest.raises(TypeError, match="unknown"):
        EMInfLogitsProcessor(temperature=0.5)
    scores = torch.randn(2, 30, dtype=torch.bfloat16)
    assert EMInfLogitsProcessor()(torch.zeros(2, 1, dtype=torch.long), scores).dtype == torch.bfloat16
