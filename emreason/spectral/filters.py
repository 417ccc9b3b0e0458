"""Spectral filters of the STU layer: top eigenvectors of a fixed Hankel matrix, cached on disk.

The Hankel matrix ``Z[i, j] = 2 / ((i + j)^3 - (i + j))`` (1-based ``i, j``) is the Gram matrix of the
impulse responses ``(1 - a) * a^t`` of every symmetric one-dimensional LDS with pole ``a`` in ``[0, 1]``.
Its eigenvalues decay geometrically, so a few eigenvectors span all such impulse responses to high
accuracy; those eigenvectors, scaled by ``eigenvalue ** 0.25``, are the STU's fixed filters.

The eigendecomposition runs in float64 with LAPACK's subset driver (only the top ``K`` pairs); at
``L = 8192`` it still takes minutes on two cores, so results are cached under
``$EMREASON_CACHE_DIR/spectral`` (default ``~/.cache/emreason/spectral``) as safetensors files.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
from safetensors.numpy import load_file, save_file

__all__ = [
    "hankel_matrix",
    "spectral_filters",
    "recommended_num_filters",
    "filter_cache_dir",
    "RESOLVABLE_EIGENVALUE_RATIO",
]

# Eigenvalues below this fraction of the largest one are computed with a relative error above ~1e-4
# (float64 eigensolvers have absolute error ~ eps * lambda_max), so their eigenvectors are noise.
RESOLVABLE_EIGENVALUE_RATIO = 1e-12
DEFAULT_MAX_FILTERS = 24


def filter_cache_dir() -> Path:
    """Cache directory: ``$EMREASON_CACHE_DIR/spectral``, else ``~/.cache/emreason/spectral``."""
    root = os.environ.get("EMREASON_CACHE_DIR")
    if root:
        return Path(root) / "spectral"
    return Path.home() / ".cache" / "emreason" / "spectral"


def _check_seq_len(seq_len: int) -> None:
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)):
        raise TypeError(f"seq_len must be an int, got {type(seq_len).__name__}")
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")


def hankel_matrix(seq_len: int) -> np.ndarray:
    """The ``(L, L)`` float64 Hankel matrix ``Z[i, j] = 2 / ((i+j)^3 - (i+j))`` with 1-based indices."""
    _check_seq_len(seq_len)
    s = np.arange(2, 2 * seq_len + 1, dtype=np.float64)  # all values of i + j
    z = 2.0 / (s**3 - s)
    idx = np.arange(seq_len)
    return z[idx[:, None] + idx[None, :]]


def _top_eigenpairs(seq_len: int, num_filters: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``num_filters`` eigenpairs, eigenvalues descending, each eigenvector's largest entry positive."""
    z = hankel_matrix(seq_len)
    vals, vecs = scipy.linalg.eigh(
        z, subset_by_index=[seq_len - num_filters, seq_len - 1], overwrite_a=True, check_finite=False
    )
    vals, vecs = vals[::-1].copy(), vecs[:, ::-1].copy()
    # Eigenvectors are defined up to sign; fix it so cached and recomputed filters agree.
    pivot = np.argmax(np.abs(vecs), axis=0)
    signs = np.sign(vecs[pivot, np.arange(num_filters)])
    return vals, vecs * signs


def _cache_path(seq_len: int, num_filters: int) -> Path:
    return filter_cache_dir() / f"hankel_L{seq_len}_K{num_filters}.safetensors"


def _load_cached(seq_len: int, num_filters: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Exact (L, K) file, else a cached (L, K' > K) file sliced to K (eigenpairs do not depend on K)."""
    cache_dir = filter_cache_dir()
    if not cache_dir.is_dir():
        return None
    candidates = [_cache_path(seq_len, num_filters)]
    for path in sorted(cache_dir.glob(f"hankel_L{seq_len}_K*.safetensors")):
        k = path.stem.rsplit("_K", 1)[-1]
        if k.isdigit() and int(k) > num_filters:
            candidates.append(path)
    for path in candidates:
        if path.is_file():
            try:
                data = load_file(str(path))
            except Exception:  # a corrupt cache file is recomputed, never trusted
                continue
            vals, vecs = data["eigenvalues"], data["eigenvectors"]
            if vecs.shape[0] == seq_len and vecs.shape[1] >= num_filters:
                return vals[:num_filters], vecs[:, :num_filters]
    return None


def _save_atomic(path: Path, eigenvalues: np.ndarray, eigenvectors: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file({"eigenvalues": eigenvalues, "eigenvectors": np.ascontiguousarray(eigenvectors)}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def hankel_eigenpairs(
    seq_len: int, num_filters: int, use_cache: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``K`` eigenvalues ``(K,)`` (descending) and unit eigenvectors ``(L, K)`` of ``Z``, float64."""
    _check_seq_len(seq_len)
    if isinstance(num_filters, bool) or not isinstance(num_filters, (int, np.integer)):
        raise TypeError(f"num_filters must be an int, got {type(num_filters).__name__}")
    if not 1 <= num_filters <= seq_len:
        raise ValueError(f"num_filters must be in [1, seq_len={seq_len}], got {num_filters}")
    if use_cache and (cached := _load_cached(seq_len, num_filters)) is not None:
        return cached
    vals, vecs = _top_eigenpairs(seq_len, num_filters)
    if use_cache:
        _save_atomic(_cache_path(seq_len, num_filters), vals, vecs)
    return vals, vecs


def recommended_num_filters(seq_len: int, max_filters: int = DEFAULT_MAX_FILTERS) -> int:
    """Largest ``K <= max_filters`` whose smallest eigenvalue is still resolvable in float64.

    At ``L = 512`` the 24th eigenvalue is ~2e-16, below float64 resolution, so fewer filters are
    meaningful at short lengths (the count grows roughly like ``log L``).
    """
    vals, _ = hankel_eigenpairs(seq_len, min(max_filters, seq_len))
    return int(np.sum(vals >= RESOLVABLE_EIGENVALUE_RATIO * vals[0]))


def spectral_filters(seq_len: int, num_filters: int | None = None, use_cache: bool = True) -> np.ndarray:
    """STU filters: top-``K`` Hankel eigenvectors scaled by ``eigenvalue ** 0.25``, shape ``(L, K)``, float64.

    ``num_filters=None`` picks :func:`recommended_num_filters`. Asking for filters whose eigenvalues
    fall below float64 resolution warns (they are numerically noise, though tiny after scaling).
    """
    if num_filters is None:
        num_filters = recommended_num_filters(seq_len)
    vals, vecs = hankel_eigenpairs(seq_len, num_filters, use_cache=use_cache)
    unresolved = int(np.sum(vals < RESOLVABLE_EIGENVALUE_RATIO * vals[0]))
    if unresolved:
        warnings.warn(
            f"spectral_filters(seq_len={seq_len}, num_filters={num_filters}): the smallest {unresolved} "
            f"eigenvalues (down to {vals[-1]:.1e}) are below float64 resolution; their filters are noise. "
            f"Use num_filters={num_filters - unresolved} (recommended_num_filters) or a longer seq_len.",
            RuntimeWarning,
            stacklevel=2,
        )
    # Rounding noise can make the smallest eigenvalues slightly negative.
    return vecs * np.clip(vals, 0.0, None) ** 0.25
