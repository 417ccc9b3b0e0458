"""Fused EM-INF paths (emreason.em_inf_fused): selection, fallback, and accuracy against float64 at a real
vocabulary (V = 151,936) and logit std up to 30, measured against what the eager float32 core gets."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest
import torch

from emreason import em_inf_fused
from emreason.em_inf import EMInfConfig, minimize_entropy
from emreason.entropy import token_entropy

V = 151_936
# (logit std, offset), as tests/test_entropy_scale.py: small to large spreads, shifted both ways.
SCALES = [(1.0, 0.0), (5.0, 0.0), (20.0, 0.0), (30.0, 0.0), (30.0, 40.0), (10.0, -40.0)]


def scaled_logits(scales=SCALES, seed: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.randn(V, generator=generator, dtype=torch.float64) * std + offset for std, offset in scales]
    z = torch.stack(rows).float()
    z[1, :1000] = float("-inf")  # a masked block
    return z


def check_against_float64(z: torch.Tensor, backend: str, steps: int) -> None:
    """The fused result's per-row error against float64 is within 4x the eager float32 core's (plus 1e-6),
    masks stay, the entropies agree as tightly as the eager core's test asks, and the two loop variants
    (early_exit True/False) agree exactly."""
    config = EMInfConfig(steps=steps, threshold=0.0)
    reference = minimize_entropy(z.double(), config)
    eager = minimize_entropy(z, config)
    fused = minimize_entropy(z, config, fused=backend, fused_fallback=False)
    fixed = minimize_entropy(z, config, fused=backend, fused_fallback=False, early_exit=False)
    torch.testing.assert_close(fixed, fused, rtol=0, atol=0)
    finite = torch.isfinite(reference)
    assert torch.equal(torch.isneginf(fused), torch.isneginf(z))

    def row_error(x):
        return torch.where(finite, (x.double() - reference).abs(), 0).amax(-1)

    eager_error, fused_error = row_error(eager), row_error(fused)
    assert (fused_error <= 4 * eager_error + 1e-6).all(), (fused_error, eager_error)
    # The logits did move (a no-op would pass the error check on rows where eager is accurate).
    assert ((reference - z.double()).abs().where(finite, 0).amax(-1) > 1e-3).all()
    torch.testing.assert_close(token_entropy(fused).double(), token_entropy(reference), atol=2e-6, rtol=1e-4)


def test_backend_selection(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv(em_inf_fused.ENV_VAR, raising=False)
    assert em_inf_fused.resolve_backend(None, cpu) == "off"  # default: never compiles unless asked
    for value, expected in (("compile", "compile"), ("1", "compile"), ("auto", "compile"), ("0", "off")):
        monkeypatch.setenv(em_inf_fused.ENV_VAR, value)
        assert em_inf_fused.resolve_backend(None, cpu) == expected
    assert em_inf_fused.resolve_backend(False, cpu) == "off"  # the argument wins over the variable
    assert em_inf_fused.resolve_backend("triton", cpu) == "triton"
    monkeypatch.setenv(em_inf_fused.ENV_VAR, "fast")
    with pytest.raises(ValueError, match=em_inf_fused.ENV_VAR):
        em_inf_fused.resolve_backend(None, cpu)
    with pytest.raises(ValueError, match="fused"):
        minimize_entropy(torch.zeros(1, 4), fused="yes")


def test_failure_falls_back_to_the_eager_core(monkeypatch):
    """A backend that fails, even after moving z, gives the eager result with one warning (or raises)."""
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0)) * 4
    logits[0, 3] = float("-inf")
    config = EMInfConfig(steps=3, threshold=0.0)
    expected = minimize_entropy(logits, config)

    def broken_fns():
        def stats(z, *args):
            z.add_(1.0)  # corrupt the output before failing, as a backend dying mid-loop could
            raise RuntimeError("no C++ compiler")

        return stats, stats, stats

    monkeypatch.setattr(em_inf_fused, "_compiled_fns", broken_fns)
    monkeypatch.setattr(em_inf_fused, "_warned", set())
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        got = minimize_entropy(logits, config, fused="compile")
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    got = minimize_entropy(logits, config, fused="compile", early_exit=False)  # warned once already
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    with pytest.raises(em_inf_fused.FusedUnavailable, match="no C\\+\\+ compiler"):
        minimize_entropy(logits, config, fused="compile", fused_fallback=False)
    # Triton on a CPU without the interpreter: unavailable, so the eager result.
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.warns(RuntimeWarning, match="needs CUDA"):
        got = minimize_entropy(logits, config, fused="triton")
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed (pip install triton)"
)
def test_triton_kernels_in_the_interpreter_match_float64():
    """The CUDA kernels' arithmetic, run by Triton's CPU interpreter. TRITON_INTERPRET must be set before
    triton is first imported (torch may import it earlier in this process), so this runs in a fresh one."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        test = f"{__file__}::test_triton_kernels_in_the_interpreter_match_float64"
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        return
    check_against_float64(scaled_logits(), "triton", steps=3)
    # Per-row parameters, early stops, broken rows: as the eager core, to float32 rounding.
    scales = torch.tensor([[0.1], [1], [3], [8], [1]])
    logits = torch.randn(5, 300, generator=torch.Generator().manual_seed(1)) * scales
    logits[4, 7] = float("nan")
    params = {"steps": torch.tensor([0, 1, 3, 5, 3]), "threshold": torch.tensor([0.3, 0.0, 4.0, 0.2, 0.0])}
    expected = minimize_entropy(logits, **params)
    got = minimize_entropy(logits, **params, fused="triton", fused_fallback=False)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert torch.equal(got[0], logits[0]) and torch.equal(got[2], logits[2])  # no steps / stopped at once


@pytest.mark.slow
def test_compiled_core_matches_float64():
    """torch.compile (inductor C++ on CPU): B = 6 (the two-graph loop) and B = 1 (the merged graph). Cold,
    the three compilations take 1-2 minutes on a 2-core machine; inductor's on-disk cache makes later runs
    a few seconds."""
    # Only a missing C++ compiler excuses this test: `warmup` wraps every failure (an inductor error, a bug
    # in the fused code) in FusedUnavailable, and skipping on that would hide it.
    if not any(shutil.which(name) for name in ("c++", "g++", "clang++")):
        pytest.skip("no C++ compiler on PATH: inductor cannot build CPU kernels")
    em_inf_fused.warmup("compile")
    z = scaled_logits()
    check_against_float64(z, "compile", steps=3)
    for row in (0, 4):
        check_against_float64(z[row : row + 1].clone(), "compile", steps=10)
    # No reads from the device with early_exit=False (what a serving engine relies on). The counter
    # patches tensor methods, which makes dynamo trace again once (and read constants while tracing).
    from emreason.integrations.host_syncs import count_host_syncs

    logits = torch.randn(6, 5000, generator=torch.Generator().manual_seed(2)) * 3
    params = {"steps": torch.tensor([0, 1, 3, 5, 3, 2]), "threshold": torch.full((6,), 0.2)}
    kwargs = {"early_exit": False, "max_steps": 5, "invalid_params": "skip"}
    expected = minimize_entropy(logits, **params, **kwargs)
    with count_host_syncs():
        minimize_entropy(logits, **params, **kwargs, fused="compile", fused_fallback=False)
    with count_host_syncs() as counter:
        got = minimize_entropy(logits, **params, **kwargs, fused="compile", fused_fallback=False)
    assert counter.count == 0, counter.calls
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
