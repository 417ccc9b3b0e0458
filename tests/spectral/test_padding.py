"""Padded batches: left-padded generate() equals each row run alone; right padding is masked in the loss."""

import pytest
import torch

from emreason.spectral import SpectraLDSConfig, SpectraLDSForCausalLM, to_lds

HYBRID = ["linear_attention", "sliding_attention", "linear_attention"]
PAD = 0
# (dtype, bound on |padded-batch logits - single-row logits|): float64 shows the paddings contribute
# exactly nothing (rounding only); float32 bounds the rounding of FFTs of different lengths.
PRECISIONS = [(torch.float64, 1e-10), (torch.float32, 2e-5)]


def _model(layer_types, distilled: bool, dtype: torch.dtype) -> SpectraLDSForCausalLM:
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
        pad_token_id=PAD,
    )
    model = SpectraLDSForCausalLM(cfg).eval()
    if distilled:
        model = to_lds(model, 8)
    return model.to(dtype)


def _left_padded(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    width = max(lengths)
    rows = [torch.randint(1, 256, (n,)) for n in lengths]
    ids = torch.full((len(rows), width), PAD)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = row
        mask[i, width - len(row) :] = 1
    return ids, mask, rows


def _cached_decode_logits(model, ids, mask, continuation):
    """Prefill the padded batch, then feed ``continuation`` ``(B, new)`` one token at a time through the
    cache (what generate() does); logits ``(B, new, V)`` in the model's dtype (generate() would return
    them in float32)."""
    out = model(ids, attention_mask=mask, use_cache=True)
    logits = [out.logits[:, -1]]
    for t in range(continuation.shape[1] - 1):
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        out = model(continuation[:, t : t + 1], attention_mask=mask, cache=out.cache, use_cache=True)
        logits.append(out.logits[:, -1])
    return torch.stack(logits, 1)


@pytest.mark.parametrize(("dtype", "atol"), PRECISIONS)
@pytest.mark.parametrize(
    ("layer_types", "distilled"),
    [(None, False), (HYBRID, False), (None, True), (HYBRID, True)],
    ids=["stu", "hybrid", "distilled", "distilled-hybrid"],
)
@torch.no_grad()
def test_left_padded_generate_equals_each_row_alone(layer_types, distilled, dtype, atol):
    model = _model(layer_types, distilled, dtype)
    ids, mask, rows = _left_padded([3, 9, 6])
    new = 12
    out = model.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=new,
        do_sample=False,
        return_dict_in_generate=True,
        output_logits=True,
    )
    generated = out.sequences[:, ids.shape[1] :]
    step_logits = _cached_decode_logits(model, ids, mask, generated)
    assert torch.isfinite(step_logits).all()
    # generate() scores exactly these logits (up to its float32 cast)
    torch.testing.assert_close(torch.stack(out.logits, 1), step_logits.float(), rtol=0, atol=1e-6)
    for i, row in enumerate(rows):
        # The row alone, unpadded, teacher-forced on the tokens the padded batch generated.
        alone = torch.cat([row, generated[i]])[None]
        ref = model(alone, use_cache=False).logits[0, len(row) - 1 : -1]
        assert (step_logits[i] - ref).abs().max() <= atol * max(1.0, float(ref.abs().max()))
        # and the same tokens through the row's own (unpadded) generate()
        solo = model.generate(row[None], max_new_tokens=new, do_sample=False)
        assert torch.equal(solo[0, len(row) :], generated[i])


@torch.no_grad()
def test_left_padding_leaves_the_lds_state_exactly_as_the_row_alone():
    model = _model(HYBRID, True, torch.float64)
    ids, mask, rows = _left_padded([2, 7])
    batch_cache = model(ids, attention_mask=mask, use_cache=True).cache
    for i, row in enumerate(rows):
        solo_cache = model(row[None], use_cache=True).cache
        for layer_idx, kind in enumerate(model.config.layer_types):
            if kind != "linear_attention":
                continue
            got = batch_cache.layers[layer_idx].recurrent_states[0][i]
            want = solo_cache.layers[layer_idx].recurrent_states[0][0]
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("distilled", [False, True])
@torch.no_grad()
def test_right_padding_is_handled_by_the_loss_mask(distilled):
    model = _model(HYBRID, distilled, torch.float64)
    lengths = [12, 5, 9]
    rows = [torch.randint(1, 256, (n,)) for n in lengths]
    ids = torch.full((3, 12), PAD)
    mask = torch.zeros(3, 12, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    out = model(ids, attention_mask=mask, labels=ids.clone())
    # Reference: token-weighted mean of the rows' own losses (each row has len - 1 targets).
    total, count = 0.0, 0
    for i, row in enumerate(rows):
        solo = model(row[None])
        torch.testing.assert_close(out.logits[i, : len(row)], solo.logits[0], rtol=0, atol=1e-10)
        ce = torch.nn.functional.cross_entropy(solo.logits[0, :-1], row[1:], reduction="sum")
        total, count = total + ce, count + len(row) - 1
    # (transformers' loss upcasts logits to float32, hence the float32 tolerance)
    torch.testing.assert_close(out.loss.double(), total / count, rtol=1e-6, atol=0)
    # Without the mask the padded targets would be scored: a different loss.
    assert abs(float(model(ids, labels=ids).loss - out.loss)) > 1e-3
