"""The entropy core against float64 references, finite differences and autograd."""

import math

import pytest
import torch

from emreason.entropy import entropy_from_hidden, log_softmax_entropy, sequence_logprob, token_entropy


def reference_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Float64 entropy computed term by term from explicit probabilities (masked terms skipped)."""
    z = logits.double()
    p = torch.softmax(z, dim=-1)
    logp = torch.log_softmax(z, dim=-1)
    terms = torch.where(p > 0, -p * logp, torch.zeros_like(p))
    return terms.sum(-1)


def test_token_entropy_matches_float64_reference():
    torch.manual_seed(0)
    logits = torch.randn(4, 7, 1000) * 5
    got = token_entropy(logits)
    assert got.shape == (4, 7) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), reference_entropy(logits), atol=2e-5, rtol=1e-5)


def test_token_entropy_closed_forms():
    uniform = torch.zeros(3, 50)
    torch.testing.assert_close(token_entropy(uniform), torch.full((3,), math.log(50)))
    one_hot = torch.tensor([[0.0, -1e4, -1e4]])
    assert token_entropy(one_hot).item() == pytest.approx(0.0, abs=1e-6)
    # Two-point distribution with p = sigmoid(1): H = -p log p - (1-p) log(1-p)
    p = 1 / (1 + math.exp(-1))
    two = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    assert token_entropy(two).item() == pytest.approx(-p * math.log(p) - (1 - p) * math.log(1 - p), abs=1e-12)


def test_token_entropy_other_dim_and_float64():
    logits = torch.randn(5, 11, 3, dtype=torch.float64)
    got = token_entropy(logits, dim=1)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, reference_entropy(logits.transpose(1, 2)), atol=1e-12, rtol=1e-12)


def test_masked_entries_are_exactly_ignored_in_value_and_gradient():
    torch.manual_seed(1)
    base = torch.randn(2, 6)
    masked = torch.cat([base, torch.full((2, 4), float("-inf"))], dim=1).requires_grad_(True)
    h = token_entropy(masked)
    torch.testing.assert_close(h, token_entropy(base))
    h.sum().backward()
    assert torch.isfinite(masked.grad).all()
    assert (masked.grad[:, 6:] == 0).all()


def test_half_precision_is_upcast():
    torch.manual_seed(2)
    logits = torch.randn(8, 32000) * 3
    for dtype in (torch.float16, torch.bfloat16):
        got = token_entropy(logits.to(dtype))
        assert got.dtype == torch.float32
        # Only the input rounding differs from the float64 reference.
        torch.testing.assert_close(
            got.double(), reference_entropy(logits.to(dtype).float()), atol=1e-4, rtol=1e-4
        )


def test_all_masked_row_is_nan_not_crash():
    logits = torch.tensor([[float("-inf")] * 3, [0.0, 0.0, 0.0]])
    h = token_entropy(logits)
    assert math.isnan(h[0].item()) and h[1].item() == pytest.approx(math.log(3))


def test_token_entropy_gradient_matches_closed_form():
    # dH/dz_i = -p_i (log p_i + H)
    torch.manual_seed(3)
    z = torch.randn(3, 20, dtype=torch.float64, requires_grad=True)
    token_entropy(z).sum().backward()
    p = torch.softmax(z.detach(), -1)
    h = reference_entropy(z.detach()).unsqueeze(-1)
    torch.testing.assert_close(z.grad, -p * (torch.log(p) + h), atol=1e-12, rtol=1e-10)


def test_sequence_logprob_against_direct_computation():
    torch.manual_seed(4)
    logits = torch.randn(3, 5, 17)
    ids = torch.randint(0, 17, (3, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    out = sequence_logprob(logits, ids, mask)
    for b in range(3):
        terms = [
            math.log(torch.softmax(logits[b, t].double(), -1)[ids[b, t]].item())
            for t in range(5)
            if mask[b, t]
        ]
        assert out.sum[b].item() == pytest.approx(sum(terms), abs=1e-5)
        assert out.mean[b].item() == pytest.approx(sum(terms) / len(terms) if terms else 0.0, abs=1e-5)
    assert (out.token_logprobs[0, 3:] == 0).all()


def test_sequence_logprob_rejects_bad_shapes():
    with pytest.raises(ValueError, match="token_ids"):
        sequence_logprob(torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="mask shape"):
        sequence_logprob(torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 2))


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 10_000])
def test_entropy_from_hidden_equals_unchunked_with_gradients(chunk_size):
    torch.manual_seed(5)
    hidden = torch.randn(2, 13, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(50, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 13, dtype=torch.float64)

    chunked = entropy_from_hidden(hidden, weight, chunk_size=chunk_size, bias=bias)
    grads = torch.autograd.grad((chunked * upstream).sum(), (hidden, weight, bias))

    full = reference_entropy(hidden @ weight.T + bias)
    ref_grads = torch.autograd.grad((full * upstream).sum(), (hidden, weight, bias))
    torch.testing.assert_close(chunked, full, atol=1e-12, rtol=1e-10)
    for got, ref in zip(grads, ref_grads):
        torch.testing.assert_close(got, ref, atol=1e-10, rtol=1e-8)


def test_entropy_from_hidden_finite_differences():
    torch.manual_seed(6)
    hidden = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda h, w: entropy_from_hidden(h, w, chunk_size=3), (hidden, weight))


def _count_logit_blocks(monkeypatch, **kwargs) -> list[int]:
    """Rows of every logits block `entropy_from_hidden` computes in one forward + backward."""
    import emreason.entropy as entropy_module

    seen_rows = []
    original = entropy_module._chunk_logits_

    def spy(x, w, b, out):
        seen_rows.append(out.shape[0])
        return original(x, w, b, out)

    monkeypatch.setattr(entropy_module, "_chunk_logits_", spy)
    hidden = torch.randn(100, 8, requires_grad=True)
    weight = torch.randn(30, 8, requires_grad=True)
    entropy_from_hidden(hidden, weight, chunk_size=16, **kwargs).sum().backward()
    return seen_rows


def test_entropy_from_hidden_recompute_never_materializes_full_logits(monkeypatch):
    """recompute_logits=True: no logits block larger than the chunk, and backward recomputes them all."""
    seen_rows = _count_logit_blocks(monkeypatch, recompute_logits=True)
    # forward (7 chunks) + recomputation in backward (7 chunks), none larger than the chunk
    assert max(seen_rows) == 16 and len(seen_rows) == 14


@pytest.mark.parametrize(
    ("kwargs", "recomputed"),
    [
        ({"recompute_logits": False}, 0),
        ({"recompute_logits": "auto"}, 0),  # 100 x 30 float32 logits are far below the default budget
        # budget for 2 chunks of 16 x 30 float32 logits (3,840 bytes) plus a little: chunks 3..7 recomputed
        ({"recompute_logits": "auto", "keep_logits_max_bytes": 2 * 16 * 30 * 4 + 100}, 5),
        ({"recompute_logits": "auto", "keep_logits_max_bytes": 0}, 7),
    ],
)
def test_entropy_from_hidden_keeps_logits_within_budget(monkeypatch, kwargs, recomputed):
    seen_rows = _count_logit_blocks(monkeypatch, **kwargs)
    assert max(seen_rows) == 16 and len(seen_rows) == 7 + recomputed


@pytest.mark.parametrize("recompute", [True, False, "auto"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_entropy_from_hidden_paths_match_float64_autograd(recompute, with_bias):
    """Every keep/recompute mix, against plain float64 autograd through log_softmax; values, gradients
    of hidden, weight and bias, with a non-uniform upstream gradient (incl. zeros, as masked tokens)."""
    torch.manual_seed(11)
    hidden = torch.randn(3, 9, 12, dtype=torch.float64, requires_grad=True)
    weight = (torch.randn(70, 12, dtype=torch.float64) * 2).requires_grad_(True)
    bias = (torch.randn(70, dtype=torch.float64) * 3).requires_grad_(True) if with_bias else None
    upstream = torch.randn(3, 9, dtype=torch.float64)
    upstream[0, :4] = 0.0
    # "auto" with a budget of two 5-token chunks: a mix of kept and recomputed chunks.
    budget = {"keep_logits_max_bytes": 2 * 5 * 70 * 8} if recompute == "auto" else {}
    inputs = (hidden, weight) + ((bias,) if with_bias else ())
    got = entropy_from_hidden(hidden, weight, chunk_size=5, bias=bias, recompute_logits=recompute, **budget)
    grads = torch.autograd.grad((got * upstream).sum(), inputs)
    log_p = torch.log_softmax(hidden @ weight.T + (bias if with_bias else 0.0), -1)
    full = -(log_p.exp() * log_p).sum(-1)
    ref_grads = torch.autograd.grad((full * upstream).sum(), inputs)
    torch.testing.assert_close(got, full, atol=1e-12, rtol=1e-10)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-10, rtol=1e-8)
    assert (grads[0][0, :4] == 0).all()


@pytest.mark.parametrize("recompute", [True, False])
def test_entropy_from_hidden_finite_differences_both_paths(recompute):
    torch.manual_seed(12)
    hidden = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda h, w, b: entropy_from_hidden(h, w, chunk_size=2, bias=b, recompute_logits=recompute),
        (hidden, weight, bias),
    )


def test_entropy_from_hidden_second_backward_recomputes_kept_logits():
    """Kept logits are consumed by the first backward; a second one (retain_graph) must still be right."""
    torch.manual_seed(13)
    hidden = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    entropy = entropy_from_hidden(hidden, weight, chunk_size=3, recompute_logits=False)
    first = torch.autograd.grad(entropy.sum(), (hidden, weight), retain_graph=True)
    second = torch.autograd.grad(entropy.sum(), (hidden, weight))
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, atol=1e-13, rtol=1e-12)


def test_entropy_from_hidden_invalid_row_is_nan_in_value_and_gradient():
    hidden = torch.randn(4, 3, dtype=torch.float64)
    hidden[2, 0] = float("nan")
    hidden.requires_grad_(True)
    weight = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    for recompute in (True, False):
        entropy = entropy_from_hidden(hidden, weight, chunk_size=2, recompute_logits=recompute)
        assert torch.isnan(entropy[2]) and torch.isfinite(entropy[[0, 1, 3]]).all()
        (grad_hidden,) = torch.autograd.grad(entropy[[0, 1, 3]].sum(), hidden)
        assert torch.isnan(grad_hidden[2]).all() and torch.isfinite(grad_hidden[[0, 1, 3]]).all()


def test_entropy_from_hidden_bad_input():
    with pytest.raises(ValueError, match="chunk_size"):
        entropy_from_hidden(torch.randn(2, 4), torch.randn(5, 4), chunk_size=0)
    with pytest.raises(ValueError, match="hidden size 3"):
        entropy_from_hidden(torch.randn(2, 3), torch.randn(5, 4))
    for bad in ("always", 1, None):
        with pytest.raises(ValueError, match="recompute_logits"):
            entropy_from_hidden(torch.randn(2, 4), torch.randn(5, 4), recompute_logits=bad)
    with pytest.raises(ValueError, match="keep_logits_max_bytes"):
        entropy_from_hidden(torch.randn(2, 4), torch.randn(5, 4), keep_logits_max_bytes=-1)


def test_entropy_from_hidden_with_masking_bias():
    """A -inf bias masks tokens: value and gradients equal the unmasked computation on the rest."""
    torch.manual_seed(7)
    hidden = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor([0.0, float("-inf"), 0.5, float("-inf"), 0.0, 1.0], dtype=torch.float64)
    keep = torch.isfinite(bias)
    h = entropy_from_hidden(hidden, weight, chunk_size=2, bias=bias)
    gh, gw = torch.autograd.grad(h.sum(), (hidden, weight))
    ref = reference_entropy(hidden @ weight[keep].T + bias[keep])
    rh, rw = torch.autograd.grad(ref.sum(), (hidden, weight))
    torch.testing.assert_close(h, ref)
    torch.testing.assert_close(gh, rh)
    torch.testing.assert_close(gw, rw)
    assert (gw[~keep] == 0).all()


def test_log_softmax_entropy_matches_separate_computations():
    torch.manual_seed(8)
    logits = torch.randn(3, 40, dtype=torch.bfloat16)
    logits[0, :5] = float("-inf")
    log_p, h = log_softmax_entropy(logits)
    assert log_p.dtype == torch.float32 and torch.isneginf(log_p[0, :5]).all()
    torch.testing.assert_close(log_p, torch.log_softmax(logits.float(), -1))
    torch.testing.assert_close(h.double(), reference_entropy(logits.float()), atol=1e-5, rtol=1e-5)
