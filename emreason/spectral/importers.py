"""Import the authors' checkpoints: SpectraLDS (dshah02/SpectraLDS) LDS and STU state dicts, and flash-stu-2
(hazan-lab/flash-stu-2) STU-only language models, into emreason's layers and HF model.

Files are read with ``safetensors`` or ``torch.load(weights_only=True)`` only (no pickled code runs).

Their conventions, from their published forward passes, and how they map here:

* **Filters.** They take the *last* ``K`` columns of an ascending ``eigh`` of the same Hankel matrix, so
  their filter ``j`` is our filter ``K - 1 - j``, up to a sign chosen by their LAPACK call (and often
  rounded to bfloat16). :func:`align_filters` recovers the permutation and signs by matching their filters
  to :func:`~emreason.spectral.filters.spectral_filters`; the projections ``M_filters`` / ``M_phi_*`` are
  permuted and sign-flipped along ``K`` so that the imported layer uses our exact float64-derived filters.
* **Tensordot STU** (``M_inputs`` ``(d, d)``, ``M_filters`` ``(K, d)``): ``y = conv(x M_i, phi M_f) +
  conv(x M_i, (-1)^s phi M_f)``, our ``STU(..., use_tensordot=True, share_filter_projection=True)``.
* **Full STU** (``M_phi_plus``, ``M_phi_minus`` ``(K, d, d)``): our ``use_tensordot=False`` form.
* **SpectraLDS LDS** (``A`` ``(n,)``, ``B`` ``(1, n)``, ``C`` ``(n, 2K)``, ``h0``): ``h_t = A h_{t-1} + B
  u_t``, ``y_t = h_t C``, run per channel on the projected input; their distilled STU output is
  ``sum_k (U[..., k] + U[..., K + k]) M_filters[k]``. Impulse response ``sum_n B_n A_n^t C[n, :]``, so it is
  our :class:`~emreason.spectral.lds.LDS` with poles ``A`` and output ``B^T * C``; the distilled layer is an
  :class:`~emreason.spectral.stu.LDSSTU` with output ``(B^T * (C_1 + C_2)) @ M_filters`` (no filter mapping
  needed: the sum over their own filter order is invariant).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .filters import spectral_filters
from .lds import LDS, impulse_responses
from .stu import LDSSTU, STU

__all__ = [
    "FilterAlignment",
    "align_filters",
    "load_tensors",
    "lds_from_spectralds",
    "filter_lds_from_spectralds",
    "stu_from_spectralds",
    "lds_stu_from_spectralds",
    "to_lds_with_spectralds",
    "from_flash_stu2",
]

# Their filters are often bf16-rounded (relative spacing 2^-8): a match within 1% of the largest filter
# value is the same filter; anything else (Hankel-L filters, another L) is refused.
ALIGN_TOLERANCE = 1e-2
_WRAPPER_KEYS = ("model_state_dict", "state_dict", "model")


def load_tensors(source: str | Path | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` dict from a safetensors file, a ``.pt``/``.bin`` file or a mapping.

    ``.pt`` files are read with ``torch.load(weights_only=True)``; a checkpoint dict that wraps the
    weights (``{"model_state_dict": {...}, "state_dim": 160, ...}`` as SpectraLDS saves) is unwrapped.
    """
    if isinstance(source, Mapping):
        data = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint file at {path}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data = load_file(str(path))
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    for key in _WRAPPER_KEYS:
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = dict(data[key])
            break
    if not isinstance(data, Mapping):
        raise ValueError(f"expected a state dict (name -> tensor), got {type(data).__name__}")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def _require(state: Mapping[str, torch.Tensor], *names: str) -> list[torch.Tensor]:
    missing = [n for n in names if n not in state]
    if missing:
        raise KeyError(f"checkpoint lacks {missing}; it has {sorted(state)}")
    return [state[n] for n in names]


