"""Diagonal linear dynamical systems and the SpectraLDS distillation of spectral filters into one.

An :class:`LDS` here is a bank of ``D`` independent single-input single-output systems sharing ``n``
real poles ``a``::

    h_t[n, d] = a[n] * h_{t-1}[n, d] + u_t[d]          (A = diag(a), B = 1)
    y_t[d]    = sum_n C[n, d] * h_t[n, d]

so channel ``d`` has impulse response ``k_d(t) = sum_n C[n, d] * a[n] ** t``. :func:`distill_lds`
finds poles and ``C`` such that channel ``k`` reproduces spectral filter ``k``; a tensordot STU layer
is then the LDS with output ``C @ M_filters`` (see :mod:`emreason.spectral.stu`).

Beyond the fitted length ``L`` the LDS does not cut off like a length-``L`` convolution: each mode
keeps decaying as ``a ** t``, so the response past ``L`` is a small, smooth tail (measured by
:func:`tail_energy`), not zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .conv import causal_conv_fft
from .precision import Float32Tensors

__all__ = ["LDS", "DistillationError", "distill_lds", "impulse_responses", "tail_energy"]


@dataclass(frozen=True)
class DistillationError:
    """Reconstruction error of filters ``(L, K)`` by the LDS, measured in float64 on the stored parameters.

    ``max_abs``: largest absolute error over all lags and filters; ``mse``: mean squared error;
    ``max_rel``: ``max_abs`` divided by the largest absolute filter value; ``max_coef``: largest ``|C|``.
    """

    max_abs: float
    mse: float
    max_rel: float
    max_coef: float


def _powers(poles: torch.Tensor, length: int) -> torch.Tensor:
    """``poles ** t``, ``t = 0..length-1``, shape ``(length, n)``; exact signs if a < 0."""
    t = torch.arange(length, device=poles.device, dtype=poles.dtype)
    return torch.pow(poles.abs()[None, :], t[:, None]) * torch.where(
        (poles[None, :] < 0) & (t[:, None] % 2 == 1), -1.0, 1.0
    ).to(poles.dtype)


def impulse_responses(poles: torch.Tensor, output: torch.Tensor, length: int) -> torch.Tensor:
    """Impulse responses ``(length, D)`` of the LDS with poles ``(n,)`` and output ``(n, D)``."""
    return _powers(poles, length) @ output


def _work_dtype(device: torch.device) -> torch.dtype:
    # Pole powers are computed in float64 where the device has it: a ** t for a = 1 - 1e-5 and large t
    # loses digits in float32 exponentiation.
    return torch.float32 if device.type == "mps" else torch.float64


class LDS(Float32Tensors):
    """A bank of ``D`` diagonal SISO linear dynamical systems sharing ``n`` real poles.

    Args:
        poles: ``(n,)`` real poles with ``|a| < 1``.
        output: ``(n, D)`` output matrix ``C``.
        dtype: parameter/state dtype (float32 by default; the recurrence is stable in float32).
        error: optional :class:`DistillationError` describing how well the LDS matches its target.

    Works for any batch size and device; ``poles`` and ``output`` are buffers (saved, not trained). Casting
    the module to bfloat16/float16 leaves them (and hence the state) in float32: inputs may be bf16, the
    recurrence runs in float32 and outputs are returned in the input's dtype.
    """

    _fp32_tensors = ("poles", "output")

    def __init__(
        self,
        poles: torch.Tensor | np.ndarray,
        output: torch.Tensor | np.ndarray,
        dtype: torch.dtype = torch.float32,
        error: DistillationError | None = None,
    ):
        super().__init__()
        poles = torch.as_tensor(poles)
        output = torch.as_tensor(output)
        if poles.ndim != 1 or poles.shape[0] == 0:
            raise ValueError(f"poles must be a non-empty 1-D tensor, got shape {tuple(poles.shape)}")
        if output.ndim != 2 or output.shape[0] != poles.shape[0]:
            raise ValueError(
                f"output must have shape (n={poles.shape[0]}, D) to match the poles, "
                f"got {tuple(output.shape)}"
            )
        if poles.device.type != "meta":
            if poles.is_complex() or not torch.isfinite(poles).all():
                raise ValueError("poles must be finite real numbers")
            if (poles.abs() >= 1).any():
                raise ValueError(
                    f"poles must satisfy |a| < 1 for stability, got max |a| = {poles.abs().max():.6g}"
                )
        self.register_buffer("poles", poles.to(dtype))
        self.register_buffer("output", output.to(dtype))
        self.error = error

    @property
    def state_dim(self) -> int:
        return self.poles.shape[0]

    @property
    def channels(self) -> int:
        return self.output.shape[1]

    def extra_repr(self) -> str:
        return f"state_dim={self.state_dim}, channels={self.channels}"

    def initial_state(self, batch_size: int, device: torch.device | None = None) -> torch.Tensor:
        """Zero state ``(B, n, D)``."""
        return torch.zeros(
            batch_size,
            self.state_dim,
            self.channels,
            dtype=self.poles.dtype,
            device=device or self.poles.device,
        )

    def _check_state(self, state: torch.Tensor, batch_size: int) -> None:
        expected = (batch_size, self.state_dim, self.channels)
        if tuple(state.shape) != expected:
            raise ValueError(f"state must have shape {expected}, got {tuple(state.shape)}")

    def step(self, u: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One recurrent step: ``u`` ``(B, D)``, ``state`` ``(B, n, D)`` -> (``y`` ``(B, D)``, new state)."""
        if u.ndim != 2 or u.shape[1] != self.channels:
            raise ValueError(f"u must have shape (B, {self.channels}), got {tuple(u.shape)}")
        self._check_state(state, u.shape[0])
        state = torch.addcmul(u.to(state.dtype)[:, None, :], self.poles[None, :, None], state)
        y = (state * self.output).sum(dim=1)
        return y.to(u.dtype), state

    def forward(
        self, u: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Closed-form prefill: ``u`` ``(B, T, D)``, ``state`` (zero if None) -> (``y`` ``(B, T, D)``, state).

        Outputs are a causal FFT convolution with the impulse responses plus the free response of the
        initial state; the final state is ``a^T h_0 + sum_s a^(T-1-s) u_s``. Equal to ``T`` calls of
        :meth:`step` up to float rounding, in ``O(T log T * D + T * n * D)`` parallel work.
        """
        if u.ndim != 3 or u.shape[2] != self.channels:
            raise ValueError(f"u must have shape (B, T, {self.channels}), got {tuple(u.shape)}")
        batch, seq_len, _ = u.shape
        work = _work_dtype(u.device)
        poles = self.poles.to(work)
        output = self.output.to(work)
        powers = _powers(poles, seq_len + 1)  # a^0 .. a^T, (T+1, n)
        kernel = (powers[:seq_len] @ output).to(self.poles.dtype)
        y = causal_conv_fft(u.to(self.poles.dtype), kernel)
        u_w = u.to(work)
        final = torch.einsum("sn,bsd->bnd", powers[:seq_len].flip(0), u_w)
        if state is not None:
            self._check_state(state, batch)
            state_w = state.to(work)
            free = torch.einsum("tn,bnd,nd->btd", powers[1:], state_w, output)
            y = y + free.to(y.dtype)
            final = final + powers[seq_len][None, :, None] * state_w
        return y.to(u.dtype), final.to(self.poles.dtype)

    def impulse_response(self, length: int) -> torch.Tensor:
        """Impulse responses ``(length, D)`` in float64 (float32 on MPS), from the stored parameters."""
        work = _work_dtype(self.poles.device)
        return impulse_responses(self.poles.to(work), self.output.to(work), length)


def tail_energy(lds: LDS, length: int) -> torch.Tensor:
    """Per channel, the energy ``sum_{t >= length} k(t)^2`` of the response beyond ``length``, ``(D,)``.

    Closed form ``sum_ij C_i C_j (a_i a_j)^L / (1 - a_i a_j)``: a length-``L`` convolution would have
    none, the LDS keeps a decaying tail. Compare with ``impulse_response(length).pow(2).sum(0)``.
    """
    work = _work_dtype(lds.poles.device)
    a, c = lds.poles.to(work), lds.output.to(work)
    prod = a[:, None] * a[None, :]
    return torch.einsum("id,ij,jd->d", c, prod**length / (1 - prod), c)


# --------------------------------------------------------------------------------------------------
# Distillation
# --------------------------------------------------------------------------------------------------


def _pole_from_log_rate(log_rate: torch.Tensor) -> torch.Tensor:
    # a = exp(-exp(tau)) keeps every pole in (0, 1) under unconstrained optimisation of tau.
    return torch.exp(-torch.exp(log_rate))


def _ridge_solve(basis: torch.Tensor, targets: torch.Tensor, ridge: float) -> torch.Tensor:
    """argmin_C ||targets - basis C||^2 + ridge * ||C||^2, by QR of the stacked system (float64).

    QR instead of the normal equations: the pole basis is nearly collinear, and squaring its
    condition number would drown the refinement's small improvements in rounding noise.
    """
    n = basis.shape[1]
    eye = torch.eye(n, dtype=basis.dtype, device=basis.device)
    stacked = torch.cat([basis, math.sqrt(ridge) * eye], dim=0)
    rhs = torch.cat([targets, targets.new_zeros(n, targets.shape[1])], dim=0)
    q, r = torch.linalg.qr(stacked)
    return torch.linalg.solve_triangular(r, q.T @ rhs, upper=True)


def _greedy_poles(
    filters: torch.Tensor, candidates: torch.Tensor, state_dim: int, ridge: float
) -> torch.Tensor:
    """Orthogonal matching pursuit over candidate poles; returns the indices of ``state_dim`` chosen poles."""
    seq_len = filters.shape[0]
    basis = _powers(candidates, seq_len)
    unit = basis / basis.norm(dim=0, keepdim=True)
    chosen: list[int] = []
    residual = filters
    available = torch.ones(candidates.shape[0], dtype=torch.bool)
    for _ in range(state_dim):
        score = (unit.T @ residual).norm(dim=1)
        score[~available] = -1.0
        j = int(torch.argmax(score))
        chosen.append(j)
        available[j] = False
        sub = basis[:, chosen]
        residual = filters - sub @ _ridge_solve(sub, filters, ridge)
    return torch.tensor(chosen)


def _projected_loss(filters: torch.Tensor, log_rates: torch.Tensor, ridge: float) -> torch.Tensor:
    """Sum of squared residuals with ``C`` eliminated in closed form (the variable-projection objective)."""
    basis = _powers(_pole_from_log_rate(log_rates), filters.shape[0])
    coef = _ridge_solve(basis, filters, ridge)
    return (filters - basis @ coef).pow(2).sum()


def _refine_poles(filters: torch.Tensor, log_rates: torch.Tensor, ridge: float, steps: int) -> torch.Tensor:
    """Variable projection: optimise pole log-rates with L-BFGS, solving ``C`` in closed form each step.

    The objective is divided by its value at the starting poles, so it starts at 1 whatever the size: at
    80 poles the raw mean squared error is ~1e-15, below L-BFGS's absolute stopping tolerances, and an
    unscaled (or energy-scaled) loss stops before the first step. Relative tolerances then mean the same
    thing at every size: stop when an iteration gains less than 1e-12 of the starting error.
    """
    with torch.no_grad():
        start = _projected_loss(filters, log_rates, ridge)
    if not torch.isfinite(start) or start <= 0:
        return log_rates
    variable = log_rates.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [variable],
        lr=1.0,
        max_iter=steps,
        history_size=50,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-10,
        tolerance_change=1e-12,
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = _projected_loss(filters, variable, ridge) / start
        loss.backward()
        return loss

    optimizer.step(closure)
    refined = variable.detach()
    return refined if torch.isfinite(refined).all() else log_rates  # a diverged search keeps the start


def _stored_fit(
    filters: torch.Tensor, log_rates: torch.Tensor, ridge: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, DistillationError]:
    """Poles rounded to ``dtype``, ``C`` refitted for them and rounded; the error of those stored values."""
    poles = _pole_from_log_rate(log_rates).sort().values
    # Refit C for the poles exactly as stored (rounded to dtype): the rounding of a = 1 - 1e-5 to
    # float32 shifts a ** 8192 by ~5e-4 relative, which the refit absorbs.
    poles = poles.to(dtype).to(torch.float64)
    if (poles >= 1).any():
        raise RuntimeError(f"a pole rounded to 1 in {dtype}; use a smaller seq_len or float64")
    basis = _powers(poles, filters.shape[0])
    coef = _ridge_solve(basis, filters, ridge).to(dtype).to(torch.float64)
    err = basis @ coef - filters
    error = DistillationError(
        max_abs=float(err.abs().max()),
        mse=float(err.pow(2).mean()),
        max_rel=float(err.abs().max() / filters.abs().max()),
        max_coef=float(coef.abs().max()),
    )
    return poles, coef, error


def distill_lds(
    filters: np.ndarray | torch.Tensor,
    state_dim: int,
    *,
    ridge: float = 1e-12,
    num_candidates: int = 512,
    refine_steps: int = 100,
    dtype: torch.dtype = torch.float32,
) -> LDS:
    """Distill spectral filters ``(L, K)`` into an :class:`LDS` with ``state_dim`` positive poles.

    Channel ``k`` of the result reproduces ``filters[:, k]`` over lags ``0..L-1``. Steps, all in float64:

    1. candidate poles ``a = exp(-r)`` with decay rates ``r`` log-spaced over ``[0.05 / L, 30]``;
    2. greedy pole selection (orthogonal matching pursuit) with a ridge-regularised fit of ``C``;
    3. refinement of the chosen poles by variable projection (``C`` eliminated in closed form) with L-BFGS
       on the residual relative to the greedy one (so it moves the poles at every size);
    4. poles rounded to ``dtype`` and ``C`` refitted for the rounded poles, so the reported error is that
       of the parameters actually stored; the refined poles are kept only if their stored mean squared
       error is lower than the greedy poles' (refinement never makes the MSE worse).

    The ridge term (absolute, on ``||C||^2``; basis columns ``a ** t`` have norms between 1 and
    ``~sqrt(L)``) keeps ``|C|`` moderate; plain least squares on
    near-collinear poles yields coefficients ~1e9 whose cancellations do not survive float32.

    The negative branch of an STU (filters times ``(-1)^t``) needs no extra fit: negate the poles.
    """
    filters_t = torch.as_tensor(filters, dtype=torch.float64).cpu()
    if filters_t.ndim != 2:
        raise ValueError(f"filters must have shape (L, K), got {tuple(filters_t.shape)}")
    if isinstance(state_dim, bool) or not isinstance(state_dim, (int, np.integer)):
        raise TypeError(f"state_dim must be an int, got {type(state_dim).__name__}")
    if state_dim <= 0:
        raise ValueError(f"state_dim must be positive, got {state_dim}")
    if state_dim > num_candidates:
        raise ValueError(f"state_dim={state_dim} exceeds num_candidates={num_candidates}")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    if not torch.isfinite(filters_t).all():
        raise ValueError("filters contain non-finite values")
    seq_len = filters_t.shape[0]

    log_rates_grid = torch.linspace(
        math.log(0.05 / seq_len), math.log(30.0), num_candidates, dtype=torch.float64
    )
    candidates = _pole_from_log_rate(log_rates_grid)
    chosen = _greedy_poles(filters_t, candidates, state_dim, ridge)
    log_rates = log_rates_grid[chosen].sort().values
    poles, coef, error = _stored_fit(filters_t, log_rates, ridge, dtype)
    if refine_steps > 0:
        with torch.enable_grad():
            refined = _refine_poles(filters_t, log_rates, ridge, refine_steps)
        candidate = _stored_fit(filters_t, refined, ridge, dtype)
        # Keep the refinement only if the stored (rounded) parameters fit better in the objective it
        # minimised, the mean squared error: at the float32 floor a lower float64 loss can round to a
        # slightly worse stored fit. (The max error can still tick up where the MSE drops.)
        if candidate[2].mse < error.mse:
            poles, coef, error = candidate
    return LDS(poles, coef, dtype=dtype, error=error)
