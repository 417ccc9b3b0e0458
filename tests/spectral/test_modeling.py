import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from emreason.spectral import SpectraLDSConfig, SpectraLDSForCausalLM, to_lds

HYBRID = ["linear_attention", "sliding_attention", "linear_attention"]


def _model(layer_types=None, **kw):
    cfg = SpectraLDSConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        filter_len=64,
        num_filters=8,
        layer_types=layer_types,
        sliding_window=6,
        num_attention_heads=2,
        share_filter_projection=False,
        **kw,
    )
    return SpectraLDSForCausalLM(cfg).eval()


def _generate_matches_full_forward(model, prompt_len=7, new=16):
    ids = torch.randint(0, 256, (2, prompt_len))
    out = model.generate(
        ids, max_new_tokens=new, do_sample=False, return_dict_in_generate=True, output_logits=True
    )
    step_logits = torch.stack(out.logits, 1)  # logits of each decoding step, (B, new, V)
    full = model(out.sequences, use_cache=False).logits[:, prompt_len - 1 : -1]
    torch.testing.assert_close(step_logits, full, rtol=1e-4, atol=1e-4)
    return out


@pytest.mark.parametrize("layer_types", [None, HYBRID])
def test_generate_equals_full_forward_stu_and_distilled(layer_types):
    model = _model(layer_types)
    _generate_matches_full_forward(model)
    distilled = to_lds(model, 12)
    out = _generate_matches_full_forward(distilled)
    # distillation barely changes the function
    diff = (distilled(out.sequences).logits - model(out.sequences).logits).abs().max()
    assert diff < 1e-3


def test_distilled_cache_is_fixed_size_and_decodes_past_filter_length():
    model = to_lds(_model(), 8)
    ids = torch.randint(0, 256, (1, 10))
    out = model(ids, use_cache=True)
    cache = out.cache
    shapes = [tuple(layer.recurrent_states[0].shape) for layer in cache.layers]
    assert shapes == [(1, 16, 32)] * 3
    assert not any(layer.is_conv_states_initialized[0] for layer in cache.layers)
    token = ids[:, -1:]
    for _ in range(80):  # 90 tokens in total > filter_len=64
        out = model(token, cache=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
    assert [tuple(layer.recurrent_states[0].shape) for layer in cache.layers] == shapes
    assert torch.isfinite(out.logits).all()


def test_save_load_roundtrip_through_auto_classes(tmp_path):
    for i, model in enumerate([_model(HYBRID), to_lds(_model(HYBRID), 8)]):
        model.save_pretrained(tmp_path / str(i))
        assert AutoConfig.from_pretrained(tmp_path / str(i)).model_type == "spectralds"
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / str(i)).eval()
        assert type(loaded) is SpectraLDSForCausalLM
        assert loaded.config.lds_state_dim == model.config.lds_state_dim
        ids = torch.randint(0, 256, (2, 20))
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_loss_is_shifted_cross_entropy():
    model = _model()
    ids = torch.randint(0, 256, (2, 12))
    out = model(ids, labels=ids)
    ref = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 256), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, ref)


def test_model_errors():
    model = _model()
    with pytest.raises(ValueError, match="exceeds the filter length 64"):
        model(torch.randint(0, 256, (1, 65)))
    with pytest.raises(ValueError, match="attention_mask must be 2-D"):
        model(torch.randint(0, 256, (1, 5)), attention_mask=torch.ones(1, 4))
    with pytest.raises(ValueError, match="positive"):
        to_lds(model, 0)
    with pytest.raises(ValueError, match="already distilled"):
        to_lds(to_lds(model, 4), 4)
    with pytest.raises(ValueError, match="layer_types"):
        SpectraLDSConfig(num_hidden_layers=2, layer_types=["linear_attention"])
    with pytest.raises(ValueError, match="unknown layer types"):
        SpectraLDSConfig(num_hidden_layers=1, layer_types=["mamba"])


def test_distilled_config_builds_a_finite_model_directly():
    cfg = SpectraLDSConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        filter_len=64,
        num_filters=8,
        lds_state_dim=4,
    )
    model = SpectraLDSForCausalLM(cfg)
    assert torch.isfinite(model(torch.randint(0, 256, (1, 10))).logits).all()


def test_beam_search_with_cache_matches_beam_search_without():
    model = to_lds(_model(HYBRID), 8)
    ids = torch.randint(0, 256, (2, 6))
    kwargs = dict(max_new_tokens=8, num_beams=3, do_sample=False)
    cached = model.generate(ids, use_cache=True, **kwargs)
    recomputed = model.generate(ids, use_cache=False, **kwargs)
    assert torch.equal(cached, recomputed)
