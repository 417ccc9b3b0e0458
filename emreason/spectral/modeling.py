"""SpectraLDS causal language model for transformers: STU-only or STU / sliding-window-attention hybrid.

Single-file modeling in the transformers style. Layer kinds are named with transformers' cache layer
types so that ``DynamicCache(config=...)`` (what ``generate()`` builds) has the right layer per block:

* ``"linear_attention"``: an STU block. Undistilled, its cache is a conv state holding the last ``L``
  projected inputs (decode = one dot product over ``L`` lags); distilled (``config.lds_state_dim`` set),
  it is a recurrent state ``(B, 2n, d)``: constant size and constant time per token.
* ``"sliding_attention"`` / ``"full_attention"``: causal multi-head attention with RoPE and a KV cache.

A full forward needs ``T <= config.filter_len`` for undistilled STU layers; decoding continues past it
(the undistilled STU slides its ``L``-lag window, the LDS simply keeps running).

Padding: an ``attention_mask`` ``(B, S)`` with zeros marks padded positions. Their (normalised) inputs are
zeroed before every STU/LDS layer, so they add nothing to a convolution or an LDS state (an LDS state stays
exactly zero through left padding), and attention never uses them as keys. With left padding each row's
logits therefore equal those of the row run alone; with right padding the real positions are causal and
unaffected, and ``labels`` at padded positions are ignored by the loss. Padding inside a row (zeros
between real tokens) is not meaningful for a convolution (the gap still counts as lags).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .conv import causal_conv_fft
from .filters import spectral_filters
from .lds import LDS, distill_lds
from .stu import LDSSTU, STU

__all__ = [
    "SpectraLDSConfig",
    "SpectraLDSModel",
    "SpectraLDSForCausalLM",
    "SpectraLDSPreTrainedModel",
    "to_lds",
]

STU_LAYER = "linear_attention"
ATTENTION_LAYERS = ("sliding_attention", "full_attention")


class SpectraLDSConfig(PreTrainedConfig):
    r"""
    Configuration of a SpectraLDS / Flash STU causal language model.

    Args:
        vocab_size: vocabulary size.
        hidden_size: model width ``d``.
        intermediate_size: MLP hidden width.
        num_hidden_layers: number of blocks.
        layer_types: per block, ``"linear_attention"`` (STU), ``"sliding_attention"`` or ``"full_attention"``;
            default all STU. Flash STU alternates STU and sliding-window attention.
        filter_len: length ``L`` of the spectral filters (maximum full-forward length of STU layers).
        num_filters: number of spectral filters ``K``.
        share_filter_projection: both STU branches share ``M_filters`` (Flash STU). An STU-only model should
            set False, otherwise it never sees odd lags.
        lds_state_dim: ``None`` for STU layers; ``n`` for distilled layers with ``2n`` states (``n`` poles
            and their negations).
        num_attention_heads, sliding_window, rope_theta: attention settings.
        rms_norm_eps, initializer_range: usual meanings.
        hidden_act: the MLP's gate activation (a ``transformers.activations.ACT2FN`` name): ``"silu"``
            (SwiGLU, default) or ``"gelu_pytorch_tanh"`` (flash-stu-2's GeGLU, set by its importer).
    """

    model_type = "spectralds"

    vocab_size: int = 256
    hidden_size: int = 128
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    layer_types: list[str] | None = None
    filter_len: int = 512
    num_filters: int = 16
    share_filter_projection: bool = True
    lds_state_dim: int | None = None
    num_attention_heads: int = 4
    sliding_window: int | None = 1024
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    hidden_act: str = "silu"
    use_cache: bool = True
    tie_word_embeddings: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs):
        if self.layer_types is None:
            self.layer_types = [STU_LAYER] * self.num_hidden_layers
        self.layer_types = list(self.layer_types)
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries, "
                f"but num_hidden_layers={self.num_hidden_layers}"
            )
        bad = [t for t in self.layer_types if t not in (STU_LAYER, *ATTENTION_LAYERS)]
        if bad:
            raise ValueError(f"unknown layer types {bad}; use {STU_LAYER!r}, {ATTENTION_LAYERS}")
        if self.lds_state_dim is not None and self.lds_state_dim <= 0:
            raise ValueError(f"lds_state_dim must be positive or None, got {self.lds_state_dim}")
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"unknown hidden_act {self.hidden_act!r}; use a transformers ACT2FN name")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if "sliding_attention" in self.layer_types and not self.sliding_window:
            raise ValueError("sliding_attention layers need a positive sliding_window")
        if self.filter_len < 2 or not 1 <= self.num_filters <= self.filter_len:
            raise ValueError(
                f"need filter_len >= 2 and 1 <= num_filters <= filter_len, got {self.filter_len}, "
                f"{self.num_filters}"
            )
        super().__post_init__(**kwargs)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class MLP(nn.Module):
    def __init__(self, config: SpectraLDSConfig):
        super().__init__()
        self.gate_up = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(self.act(gate) * up)


def _rotate(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary position embedding of ``x`` ``(B, H, T, hd)`` at ``positions`` ``(B, T)``."""
    half = x.shape[-1] // 2
    freqs = theta ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions[:, None, :, None].float() * freqs  # (B, 1, T, half)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Attention(nn.Module):
    """Causal multi-head attention, optionally restricted to the last ``window`` positions (self included)."""

    def __init__(self, config: SpectraLDSConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.window = config.sliding_window if config.layer_types[layer_idx] == "sliding_attention" else None
        self.rope_theta = config.rope_theta
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.out = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cache: Cache | None,
        position_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` ``(B, T, d)``; ``attention_mask`` ``(B, past + T)`` (1 = real token) or None."""
        batch, seq_len, _ = x.shape
        past = cache.layers[self.layer_idx].get_seq_length() if cache is not None else 0
        if attention_mask is not None and attention_mask.shape[1] != past + seq_len:
            raise ValueError(
                f"attention_mask has {attention_mask.shape[1]} positions, expected past + new = "
                f"{past} + {seq_len}"
            )
        q_pos = past + torch.arange(seq_len, device=x.device)
        if position_ids is None:
            position_ids = q_pos[None, :].expand(batch, seq_len)
        q, k, v = self.qkv(x).view(batch, seq_len, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = _rotate(q, position_ids, self.rope_theta), _rotate(k, position_ids, self.rope_theta)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        # Absolute positions of the keys returned (the cache may have dropped the oldest ones).
        k_pos = past + seq_len - k.shape[2] + torch.arange(k.shape[2], device=x.device)
        lag = q_pos[:, None] - k_pos[None, :]
        mask = lag >= 0
        if self.window is not None:
            mask &= lag < self.window
        if attention_mask is not None:
            # Padded keys are never attended to; a padded query attends to itself only, so its row is
            # not fully masked (SDPA would return NaN) and its harmless output never reaches real tokens.
            key_ok = attention_mask[:, k_pos].bool()[:, None, :] | (lag == 0)[None]  # (B, T, S)
            mask = (mask[None] & key_ok)[:, None]  # (B, 1, T, S)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(batch, seq_len, -1))


class STUMixer(nn.Module):
    """Tensordot STU using transformers' linear-attention cache layer (conv state = last L inputs)."""

    def __init__(self, config: SpectraLDSConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        filters = torch.as_tensor(
            spectral_filters(config.filter_len, config.num_filters), dtype=torch.float32
        )
        self.stu = STU(config.hidden_size, filters, True, config.share_filter_projection)
        self._decode_kernel: torch.Tensor | None = None
        self._decode_kernel_key: tuple | None = None

    def decode_kernel(self) -> torch.Tensor:
        """The depthwise kernel as ``(d, L)``, largest lag first (to dot with the conv state, newest last).

        Forming it costs ``2 L K d`` flops, more than the decode dot product itself, so without grad it
        is kept and reused until a weight changes (in-place updates bump ``_version``) or moves.
        """
        stu = self.stu
        tensors = [stu.filters, stu.M_filters]
        if not stu.share_filter_projection:
            tensors.append(stu.M_filters_minus)
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
        if torch.is_grad_enabled():
            return stu.depthwise_kernel().flip(0).T
        if key != self._decode_kernel_key:
            self._decode_kernel = stu.depthwise_kernel().flip(0).T.contiguous()
            self._decode_kernel_key = key
        return self._decode_kernel

    def forward(self, x: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        """``x`` ``(B, T, d)`` with padded positions already zeroed (see :class:`Block`)."""
        stu = self.stu
        if cache is None:
            return stu(x)
        layer = cache.layers[self.layer_idx]
        u_proj = stu.project_input(x)
        if not layer.has_previous_state[0]:
            stu._check_input(x)
            y = causal_conv_fft(u_proj, stu.depthwise_kernel(x.shape[1]))
            cache.update_conv_state(u_proj.transpose(1, 2), self.layer_idx, conv_kernel_size=stu.seq_len)
            return y
        # history: (B, d, L + T), newest last; only the last L inputs matter for L-lag filters.
        history = cache.update_conv_state(
            u_proj.transpose(1, 2), self.layer_idx, conv_kernel_size=stu.seq_len
        )
        seq_len = x.shape[1]
        if seq_len == 1:
            kernel = self.decode_kernel()
            window = history[..., -stu.seq_len :].to(kernel.dtype)  # float32 even in a bf16 model
            return torch.einsum("bdl,dl->bd", window, kernel)[:, None, :].to(x.dtype)
        kernel = stu.depthwise_kernel()
        padded = F.pad(kernel, (0, 0, 0, history.shape[-1] - kernel.shape[0]))
        return causal_conv_fft(history.transpose(1, 2), padded)[:, -seq_len:]


class LDSMixer(nn.Module):
    """Distilled STU: the recurrent state lives in the cache's recurrent slot, ``(B, 2n, d)``."""

    def __init__(self, config: SpectraLDSConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.lds_stu = LDSSTU(config.hidden_size, config.lds_state_dim)

    def forward(self, x: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        if cache is None:
            return self.lds_stu(x)[0]
        layer = cache.layers[self.layer_idx]
        # A reset cache keeps zeroed states, which is the correct initial LDS state.
        state = layer.recurrent_states[0] if layer.is_recurrent_states_initialized[0] else None
        if state is not None and x.shape[1] == 1:
            y, new_state = self.lds_stu.step(x[:, 0], state)
            y = y[:, None, :]
        else:
            y, new_state = self.lds_stu(x, state)
        cache.update_recurrent_state(new_state, self.layer_idx)
        return y


class Block(nn.Module):
    def __init__(self, config: SpectraLDSConfig, layer_idx: int):
        super().__init__()
        self.layer_type = config.layer_types[layer_idx]
        self.mixer_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        if self.layer_type == STU_LAYER:
            self.mixer = (LDSMixer if config.lds_state_dim else STUMixer)(config, layer_idx)
        else:
            self.mixer = Attention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        cache: Cache | None,
        position_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` ``(B, T, d)``; ``attention_mask`` ``(B, past + T)`` or None (no padding)."""
        h = self.mixer_norm(x)
        if self.layer_type == STU_LAYER:
            if attention_mask is not None:
                # Zeroed inputs: padded positions add nothing to the convolution / LDS state.
                real = attention_mask[:, -x.shape[1] :].bool()[..., None]
                h = torch.where(real, h, torch.zeros((), dtype=h.dtype, device=h.device))
            h = self.mixer(h, cache)
        else:
            h = self.mixer(h, cache, position_ids, attention_mask)
        x = x + h
        return x + self.mlp(self.mlp_norm(x))


class SpectraLDSPreTrainedModel(PreTrainedModel):
    config: SpectraLDSConfig
    config_class = SpectraLDSConfig
    base_model_prefix = "model"
    _no_split_modules = ["Block"]
    _supports_sdpa = True
    # Loaded with dtype=bf16/fp16, the LDS poles/output and the STU filters stay float32 (the layers'
    # Float32Tensors guard does the same for .to(dtype)); everything else takes the requested dtype.
    _keep_in_fp32_modules = ["lds_stu.lds", "stu.filters"]
    _keep_in_fp32_modules_strict = ["lds_stu.lds", "stu.filters"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, STU):
            init.normal_(module.M_inputs, std=module.dim**-0.5)
            init.normal_(module.M_filters, std=module.num_filters**-0.5)
            if not module.share_filter_projection:
                init.normal_(module.M_filters_minus, std=module.num_filters**-0.5)
            filters = spectral_filters(module.seq_len, module.num_filters)
            init.copy_(module.filters, torch.as_tensor(filters, dtype=module.filters.dtype))
        elif isinstance(module, LDSSTU):
            # Poles and output are buffers set by to_lds or a checkpoint; only the projection is a weight.
            init.normal_(module.M_inputs, std=module.dim**-0.5)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)


def _padding_mask(attention_mask: torch.Tensor | None, batch: int, seq_len: int) -> torch.Tensor | None:
    """Validated ``(B, past + T)`` mask, or None when there is no padding (all ones or no mask)."""
    if attention_mask is None:
        return None
    if attention_mask.ndim != 2 or attention_mask.shape[0] != batch or attention_mask.shape[1] < seq_len:
        raise ValueError(
            f"attention_mask must be 2-D (B={batch}, past + T >= {seq_len}) with 1 for real tokens and 0 for "
            f"padding, got shape {tuple(attention_mask.shape)}"
        )
    return None if bool(attention_mask.all()) else attention_mask


class SpectraLDSModel(SpectraLDSPreTrainedModel):
    def __init__(self, config: SpectraLDSConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        attention_mask = _padding_mask(attention_mask, x.shape[0], x.shape[1])
        if attention_mask is not None and position_ids is None:
            # RoPE positions count real tokens only (as generate() does), so a left-padded row sees the
            # same positions as when run alone.
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -x.shape[1] :]
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        for block in self.layers:
            x = block(x, cache if use_cache else None, position_ids, attention_mask)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(x), cache=cache if use_cache else None)


class SpectraLDSForCausalLM(SpectraLDSPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: SpectraLDSConfig):
        super().__init__(config)
        self.model = SpectraLDSModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits ``(B, T, V)`` (or the last ``logits_to_keep``); ``labels`` ``(B, T)`` give the LM loss."""
        if "past_key_values" in kwargs:  # the pre-5.x name
            cache = kwargs.pop("past_key_values")
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
        )
        hidden = out.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden = hidden[:, logits_to_keep]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            if attention_mask is not None and attention_mask.ndim == 2:
                # Right padding in training: padded targets carry no loss.
                labels = labels.masked_fill(attention_mask[:, -labels.shape[1] :] == 0, -100)
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache)


