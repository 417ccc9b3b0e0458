"""The Spectral Transform Unit (STU) layer and its distilled, recurrent form.

STU output (full form)::

    y_t = sum_k M+_k (phi_k * u)_t + sum_k M-_k (((-1)^s phi_k) * u)_t

with causal convolutions ``*`` over lags ``s``. The *tensordot* approximation used for language models
(Flash STU) projects the input with ``M_inputs`` ``(d, d)`` and the filters with ``M_filters``
``(K, d)``, then runs two depthwise convolutions of the projected input: with ``phi @ M_filters`` and
with ``(-1)^s phi @ M_filters``. Sharing the filter projection makes their sum a kernel that is zero at
odd lags (``1 + (-1)^s``); ``share_filter_projection=False`` gives the negative branch its own
projection, which an STU-only model needs to see odd lags at all.

In tensordot form an STU layer is a depthwise convolution with kernel ``k(s) (L, d)``, so after
:func:`~emreason.spectral.lds.distill_lds` approximates ``phi ~ a^s C`` it becomes an
:class:`~emreason.spectral.lds.LDS` with poles ``[a, -a]`` and output ``[C @ M+, C @ M-]``: see
:class:`LDSSTU` and :meth:`STU.to_lds`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .conv import causal_conv_fft
from .lds import LDS, distill_lds
from .precision import Float32Tensors

__all__ = ["STU", "LDSSTU", "alternating_signs"]


def alternating_signs(length: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(-1)^t`` for ``t = 0..length-1``, shape ``(length, 1)``."""
    signs = torch.ones(length, 1, device=device, dtype=dtype)
    signs[1::2] = -1
    return signs


class STU(Float32Tensors):
    """Spectral Transform Unit over fixed filters ``(L, K)``; input/output ``(B, T, d)`` with ``T <= L``.

    Args:
        dim: model width ``d``.
        filters: spectral filters ``(L, K)`` (see :func:`~emreason.spectral.filters.spectral_filters`).
        use_tensordot: the Flash STU approximation (``d*d + K*d`` parameters) instead of the full
            ``2*K*d*d``-parameter form.
        share_filter_projection: tensordot only; both branches use ``M_filters`` (Flash STU). If False
            the negative branch has its own ``M_filters_minus``.

    The fixed ``filters`` buffer stays float32 when the module is cast to bf16/fp16 (the projections follow
    the cast); kernels are formed and convolved in float32 and outputs returned in the input's dtype.
    """

    _fp32_tensors = ("filters",)

    def __init__(
        self,
        dim: int,
        filters: torch.Tensor | np.ndarray,
        use_tensordot: bool = True,
        share_filter_projection: bool = True,
    ):
        super().__init__()
        filters = torch.as_tensor(filters, dtype=torch.float32)
        if filters.ndim != 2:
            raise ValueError(f"filters must have shape (L, K), got {tuple(filters.shape)}")
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        seq_len, num_filters = filters.shape
        self.dim, self.seq_len, self.num_filters = dim, seq_len, num_filters
        self.use_tensordot = use_tensordot
        self.share_filter_projection = share_filter_projection
        self.register_buffer("filters", filters)
        if use_tensordot:
            self.M_inputs = nn.Parameter(torch.randn(dim, dim) / dim**0.5)
            self.M_filters = nn.Parameter(torch.randn(num_filters, dim) / num_filters**0.5)
            if not share_filter_projection:
                self.M_filters_minus = nn.Parameter(torch.randn(num_filters, dim) / num_filters**0.5)
        else:
            scale = 1.0 / (num_filters * dim) ** 0.5
            self.M_plus = nn.Parameter(torch.randn(num_filters, dim, dim) * scale)
            self.M_minus = nn.Parameter(torch.randn(num_filters, dim, dim) * scale)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, seq_len={self.seq_len}, num_filters={self.num_filters}, "
            f"use_tensordot={self.use_tensordot}, share_filter_projection={self.share_filter_projection}"
        )

    def _check_input(self, u: torch.Tensor) -> None:
        if u.ndim != 3 or u.shape[-1] != self.dim:
            raise ValueError(f"input must have shape (B, T, {self.dim}), got {tuple(u.shape)}")
        if u.shape[1] > self.seq_len:
            raise ValueError(
                f"sequence length {u.shape[1]} exceeds the filter length {self.seq_len}; rebuild the STU "
                f"with longer filters, or decode recurrently after distillation (the LDS has no length limit)"
            )

    def project_input(self, u: torch.Tensor) -> torch.Tensor:
        """Tensordot input projection ``u @ M_inputs``, ``(B, T, d)``."""
        return u @ self.M_inputs

    def depthwise_kernel(self, length: int | None = None) -> torch.Tensor:
        """Tensordot form: the combined depthwise kernel ``(length, d)`` of both branches."""
        if not self.use_tensordot:
            raise ValueError("depthwise_kernel exists only for use_tensordot=True")
        length = self.seq_len if length is None else length
        phi = self.filters[:length]
        signs = alternating_signs(length, phi.device, phi.dtype)
        minus = self.M_filters if self.share_filter_projection else self.M_filters_minus
        work = torch.promote_types(phi.dtype, self.M_filters.dtype)  # float32 under a bf16 model
        phi = phi.to(work)
        return phi @ self.M_filters.to(work) + (signs.to(work) * phi) @ minus.to(work)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """``u`` ``(B, T, d)`` -> ``(B, T, d)`` by FFT convolution (training and prefill)."""
        self._check_input(u)
        seq_len = u.shape[1]
        if self.use_tensordot:
            # The two depthwise convolutions are linear in the kernel, so one FFT pass over their sum
            # computes both branches.
            return causal_conv_fft(self.project_input(u), self.depthwise_kernel(seq_len))
        phi = self.filters[:seq_len]
        signs = alternating_signs(seq_len, phi.device, phi.dtype)
        batch, dim = u.shape[0], self.dim
        # Every (filter, channel) pair is one depthwise convolution: (B, T, K*d) channels.
        u_rep = u[:, :, None, :].expand(batch, seq_len, self.num_filters, dim).reshape(batch, seq_len, -1)
        k_plus = phi[:, :, None].expand(seq_len, self.num_filters, dim).reshape(seq_len, -1)
        u_plus = causal_conv_fft(u_rep, k_plus).view(batch, seq_len, self.num_filters, dim)
        u_minus = causal_conv_fft(u_rep, signs * k_plus).view(batch, seq_len, self.num_filters, dim)
        return torch.einsum("btki,kio->bto", u_plus, self.M_plus) + torch.einsum(
            "btki,kio->bto", u_minus, self.M_minus
        )

    @torch.no_grad()
    def to_lds(self, state_dim: int | None = None, filter_lds: LDS | None = None, **distill_kwargs) -> LDSSTU:
        """The distilled recurrent layer: an :class:`LDSSTU` with ``2 * state_dim`` states per channel.

        Pass ``filter_lds`` (from :func:`distill_lds` on this layer's filters) to reuse one distillation
        across layers; otherwise it is computed here with ``state_dim`` poles.
        """
        if not self.use_tensordot:
            raise ValueError(
                "to_lds supports tensordot STU layers (use_tensordot=True), the language-model form"
            )
        if filter_lds is None:
            if state_dim is None:
                raise ValueError("pass state_dim or filter_lds")
            filter_lds = distill_lds(self.filters.double().cpu().numpy(), state_dim, **distill_kwargs)
        if filter_lds.channels != self.num_filters:
            raise ValueError(
                f"filter_lds has {filter_lds.channels} channels, this STU has {self.num_filters} filters"
            )
        return LDSSTU.from_stu(self, filter_lds)


