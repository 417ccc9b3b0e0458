"""Byte-level text every machine has: the Python standard library's own source files.

Used by the STU language-model recipes so they run offline; tokens are raw UTF-8 bytes (vocab 256).
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import torch

__all__ = ["stdlib_corpus", "random_windows"]


def stdlib_corpus(
    max_bytes: int = 8_000_000, val_fraction: float = 0.05
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) uint8 byte tensors from the stdlib's ``*.py`` files, split by file (sorted order).

    Every ``round(1 / val_fraction)``-th file goes to validation, so the split is deterministic and
    the two sets share no file.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and "test" not in p.parts)
    if not files:
        raise FileNotFoundError(f"no .py files under {root}")
    every = max(2, round(1 / val_fraction))
    train, val, total = [], [], 0
    for i, path in enumerate(files):
        data = path.read_bytes()
        (val if i % every == 0 else train).append(data)
        total += len(data)
        if total >= max_bytes:
            break
    to_tensor = lambda chunks: torch.frombuffer(bytearray(b"\n".join(chunks)), dtype=torch.uint8)  # noqa: E731
    return to_tensor(train), to_tensor(val)


def random_windows(
    data: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator
) -> torch.Tensor:
    """``(batch_size, seq_len)`` int64 windows at uniformly random offsets of ``data``."""
    if data.numel() <= seq_len:
        raise ValueError(f"data has {data.numel()} tokens, need more than seq_len={seq_len}")
    starts = torch.randint(0, data.numel() - seq_len, (batch_size,), generator=generator)
    return torch.stack([data[s : s + seq_len] for s in starts.tolist()]).long()
