"""Importers for the authors' checkpoints, checked against forwards written from their published equations.

Their layouts are rebuilt here with random weights (no file of theirs is needed): filters from a full
``numpy.linalg.eigh`` of the Hankel matrix, last ``K`` columns of the ascending spectrum (their recipe), with
arbitrary signs; tensors named and shaped as in their modules.
"""

import json
import math
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from emreason.spectral import SpectraLDSConfig, SpectraLDSForCausalLM, distill_lds, spectral_filters, to_lds
from emreason.spectral.filters import hankel_matrix
from emreason.spectral.importers import (
    align_filters,
    filter_lds_from_spectralds,
    from_flash_stu2,
    lds_from_spectralds,
    lds_stu_from_spectralds,
    load_tensors,
    stu_from_spectralds,
    to_lds_with_spectralds,
)

L, K = 48, 6


def their_filters(seq_len=L, k=K, bf16=False, seed=0) -> torch.Tensor:
    """Their recipe: ascending eigh, last K columns (smallest of them first), times sigma^0.25."""
    sigma, phi = np.linalg.eigh(hankel_matrix(seq_len))
    phi = phi[:, -k:] * sigma[-k:] ** 0.25
    phi = phi * np.random.default_rng(seed).choice([-1.0, 1.0], size=k)  # LAPACK's signs are arbitrary
    out = torch.tensor(phi)
    return out.bfloat16().double() if bf16 else out