def _as_filters(filters: str | Path | np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(filters, (str, Path)):
        path = Path(filters)
        if path.suffix == ".npy":
            filters = np.load(path, allow_pickle=False)
        else:
            tensors = load_tensors(path)
            if "phi" not in tensors:
                raise KeyError(f"{path} has no 'phi' tensor (keys {sorted(tensors)})")
            filters = tensors["phi"]
    if isinstance(filters, torch.Tensor):
        filters = filters.detach().to("cpu", torch.float64).numpy()
    filters = np.asarray(filters, dtype=np.float64)
    if filters.ndim != 2:
        raise ValueError(f"filters must have shape (L, K), got {filters.shape}")
    return filters


@dataclass(frozen=True)
class FilterAlignment:
    """``ours[:, k] ~ signs[k] * theirs[:, perm[k]]``; ``max_abs_diff`` is the largest mismatch."""

    perm: np.ndarray
    signs: np.ndarray
    max_abs_diff: float
    seq_len: int
    num_filters: int

    def map_rows(self, theirs: torch.Tensor) -> torch.Tensor:
        """Their per-filter parameter (first axis ``K``) re-indexed to our filter order and signs."""
        perm = torch.as_tensor(self.perm, device=theirs.device)
        signs = torch.as_tensor(self.signs, dtype=theirs.dtype, device=theirs.device)
        return theirs[perm] * signs.view(-1, *([1] * (theirs.ndim - 1)))


def align_filters(their_filters: str | Path | np.ndarray | torch.Tensor) -> FilterAlignment:
    """Match the authors' filters ``(L, K)`` (``.npy``, a file with ``phi``, or an array) to ours.

    Raises ``ValueError`` if they are not, up to order, sign and bf16 rounding, the standard Hankel
    filters of that length (e.g. Hankel-L filters).
    """
    theirs = _as_filters(their_filters)
    seq_len, k = theirs.shape
    ours = spectral_filters(seq_len, k)
    norms = np.linalg.norm(ours, axis=0)[:, None] * np.linalg.norm(theirs, axis=0)[None, :]
    cosine = (ours.T @ theirs) / np.where(norms > 0, norms, 1.0)
    perm = np.abs(cosine).argmax(axis=1)
    signs = np.sign(cosine[np.arange(k), perm])
    signs[signs == 0] = 1.0
    if len(set(perm.tolist())) != k:
        raise ValueError("the given filters do not map one-to-one onto the Hankel filters")
    diff = float(np.abs(theirs[:, perm] * signs - ours).max())
    if diff > ALIGN_TOLERANCE * np.abs(ours).max():
        raise ValueError(
            f"the given filters differ from the standard Hankel filters (L={seq_len}, K={k}) by {diff:.3g} "
            f"after matching order and signs; Hankel-L or otherwise different filters are not supported"
        )
    return FilterAlignment(perm, signs, diff, seq_len, k)


# --------------------------------------------------------------------------------------------------
# SpectraLDS (dshah02/SpectraLDS)
# --------------------------------------------------------------------------------------------------


def _spectralds_lds_parts(state: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Poles ``(n,)`` and per-state output ``B^T * C`` ``(n, 2K)``, float64."""
    a, b, c = (t.detach().to("cpu", torch.float64) for t in _require(state, "A", "B", "C"))
    if a.ndim != 1 or b.shape != (1, a.shape[0]) or c.ndim != 2 or c.shape[0] != a.shape[0]:
        raise ValueError(
            f"expected A (n,), B (1, n), C (n, 2K) (a single-input LDS), got {tuple(a.shape)}, "
            f"{tuple(b.shape)}, {tuple(c.shape)}"
        )
    if c.shape[1] % 2:
        raise ValueError(f"C has {c.shape[1]} outputs; SpectraLDS filter LDSs have 2K")
    h0 = state.get("h0")
    if h0 is not None and bool(h0.abs().max() > 0):
        raise ValueError("h0 is non-zero; only LDSs started from the zero state are supported")
    return a, b[0][:, None] * c


def lds_from_spectralds(
    source: str | Path | Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float32
) -> LDS:
    """Their LDS checkpoint as an :class:`LDS` with the same ``2K`` output channels, in their order."""
    poles, output = _spectralds_lds_parts(load_tensors(source))
    return LDS(poles, output, dtype=dtype)


def filter_lds_from_spectralds(
    source: str | Path | Mapping[str, torch.Tensor],
    their_filters: str | Path | np.ndarray | torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> tuple[LDS, dict]:
    """Their LDS as a filter-level LDS for *our* filters: ``K`` channels in our order and signs.

    Of their ``2K`` outputs, one half approximates their filters and the other the alternating ones
    ``(-1)^t phi``; the half that matches the plain filters (checked numerically against
    ``their_filters``) is kept. Returns the LDS and ``{"plain_half": 0 or 1, "alignment": FilterAlignment}``.
    Its ``impulse_response`` can be compared with :func:`spectral_filters` directly.
    """
    poles, plain, _, info = _spectralds_halves(source, their_filters)
    return LDS(poles, plain, dtype=dtype), info


def _spectralds_halves(
    source: str | Path | Mapping[str, torch.Tensor],
    their_filters: str | Path | np.ndarray | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Poles, and the plain and alternating output halves ``(n, K)`` mapped to our filter order and signs.

    The half whose impulse response matches ``their_filters`` is the plain one; the other must match
    ``(-1)^t`` times them.
    """
    theirs = _as_filters(their_filters)
    alignment = align_filters(theirs)
    poles, output = _spectralds_lds_parts(load_tensors(source))
    k = alignment.num_filters
    if output.shape[1] != 2 * k:
        raise ValueError(f"the LDS has {output.shape[1]} outputs, the filters need 2K = {2 * k}")
    response = impulse_responses(poles, output, theirs.shape[0]).numpy()
    sign = (-1.0) ** np.arange(theirs.shape[0])[:, None]
    misfit = [float(np.abs(response[:, h * k : (h + 1) * k] - theirs).max()) for h in (0, 1)]
    alt_misfit = [float(np.abs(response[:, h * k : (h + 1) * k] - sign * theirs).max()) for h in (0, 1)]
    plain = int(np.argmin(misfit))
    if misfit[plain] > alt_misfit[plain] or alt_misfit[1 - plain] > misfit[1 - plain]:
        raise ValueError("the LDS outputs are not (filters, alternating filters) for the given filters")

    def mapped(half: int) -> torch.Tensor:  # columns in our order and signs
        return alignment.map_rows(output[:, half * k : (half + 1) * k].T.contiguous()).T

    info = {"plain_half": plain, "alignment": alignment, "max_abs_misfit": misfit[plain]}
    return poles, mapped(plain), mapped(1 - plain), info


def stu_from_spectralds(
    source: str | Path | Mapping[str, torch.Tensor],
    their_filters: str | Path | np.ndarray | torch.Tensor,
) -> STU:
    """Their STU layer (tensordot ``M_inputs``/``M_filters`` or full ``M_phi_plus``/``M_phi_minus``) as
    our :class:`STU` on our exact filters (their filter order and signs mapped)."""
    state = load_tensors(source)
    alignment = align_filters(their_filters)
    filters = spectral_filters(alignment.seq_len, alignment.num_filters)
    if "M_inputs" in state:
        m_inputs, m_filters = (t.detach().float().cpu() for t in _require(state, "M_inputs", "M_filters"))
        stu = STU(m_inputs.shape[0], filters, use_tensordot=True, share_filter_projection=True)
        stu.M_inputs.data.copy_(m_inputs)
        stu.M_filters.data.copy_(alignment.map_rows(m_filters))
        return stu
    if "M_phi_plus" in state:
        if "M_phi_minus" not in state:
            raise ValueError("M_phi_minus missing: Hankel-L (single-branch) STUs are not supported")
        plus, minus = (t.detach().float().cpu() for t in _require(state, "M_phi_plus", "M_phi_minus"))
        stu = STU(plus.shape[1], filters, use_tensordot=False)
        stu.M_plus.data.copy_(alignment.map_rows(plus))
        stu.M_minus.data.copy_(alignment.map_rows(minus))
        return stu
    raise KeyError(f"no STU weights (M_inputs/M_filters or M_phi_plus/M_phi_minus) in {sorted(state)}")


def lds_stu_from_spectralds(
    stu_source: str | Path | Mapping[str, torch.Tensor],
    lds_source: str | Path | Mapping[str, torch.Tensor],
    dtype: torch.dtype = torch.float32,
) -> LDSSTU:
    """Their distilled STU (``DistillSTU``: tensordot ``M_inputs``, ``M_filters`` and a filter LDS) as an
    :class:`LDSSTU`: poles ``A``, output ``(B^T * (C[:, :K] + C[:, K:])) @ M_filters``.

    Our ``LDSSTU`` holds ``2 * state_dim`` states; an odd ``n`` is padded with one zero state.
    """
    stu_state = load_tensors(stu_source)
    m_inputs, m_filters = _require(stu_state, "M_inputs", "M_filters")
    m_inputs, m_filters = m_inputs.detach().cpu().double(), m_filters.detach().cpu().double()
    poles, output = _spectralds_lds_parts(load_tensors(lds_source))
    k = output.shape[1] // 2
    if m_filters.shape[0] != k:
        raise ValueError(f"M_filters has {m_filters.shape[0]} filters, the LDS has 2K = {2 * k} outputs")
    channel_output = (output[:, :k] + output[:, k:]) @ m_filters  # (n, d)
    n = poles.shape[0]
    if n % 2:
        poles = torch.cat([poles, poles.new_zeros(1)])
        channel_output = torch.cat([channel_output, channel_output.new_zeros(1, channel_output.shape[1])])
    layer = LDSSTU(m_inputs.shape[0], poles.shape[0] // 2)
    layer.M_inputs.data.copy_(m_inputs.float())
    layer.lds = LDS(poles, channel_output, dtype=dtype)
    return layer


def to_lds_with_spectralds(
    model,
    source: str | Path | Mapping[str, torch.Tensor],
    their_filters: str | Path | np.ndarray | torch.Tensor,
    dtype: torch.dtype = torch.float32,
):
    """Distil an undistilled :class:`SpectraLDSForCausalLM` with the authors' filter LDS (e.g. their
    ``80_phi_lds.pt``) instead of running :func:`distill_lds`: every STU layer becomes an LDS with their
    ``n`` poles (``lds_state_dim = ceil(n / 2)``, so ``2 * lds_state_dim`` states, as theirs) and output
    ``plain @ M_filters + alternating @ M_filters_minus`` (both halves mapped to our filter order).
    """
    from .modeling import STU_LAYER, LDSMixer, SpectraLDSForCausalLM

    if not isinstance(model, SpectraLDSForCausalLM) or model.config.lds_state_dim is not None:
        raise TypeError("expected an undistilled SpectraLDSForCausalLM")
    poles, plain, alt, info = _spectralds_halves(source, their_filters)
    alignment = info["alignment"]
    if (alignment.seq_len, alignment.num_filters) != (model.config.filter_len, model.config.num_filters):
        raise ValueError(
            f"the LDS is for L={alignment.seq_len}, K={alignment.num_filters}; the model has "
            f"filter_len={model.config.filter_len}, num_filters={model.config.num_filters}"
        )
    if poles.shape[0] % 2:
        poles = torch.cat([poles, poles.new_zeros(1)])
        plain, alt = (torch.cat([t, t.new_zeros(1, t.shape[1])]) for t in (plain, alt))
    config = copy.deepcopy(model.config)
    config.lds_state_dim = poles.shape[0] // 2
    distilled = copy.deepcopy(model)
    distilled.config = config
    distilled.model.config = config
    with torch.no_grad():
        for block in distilled.model.layers:
            if block.layer_type != STU_LAYER:
                continue
            stu = block.mixer.stu
            m_plus = stu.M_filters.double()
            m_minus = m_plus if stu.share_filter_projection else stu.M_filters_minus.double()
            mixer = LDSMixer(config, block.mixer.layer_idx)
            mixer.lds_stu.M_inputs.data.copy_(stu.M_inputs.data)
            mixer.lds_stu.lds = LDS(poles, plain @ m_plus.cpu() + alt @ m_minus.cpu(), dtype=dtype)
            block.mixer = mixer.to(stu.M_inputs.device)
    return distilled


# --------------------------------------------------------------------------------------------------
# flash-stu-2 (hazan-lab/flash-stu-2) language models
# --------------------------------------------------------------------------------------------------


def _flash_config(config: str | Path | Mapping) -> dict:
    if isinstance(config, (str, Path)):
        path = Path(config)
        path = path / "config.json" if path.is_dir() else path
        return json.loads(path.read_text())
    return dict(config)


def _flash_weights_file(directory: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin", "model.pt"):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"no model.safetensors / pytorch_model.bin in {directory}")


def from_flash_stu2(
    source: str | Path | Mapping[str, torch.Tensor],
    config: str | Path | Mapping | None = None,
    rms_norm_eps: float | None = None,
):
    """A flash-stu-2 ``FlashSTU`` checkpoint (STU-only, tensordot) as a :class:`SpectraLDSForCausalLM`.

    Args:
        source: a directory with ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``), a
            weights file, or a state dict. The persistent ``phi`` buffer gives their filter order and signs.
        config: their config (dict, ``config.json`` path or directory); defaults to ``source``'s directory.
        rms_norm_eps: their ``torch.nn.RMSNorm(eps=None)`` uses ``finfo(input dtype).eps``; the default
            here is float32's (1.19e-7). Pass ``torch.finfo(torch.bfloat16).eps`` to mirror a bf16 run,
            or 1e-6 for a model trained with Liger's fused RMSNorm.

    Supported: ``use_attn=False`` (every layer an STU), ``use_approx=True``, ``use_hankel_L=False``, no
    STU MLP sandwich, no biases; ``d_in_tile``/``d_out_tile`` tiling becomes a block-diagonal
    ``M_inputs``. Their MLP is GeGLU with tanh-GELU (``hidden_act="gelu_pytorch_tanh"`` here). Their
    hybrid models' attention layers (softcapped sliding-window attention) have no counterpart here.
    """
    from .modeling import STU_LAYER, SpectraLDSConfig, SpectraLDSForCausalLM

    if isinstance(source, (str, Path)) and Path(source).is_dir():
        directory = Path(source)
        config = directory if config is None else config
        source = _flash_weights_file(directory)
    if config is None:
        if isinstance(source, (str, Path)):
            config = Path(source).parent
        else:
            raise ValueError("pass config (their config.json) with an in-memory state dict")
    cfg = _flash_config(config)
    state = load_tensors(source)
    unsupported = {
        "use_attn": (cfg.get("use_attn", True), False),
        "use_approx": (cfg.get("use_approx", True), True),
        "use_hankel_L": (cfg.get("use_hankel_L", False), False),
        "stu_enable_mlp_sandwich": (cfg.get("stu_enable_mlp_sandwich", False), False),
        "bias": (cfg.get("bias", False), False),
    }
    bad = {k: got for k, (got, want) in unsupported.items() if bool(got) != want}
    if bad:
        raise NotImplementedError(
            f"unsupported flash-stu-2 settings {bad}: only STU-only (use_attn=False), tensordot "
            f"(use_approx=True), standard-Hankel models without STU MLP sandwich or biases are imported"
        )
    dim, layers = int(cfg["n_embd"]), int(cfg["n_layers"])
    (phi,) = _require(state, "phi")
    alignment = align_filters(phi)
    if alignment.seq_len != int(cfg["seq_len"]) or alignment.num_filters != int(cfg["num_eigh"]):
        raise ValueError(
            f"phi has shape {(alignment.seq_len, alignment.num_filters)}, config says "
            f"seq_len={cfg['seq_len']}, num_eigh={cfg['num_eigh']}"
        )
    heads = int(cfg.get("n_heads", 1))
    ours = SpectraLDSConfig(
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=dim,
        intermediate_size=dim * int(cfg.get("mlp_scale", 12)),
        num_hidden_layers=layers,
        layer_types=[STU_LAYER] * layers,
        filter_len=alignment.seq_len,
        num_filters=alignment.num_filters,
        share_filter_projection=True,
        num_attention_heads=heads if dim % heads == 0 else 1,
        hidden_act="gelu_pytorch_tanh",
        rms_norm_eps=float(torch.finfo(torch.float32).eps) if rms_norm_eps is None else rms_norm_eps,
        tie_word_embeddings=True,
    )
    tile = min(int(cfg.get("d_in_tile") or dim), int(cfg.get("d_out_tile") or dim))
    block_mask = None
    if tile < dim:
        blocks = torch.arange(dim) // tile
        block_mask = (blocks[:, None] == blocks[None, :]).float()  # their tiles: diagonal blocks only

    def get(name: str) -> torch.Tensor:
        return _require(state, name)[0].detach().float().cpu()

    mapped = {"model.embed_tokens.weight": get("tok_emb.weight"), "model.norm.weight": get("norm.weight")}
    mapped["lm_head.weight"] = mapped["model.embed_tokens.weight"]
    for i in range(layers):
        src, dst = f"layers.{i}.", f"model.layers.{i}."
        m_inputs = get(src + "stu.M_inputs")
        if block_mask is not None:
            m_inputs = m_inputs * block_mask
        mapped[dst + "mixer_norm.weight"] = get(src + "stu_norm.weight")
        mapped[dst + "mixer.stu.M_inputs"] = m_inputs
        mapped[dst + "mixer.stu.M_filters"] = alignment.map_rows(get(src + "stu.M_filters"))
        mapped[dst + "mlp_norm.weight"] = get(src + "mlp_norm.weight")
        mapped[dst + "mlp.gate_up.weight"] = torch.cat(
            [get(src + "mlp.gate_proj.weight"), get(src + "mlp.up_proj.weight")], dim=0
        )
        mapped[dst + "mlp.down.weight"] = get(src + "mlp.down_proj.weight")
    model = SpectraLDSForCausalLM(ours)
    # Our filters buffers stay as computed (exact); every weight must be present.
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    missing = [k for k in missing if not k.endswith("stu.filters")]
    if missing or unexpected:
        raise RuntimeError(f"weight mapping incomplete: missing {missing}, unexpected {unexpected}")
    return model.eval()
