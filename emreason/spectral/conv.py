"""Causal convolution via FFT, the workhorse of STU training/prefill and of the LDS closed-form prefill."""

from __future__ import annotations

import torch

__all__ = ["causal_conv_fft", "fft_length"]


def fft_length(seq_len: int) -> int:
    """Smallest power of two ``>= 2 * seq_len - 1``: long enough that circular convolution equals linear."""
    return 1 << max(0, (2 * seq_len - 2).bit_length())


def causal_conv_fft(u: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depthwise causal convolution ``y[b, t, c] = sum_{s <= t} kernel[s, c] * u[b, t - s, c]``.

    Args:
        u: input ``(B, T, C)``.
        kernel: impulse responses ``(T_k, C)`` with ``T_k >= T`` (only the first ``T`` lags matter) or
            ``(T_k, 1)`` to share one kernel across channels.

    Returns:
        ``(B, T, C)`` in ``u``'s dtype (computed in at least float32).
    """
    if u.ndim != 3 or kernel.ndim != 2:
        raise ValueError(
            f"expected u (B, T, C) and kernel (T_k, C), got {tuple(u.shape)} and {tuple(kernel.shape)}"
        )
    seq_len, channels = u.shape[1], u.shape[2]
    if kernel.shape[0] < seq_len:
        raise ValueError(f"kernel has {kernel.shape[0]} lags but the input has {seq_len} steps")
    if kernel.shape[1] not in (1, channels):
        raise ValueError(f"kernel has {kernel.shape[1]} channels, input has {channels}")
    n = fft_length(seq_len)
    work_dtype = torch.promote_types(u.dtype, torch.float32)
    u_f = torch.fft.rfft(u.to(work_dtype), n=n, dim=1)
    k_f = torch.fft.rfft(kernel[:seq_len].to(work_dtype), n=n, dim=0)
    return torch.fft.irfft(u_f * k_f, n=n, dim=1)[:, :seq_len].to(u.dtype)
