"""bf16 models: poles, LDS state and filters stay float32; a bf16 distilled model matches its float32 loss."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from emreason.spectral import SpectraLDSConfig, SpectraLDSForCausalLM, to_lds

HYBRID = ["linear_attention", "sliding_attention", "linear_attention"]


def _config(**kw) -> SpectraLDSConfig:
    return SpectraLDSConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        filter_len=64,
        num_filters=8,
        layer_types=HYBRID,
        sliding_window=8,
        num_attention_heads=2,
        share_filter_projection=False,
        **kw,
    )


def _batch(n: int = 16, length: int = 48) -> torch.Tensor:
    """Fixed learnable sequences (a random 4-token motif per row, repeated): a few steps bring the loss
    well below ln 256, so the bf16/fp32 comparison is between sharp predictions, not two near-uniform ones."""
    motif = torch.randint(0, 256, (n, 4), generator=torch.Generator().manual_seed(1))
    return motif.repeat(1, length // 4)


@pytest.fixture(scope="module")
def trained_distilled() -> tuple[SpectraLDSForCausalLM, torch.Tensor]:
    torch.manual_seed(0)
    model = SpectraLDSForCausalLM(_config())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = _batch()
    for _ in range(40):
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return to_lds(model, 12), ids


def _lds_layers(model):
    return [b.mixer.lds_stu.lds for b in model.model.layers if b.layer_type == "linear_attention"]


@torch.no_grad()
def test_bf16_cast_keeps_poles_and_state_in_float32(trained_distilled):
    fp32, ids = trained_distilled
    bf16 = type(fp32)(fp32.config)
    bf16.load_state_dict(fp32.state_dict())
    bf16 = bf16.eval().to(torch.bfloat16)
    assert bf16.model.embed_tokens.weight.dtype == torch.bfloat16
    for lds32, lds16 in zip(_lds_layers(fp32), _lds_layers(bf16), strict=True):
        assert lds16.poles.dtype == torch.float32 and lds16.output.dtype == torch.float32
        assert torch.equal(lds16.poles, lds32.poles)  # not rounded on the way
    # bf16 could not hold them: it would round these poles, and its spacing below 1 is 2^-8, so the slow
    # poles of a long-filter distillation (1 - a ~ 1e-5 at L = 8192) would become exactly 1
    poles = _lds_layers(fp32)[0].poles
    assert not torch.equal(poles.bfloat16().float(), poles)
    assert torch.tensor(1 - 1e-5).bfloat16() == 1
    cache = bf16(ids[:2, :10], use_cache=True).cache
    states = [cache.layers[i].recurrent_states[0] for i in (0, 2)]
    assert all(s.dtype == torch.float32 for s in states)
    # .double() is honoured (float64 runs stay exact)
    assert _lds_layers(bf16.double())[0].poles.dtype == torch.float64


@torch.no_grad()
def test_bf16_distilled_loss_within_1e_3_nats_of_float32(trained_distilled):
    fp32, ids = trained_distilled
    loss32 = float(fp32(ids, labels=ids).loss)
    assert loss32 < 4.0  # trained: well below ln(256) = 5.55, so the comparison is not between two noises
    bf16 = type(fp32)(fp32.config)
    bf16.load_state_dict(fp32.state_dict())
    loss16 = float(bf16.eval().to(torch.bfloat16)(ids, labels=ids).loss)
    assert abs(loss16 - loss32) < 1e-3, (loss16, loss32)


@torch.no_grad()
def test_from_pretrained_bf16_keeps_float32_modules(trained_distilled, tmp_path):
    fp32, ids = trained_distilled
    fp32.save_pretrained(tmp_path / "lds")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "lds", dtype=torch.bfloat16).eval()
    assert loaded.model.layers[0].mixer.lds_stu.M_inputs.dtype == torch.bfloat16
    for lds32, lds16 in zip(_lds_layers(fp32), _lds_layers(loaded), strict=True):
        assert lds16.poles.dtype == torch.float32 and torch.equal(lds16.poles, lds32.poles)
        assert lds16.output.dtype == torch.float32 and torch.equal(lds16.output, lds32.output)
    # the undistilled model's filters too
    stu = SpectraLDSForCausalLM(_config()).eval()
    stu.save_pretrained(tmp_path / "stu")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "stu", dtype=torch.bfloat16)
    assert loaded.model.layers[0].mixer.stu.filters.dtype == torch.float32
    assert torch.equal(loaded.model.layers[0].mixer.stu.filters, stu.model.layers[0].mixer.stu.filters)


@torch.no_grad()
@pytest.mark.parametrize("distilled", [False, True])
def test_generate_in_bf16_with_padding(trained_distilled, distilled):
    fp32, ids = trained_distilled
    model = fp32 if distilled else SpectraLDSForCausalLM(_config()).eval()
    model = type(model)(model.config).eval()
    model.load_state_dict((fp32 if distilled else model).state_dict())
    model = model.to(torch.bfloat16)
    prompts = ids[:2, :12].clone()
    mask = torch.ones_like(prompts)
    mask[0, :5] = 0  # left padding in bf16 too
    out = model.generate(
        prompts,
        attention_mask=mask,
        max_new_tokens=20,
        do_sample=False,
        return_dict_in_generate=True,
        output_logits=True,
    )
    assert out.sequences.shape == (2, 32)
    assert all(torch.isfinite(step).all() for step in out.logits)
    if distilled:
        # the trained motif is continued (bf16 decoding follows the float32 model's greedy path)
        ref = fp32.generate(prompts[1:], max_new_tokens=20, do_sample=False)
        assert (out.sequences[1] == ref[0]).float().mean() > 0.9