@torch.no_grad()
def to_lds(
    model: SpectraLDSForCausalLM, state_dim: int, filter_lds: LDS | None = None, **distill_kwargs
) -> SpectraLDSForCausalLM:
    """A distilled copy of ``model``: every STU layer becomes an LDS with ``2 * state_dim`` states.

    All STU layers share the same filters, so the filters are distilled once (or pass ``filter_lds``).
    The returned model's config has ``lds_state_dim=state_dim``; it saves and loads like any other.
    """
    if not isinstance(model, SpectraLDSForCausalLM):
        raise TypeError(f"expected a SpectraLDSForCausalLM, got {type(model).__name__}")
    if model.config.lds_state_dim is not None:
        raise ValueError("model is already distilled (config.lds_state_dim is set)")
    if isinstance(state_dim, bool) or not isinstance(state_dim, int):
        raise TypeError(f"state_dim must be an int, got {type(state_dim).__name__}")
    if state_dim <= 0:
        raise ValueError(f"state_dim must be positive, got {state_dim}")
    if filter_lds is None:
        filters = spectral_filters(model.config.filter_len, model.config.num_filters)
        filter_lds = distill_lds(filters, state_dim, **distill_kwargs)
    elif filter_lds.state_dim != state_dim:
        raise ValueError(f"filter_lds has {filter_lds.state_dim} poles but state_dim={state_dim}")
    config = copy.deepcopy(model.config)
    config.lds_state_dim = state_dim
    distilled = copy.deepcopy(model)
    distilled.config = config
    distilled.model.config = config
    for block in distilled.model.layers:
        if block.layer_type == STU_LAYER:
            mixer = LDSMixer(config, block.mixer.layer_idx)
            mixer.lds_stu = block.mixer.stu.to_lds(filter_lds=filter_lds)
            block.mixer = mixer
    # The filter-level error, for reports (not part of the checkpoint).
    distilled.filter_lds_error = filter_lds.error
    return distilled
