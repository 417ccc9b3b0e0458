"""Keep the numerically delicate tensors of spectral layers in float32 when the model goes to bf16/fp16.

A distilled layer's poles sit at ``1 - a ~ 1e-5``; bfloat16 has 8 mantissa bits, so ``.to(torch.bfloat16)``
would round every such pole to exactly 1 (an unstable, non-decaying mode) and the recurrence state would
lose the small increments it accumulates. :class:`Float32Tensors` is a module mixin that lets ``.to()``,
``.half()``, ``.bfloat16()`` and ``.cuda()`` move the named tensors between devices but never below float32;
every other parameter of the model (projections, embeddings, MLPs) follows the requested dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["LOW_PRECISION_DTYPES", "Float32Tensors"]

LOW_PRECISION_DTYPES = (torch.float16, torch.bfloat16)


class Float32Tensors(nn.Module):
    """Mixin: the module's own tensors named in ``_fp32_tensors`` are never cast below float32.

    Casting to float64 is honoured (float64 runs stay exact); casting to float16/bfloat16 keeps them in
    float32 on the target device. Children are handled by their own class (the guard is per tensor).
    """

    _fp32_tensors: tuple[str, ...] = ()

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True):
        protected = {
            id(t)
            for name in self._fp32_tensors
            if (t := self._parameters.get(name, self._buffers.get(name))) is not None
        }

        def guarded(t: torch.Tensor) -> torch.Tensor:
            out = fn(t)
            if id(t) in protected and out.is_floating_point() and out.dtype in LOW_PRECISION_DTYPES:
                return t.to(device=out.device, dtype=torch.float32)
            return out

        return super()._apply(guarded if protected else fn, recurse)