class LDSSTU(nn.Module):
    """A tensordot STU in recurrent form: input projection, then an LDS with poles ``[a, -a]``.

    ``forward`` (closed-form prefill) and ``step`` (one token) carry an explicit state ``(B, 2n, d)``
    whose size does not depend on the context length.
    """

    def __init__(self, dim: int, state_dim: int):
        super().__init__()
        if state_dim <= 0:
            raise ValueError(f"state_dim must be positive, got {state_dim}")
        self.dim, self.state_dim = dim, state_dim
        self.M_inputs = nn.Parameter(torch.randn(dim, dim) / dim**0.5)
        # Placeholder poles inside the unit disc; from_stu (or a checkpoint) overwrites both buffers.
        self.lds = LDS(torch.zeros(2 * state_dim), torch.zeros(2 * state_dim, dim))

    @classmethod
    def from_stu(cls, stu: STU, filter_lds: LDS) -> LDSSTU:
        poles = filter_lds.poles.double()
        coef = filter_lds.output.double()  # (n, K)
        m_plus = stu.M_filters.double()
        m_minus = m_plus if stu.share_filter_projection else stu.M_filters_minus.double()
        layer = cls(stu.dim, filter_lds.state_dim)
        layer.M_inputs.data.copy_(stu.M_inputs.data)
        output = torch.cat([coef @ m_plus, coef @ m_minus], dim=0)
        layer.lds = LDS(
            torch.cat([poles, -poles]), output, dtype=filter_lds.poles.dtype, error=filter_lds.error
        )
        return layer.to(stu.M_inputs.device)

    def initial_state(self, batch_size: int) -> torch.Tensor:
        return self.lds.initial_state(batch_size)

    def forward(
        self, u: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``u`` ``(B, T, d)`` -> (``y`` ``(B, T, d)``, final state ``(B, 2n, d)``)."""
        if u.ndim != 3 or u.shape[-1] != self.dim:
            raise ValueError(f"input must have shape (B, T, {self.dim}), got {tuple(u.shape)}")
        return self.lds(u @ self.M_inputs, state)

    def step(self, u: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``u`` ``(B, d)`` -> (``y`` ``(B, d)``, new state)."""
        if u.ndim != 2 or u.shape[-1] != self.dim:
            raise ValueError(f"input must have shape (B, {self.dim}), got {tuple(u.shape)}")
        return self.lds.step(u @ self.M_inputs, state)
