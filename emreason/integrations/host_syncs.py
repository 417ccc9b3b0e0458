"""Count device-to-host reads (the calls that stall a GPU pipeline) made inside a block of code.

On a GPU every call that brings a tensor's *value* back to the host waits for the device to finish all
queued work. Tests run on CPU, where nothing stalls, so this counts the calls instead: wrap the tensor
methods and functions that read values back, run the code, and read ``counter.count``::

    with count_host_syncs() as counter:
        processor.apply(logits)
    assert counter.count <= 2, counter.calls

Counted: ``Tensor.item / tolist / cpu / numpy / __bool__ / __int__ / __float__ / __index__ / nonzero``,
``torch.nonzero``, ``torch.masked_select``, ``Tensor.to(cpu)`` from an accelerator, and indexing or
assigning with a boolean tensor mask (``x[mask]``, ``x[mask] = v``), which needs the number of selected
entries. Host-to-device copies are not counted. Nested calls made by a counted call are not counted
again. Not thread-safe; do not nest.
"""

from __future__ import annotations

import contextlib
import functools
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

__all__ = ["SyncCounter", "count_host_syncs"]

_TENSOR_METHODS = (
    "item",
    "tolist",
    "cpu",
    "numpy",
    "__bool__",
    "__int__",
    "__float__",
    "__index__",
    "nonzero",
    "masked_select",
)
_TORCH_FUNCTIONS = ("nonzero", "masked_select")


@dataclass
class SyncCounter:
    """``count`` reads so far; ``calls`` names each one with the caller's file:line."""

    count: int = 0
    calls: list[str] = field(default_factory=list)
    _depth: int = 0

    def record(self, name: str) -> None:
        self.count += 1
        # The innermost caller outside torch and this module (decorators add torch frames).
        for frame in reversed(traceback.extract_stack(limit=12)[:-1]):
            if "/torch/" not in frame.filename and not frame.filename.endswith("host_syncs.py"):
                break
        self.calls.append(f"{name} at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}")


def _has_bool_mask(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _to_host(args, kwargs) -> bool:
    """``tensor.to(...)`` from an accelerator to the CPU (a CPU-to-CPU ``to`` is a no-op or a copy)."""
    tensor, rest = args[0], args[1:]
    target = kwargs.get("device", rest[0] if rest else None)
    if isinstance(target, str):
        target = torch.device(target)
    return isinstance(target, torch.device) and target.type == "cpu" and tensor.device.type != "cpu"


@contextlib.contextmanager
def count_host_syncs() -> Iterator[SyncCounter]:
    """Patch the read-back paths for the duration of the block; yields the live `SyncCounter`."""
    counter = SyncCounter()
    saved: list[tuple[object, str, object, bool]] = []

    def wrap(owner, name: str, should_count=None) -> None:
        original = getattr(owner, name)
        own = name in vars(owner)  # else inherited (torch._C.TensorBase): delete the patch afterwards

        @functools.wraps(original)
        def counted(*args, **kwargs):
            if counter._depth == 0 and (should_count is None or should_count(args, kwargs)):
                counter.record(f"{getattr(owner, '__name__', owner)}.{name}")
            counter._depth += 1
            try:
                return original(*args, **kwargs)
            finally:
                counter._depth -= 1

        saved.append((owner, name, original, own))
        setattr(owner, name, counted)

    for name in _TENSOR_METHODS:
        wrap(torch.Tensor, name)
    for name in _TORCH_FUNCTIONS:
        wrap(torch, name)
    wrap(torch.Tensor, "to", _to_host)
    wrap(torch.Tensor, "__getitem__", lambda args, kwargs: _has_bool_mask(args[1]))
    wrap(torch.Tensor, "__setitem__", lambda args, kwargs: _has_bool_mask(args[1]))
    try:
        yield counter
    finally:
        for owner, name, original, own in reversed(saved):
            if own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)