def causal_conv(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``y[b, t, c] = sum_{s <= t} kernel[s, c] x[b, t - s, c]`` by explicit lags, float64."""
    t = x.shape[1]
    y = torch.zeros_like(x)
    for s in range(t):
        y[:, s:] += kernel[s] * x[:, : t - s]
    return y


def their_tensordot_stu(x, m_inputs, m_filters, phi):
    """flash-stu-2 / SpectraLDS tensordot STU: conv(x M_i, phi M_f) + conv(x M_i, (-1)^s phi M_f)."""
    sgn = torch.ones(phi.shape[0], 1, dtype=phi.dtype)
    sgn[1::2] = -1
    x_proj = x @ m_inputs
    phi_proj = (phi @ m_filters)[: x.shape[1]]
    return causal_conv(x_proj, phi_proj) + causal_conv(x_proj, (sgn[: x.shape[1]] * phi_proj))


def test_align_filters_recovers_their_order_and_signs_and_rejects_other_filters():
    theirs = their_filters()
    alignment = align_filters(theirs)
    assert alignment.perm.tolist() == list(range(K - 1, -1, -1))  # their ascending order
    ours = spectral_filters(L, K)
    np.testing.assert_allclose(theirs.numpy()[:, alignment.perm] * alignment.signs, ours, atol=1e-9)
    assert align_filters(their_filters(bf16=True)).max_abs_diff < 5e-3  # bf16-rounded filters accepted
    # Hankel-L filters (their use_hankel_L=True) are different filters: refused
    i = np.arange(1, L + 1, dtype=np.float64)
    s = i[:, None] + i[None, :]
    z_l = ((-1.0) ** (s - 2.0) + 1.0) * 8.0 / ((s + 3.0) * (s - 1.0) * (s + 1.0))
    sigma, phi = np.linalg.eigh(z_l)
    with pytest.raises(ValueError, match="differ from the standard Hankel filters"):
        align_filters(phi[:, -K:] * np.abs(sigma[-K:]) ** 0.25)


@pytest.mark.parametrize("bf16", [False, True])
def test_spectralds_tensordot_and_full_stu_match_their_forward(bf16):
    torch.manual_seed(0)
    d = 5
    phi = their_filters(bf16=bf16)
    x = torch.randn(2, 30, d, dtype=torch.float64)
    state = {"M_inputs": torch.randn(d, d) / d**0.5, "M_filters": torch.randn(K, d) / K**0.5}
    stu = stu_from_spectralds(state, phi)
    ref = their_tensordot_stu(x, state["M_inputs"].double(), state["M_filters"].double(), phi)
    # bf16-rounded filters of theirs vs our exact ones: the difference is that rounding, ~4e-3 relative
    tol = 1e-2 if bf16 else 1e-5
    assert (stu(x.float()).double() - ref).abs().max() <= tol * ref.abs().max()

    full = {"M_phi_plus": torch.randn(K, d, d) / 4, "M_phi_minus": torch.randn(K, d, d) / 4}
    stu = stu_from_spectralds(full, phi)
    sgn = torch.ones(L, 1, dtype=torch.float64)
    sgn[1::2] = -1
    ref = torch.zeros_like(x)
    for k in range(K):  # their U_plus / U_minus, then tensordot over (K, d_in)
        u_plus = causal_conv(x, phi[:, k : k + 1].expand(L, d))
        u_minus = causal_conv(x, (sgn * phi[:, k : k + 1]).expand(L, d))
        ref += u_plus @ full["M_phi_plus"][k].double() + u_minus @ full["M_phi_minus"][k].double()
    assert (stu(x.float()).double() - ref).abs().max() <= tol * ref.abs().max()


def _their_lds_state(n: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    a = torch.cat([torch.rand(n - n // 2, generator=g), -torch.rand(n // 2, generator=g)]) * 0.95
    return {
        "h0": torch.zeros(n),
        "A": a,
        "B": torch.randn(1, n, generator=g) / 2,
        "C": torch.randn(n, 2 * K, generator=g) / n,
        "M": torch.zeros(2 * K, 1, 0),  # their (empty) AR taps
    }


def test_spectralds_distilled_stu_matches_their_recurrence(tmp_path):
    torch.manual_seed(1)
    d, n, steps = 4, 11, 25  # odd n: padded with one zero state
    lds_state = _their_lds_state(n)
    path = tmp_path / "phi_lds.pt"
    torch.save({"state_dim": n, "input_dim": 1, "output_dim": 2 * K, "model_state_dict": lds_state}, path)
    stu_state = {"M_inputs": torch.randn(d, d) / d**0.5, "M_filters": torch.randn(K, d) / K**0.5}
    layer = lds_stu_from_spectralds(stu_state, path)
    assert layer.state_dim == 6 and tuple(layer.initial_state(2).shape) == (2, 12, d)

    # Their DistillSTU forward: per channel h = h * A + x B, U = h C, y = sum_k (U_k + U_{K+k}) M_f[k]
    x = torch.randn(2, steps, d, dtype=torch.float64)
    x_proj = x @ stu_state["M_inputs"].double()
    a, b, c = (lds_state[k].double() for k in ("A", "B", "C"))
    m_f = stu_state["M_filters"].double()
    h = torch.zeros(2, d, n, dtype=torch.float64)
    ref = []
    for t in range(steps):
        h = h * a + x_proj[:, t, :, None] * b[0]
        u = h @ c  # (B, d, 2K)
        ref.append(((u[..., :K] + u[..., K:]) * m_f.T).sum(-1))
    ref = torch.stack(ref, 1)
    y, state = layer(x.float())
    torch.testing.assert_close(y.double(), ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
    s = layer.initial_state(2)
    for t in range(steps):
        y_t, s = layer.step(x[:, t].float(), s)
    torch.testing.assert_close(y_t.double(), ref[:, -1], rtol=0, atol=1e-5 * float(ref.abs().max()))
    # and the raw LDS keeps their 2K channels: impulse response sum_n B_n A_n^t C[n]
    lds = lds_from_spectralds(path, dtype=torch.float64)
    t = torch.arange(7, dtype=torch.float64)[:, None]
    expected = (b[0] * a**t) @ c
    torch.testing.assert_close(lds.impulse_response(7), expected, rtol=0, atol=1e-12)


def _their_layout_from_ours(lds, phi):
    """Their layout built from one of our distillations: poles [a, -a], the plain half second."""
    alignment = align_filters(phi)
    # our channel k is their column perm[k] with sign signs[k]: invert the map for their layout
    c_theirs = torch.zeros(lds.state_dim, K, dtype=torch.float64)
    c_theirs[:, torch.as_tensor(alignment.perm)] = lds.output.double() * torch.as_tensor(alignment.signs)
    zeros = torch.zeros_like(c_theirs)
    return {
        "A": torch.cat([lds.poles, -lds.poles]).double(),
        "B": torch.ones(1, 2 * lds.state_dim, dtype=torch.float64),
        "C": torch.cat([torch.cat([zeros, c_theirs], 1), torch.cat([c_theirs, zeros], 1)], 0),
    }


def test_filter_lds_from_spectralds_reproduces_our_filters():
    ours = spectral_filters(L, K)
    lds = distill_lds(ours, 8, refine_steps=0, dtype=torch.float64)
    phi = their_filters()
    imported, info = filter_lds_from_spectralds(_their_layout_from_ours(lds, phi), phi, dtype=torch.float64)
    assert info["plain_half"] == 1
    err = (imported.impulse_response(L).numpy() - ours).__abs__().max()
    assert err <= lds.error.max_abs * 1.01 + 1e-9


@pytest.mark.parametrize("shared", [True, False])
def test_to_lds_with_their_lds_equals_our_to_lds_with_the_same_poles(shared):
    """Distilling an HF model with their LDS file = our to_lds with that LDS in our layout."""
    cfg = SpectraLDSConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, filter_len=L, num_filters=K,
        layer_types=["linear_attention", "sliding_attention"], sliding_window=8, num_attention_heads=2,
        share_filter_projection=shared,
    )  # fmt: skip
    model = SpectraLDSForCausalLM(cfg).eval()
    lds = distill_lds(spectral_filters(L, K), 8, refine_steps=0)
    phi = their_filters(seed=5)
    theirs = to_lds_with_spectralds(model, _their_layout_from_ours(lds, phi), phi)
    ours = to_lds(model, 8, filter_lds=lds)
    assert theirs.config.lds_state_dim == 8
    ids = torch.randint(0, 256, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids).logits, rtol=0, atol=1e-5)
        assert (theirs(ids).logits - model(ids).logits).abs().max() < 1e-2  # and it is a distillation


def _flash_state(cfg: dict, phi: torch.Tensor, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    d, hidden, k = cfg["n_embd"], cfg["n_embd"] * cfg["mlp_scale"], cfg["num_eigh"]

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    emb = rnd(cfg["vocab_size"], d, scale=d**-0.5)
    state = {"phi": phi.float(), "tok_emb.weight": emb, "lm_head.weight": emb, "norm.weight": 1 + rnd(d) / 5}
    for i in range(cfg["n_layers"]):
        p = f"layers.{i}."
        state |= {
            p + "stu_norm.weight": 1 + rnd(d) / 5,
            p + "stu.M_inputs": rnd(d, d, scale=d**-0.5),
            p + "stu.M_filters": rnd(k, d, scale=k**-0.5),
            p + "mlp_norm.weight": 1 + rnd(d) / 5,
            p + "mlp.gate_proj.weight": rnd(hidden, d, scale=d**-0.5),
            p + "mlp.up_proj.weight": rnd(hidden, d, scale=d**-0.5),
            p + "mlp.down_proj.weight": rnd(d, hidden, scale=hidden**-0.5),
        }
    return state


def their_flash_forward(state: dict, cfg: dict, ids: torch.Tensor) -> torch.Tensor:
    """flash-stu-2 FlashSTU (use_attn=False) forward in float64, from its published modules."""
    eps = torch.finfo(torch.float32).eps  # torch.nn.RMSNorm(eps=None) on float32 inputs

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    s = {k: v.double() for k, v in state.items()}
    d = cfg["n_embd"]
    tile = min(cfg.get("d_in_tile") or d, cfg.get("d_out_tile") or d)
    x = s["tok_emb.weight"][ids]
    for i in range(cfg["n_layers"]):
        p = f"layers.{i}."
        h = rms(x, s[p + "stu_norm.weight"])
        # their tiled path: each diagonal tile projects and convolves separately
        outs = []
        for lo in range(0, d, tile):
            hi = min(lo + tile, d)
            m_i = s[p + "stu.M_inputs"][lo:hi, lo:hi]
            outs.append(their_tensordot_stu(h[..., lo:hi], m_i, s[p + "stu.M_filters"][:, lo:hi], s["phi"]))
        x = x + torch.cat(outs, -1)
        h = rms(x, s[p + "mlp_norm.weight"])
        gate = torch.nn.functional.gelu(h @ s[p + "mlp.gate_proj.weight"].T, approximate="tanh")
        x = x + (gate * (h @ s[p + "mlp.up_proj.weight"].T)) @ s[p + "mlp.down_proj.weight"].T
    return rms(x, s["norm.weight"]) @ s["lm_head.weight"].T


@pytest.mark.parametrize("tile", [None, 4])
def test_flash_stu2_model_matches_their_forward(tmp_path, tile):
    cfg = {
        "model_type": "FlashSTU", "n_embd": 8, "n_heads": 2, "n_layers": 2, "seq_len": L, "vocab_size": 40,
        "mlp_scale": 2, "num_eigh": K, "use_attn": False, "use_approx": True, "use_hankel_L": False,
        "bias": False, "torch_dtype": "float32", "d_in_tile": tile, "d_out_tile": None,
    }  # fmt: skip
    state = _flash_state(cfg, their_filters(seed=3))
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    save_file(
        {k: v.contiguous() for k, v in state.items() if k != "lm_head.weight"}, tmp_path / "model.safetensors"
    )
    model = from_flash_stu2(tmp_path)
    ids = torch.randint(0, 40, (2, 33))
    ref = their_flash_forward({**state, "lm_head.weight": state["tok_emb.weight"]}, cfg, ids)
    got = model(ids).logits.double()
    assert (got - ref).abs().max() <= 1e-4 * ref.abs().max(), float((got - ref).abs().max())
    # an imported model is an ordinary emreason model: it generates and distills
    out = model.generate(ids[:1, :5], max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 9)


def test_flash_stu2_refuses_what_it_cannot_map(tmp_path):
    cfg = {"n_embd": 8, "n_layers": 2, "seq_len": L, "vocab_size": 40, "mlp_scale": 2, "num_eigh": K}
    state = _flash_state(cfg, their_filters())
    with pytest.raises(NotImplementedError, match="use_attn"):
        from_flash_stu2(state, {**cfg, "use_attn": True})
    with pytest.raises(ValueError, match="config"):
        from_flash_stu2(state)
    with pytest.raises(ValueError, match="h0 is non-zero"):
        lds_from_spectralds({**_their_lds_state(4), "h0": torch.ones(4)})


class _NotATensor:
    pass


def test_checkpoints_are_loaded_without_running_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model_state_dict": {"A": torch.zeros(2)}, "payload": _NotATensor()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_tensors(path)
    assert math.isfinite(float(load_tensors({"A": torch.zeros(1)})["A"][0]))
