import numpy as np
import pytest

from emreason.spectral import filters as F


def test_hankel_entries_match_definition():
    z = F.hankel_matrix(5)
    for i in range(1, 6):
        for j in range(1, 6):
            s = i + j
            assert z[i - 1, j - 1] == pytest.approx(2.0 / (s**3 - s), rel=1e-15)


def test_filters_match_independent_float64_eigendecomposition():
    seq_len, k = 96, 8
    phi = F.spectral_filters(seq_len, k)
    vals, vecs = np.linalg.eigh(F.hankel_matrix(seq_len))  # independent solver, full spectrum
    vals, vecs = vals[::-1][:k], vecs[:, ::-1][:, :k]
    ref = vecs * vals**0.25
    for i in range(k):
        sign = np.sign(ref[:, i] @ phi[:, i])
        np.testing.assert_allclose(phi[:, i], sign * ref[:, i], atol=1e-10)
    # each column is an eigenvector of Z, scaled by lambda^(1/4)
    z = F.hankel_matrix(seq_len)
    np.testing.assert_allclose(z @ phi, phi * vals, atol=1e-12)


def test_cache_roundtrip_and_slicing(tmp_path, monkeypatch):
    monkeypatch.setenv("EMREASON_CACHE_DIR", str(tmp_path))
    first = F.spectral_filters(64, 10)
    path = tmp_path / "spectral" / "hankel_L64_K10.safetensors"
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    np.testing.assert_array_equal(F.spectral_filters(64, 10), first)
    # a smaller K is served from the K=10 file, and equals a fresh computation
    np.testing.assert_allclose(
        F.spectral_filters(64, 6), F.spectral_filters(64, 6, use_cache=False), atol=1e-12
    )
    assert not (tmp_path / "spectral" / "hankel_L64_K6.safetensors").exists()
    path.write_bytes(b"corrupt")  # a corrupt file is recomputed
    np.testing.assert_allclose(F.spectral_filters(64, 10), first, atol=1e-12)


def test_unresolvable_filters_warn_and_auto_k_avoids_them():
    with pytest.warns(RuntimeWarning, match="below float64 resolution"):
        F.spectral_filters(512, 24)
    k = F.recommended_num_filters(512)
    assert 15 <= k < 24
    vals, _ = F.hankel_eigenpairs(512, k)
    assert vals[-1] >= F.RESOLVABLE_EIGENVALUE_RATIO * vals[0]
    assert F.spectral_filters(512).shape == (512, k)


@pytest.mark.parametrize(
    ("args", "exc"),
    [((1, 1), ValueError), ((16, 0), ValueError), ((16, 17), ValueError), ((16.0, 4), TypeError)],
)
def test_bad_arguments(args, exc):
    with pytest.raises(exc):
        F.spectral_filters(*args)
