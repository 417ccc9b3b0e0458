"""pass@k against a brute-force enumeration, and the bootstrap CI against the normal approximation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from emreason.evals.metrics import bootstrap_ci, ks_for, pass_at_k, summarize


@pytest.mark.parametrize(("n", "c", "k"), [(5, 2, 1), (5, 2, 3), (6, 0, 2), (6, 6, 4), (7, 3, 5), (4, 1, 4)])
def test_pass_at_k_matches_enumeration_of_subsets(n, c, k):
    outcomes = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    expected = sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_1_is_the_fraction_correct():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)


def test_pass_at_k_rejects_bad_input():
    with pytest.raises(ValueError, match="c=4"):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError, match="k=5"):
        pass_at_k(4, 1, 5)
    with pytest.raises(TypeError, match="k"):
        pass_at_k(4, 1, 1.0)  # type: ignore[arg-type]


def test_bootstrap_ci_matches_normal_approximation():
    rng = np.random.default_rng(1)
    values = (rng.random(400) < 0.3).astype(float)
    low, high = bootstrap_ci(values, resamples=4000)
    p = values.mean()
    half = 1.96 * math.sqrt(p * (1 - p) / len(values))
    assert low == pytest.approx(p - half, abs=0.01) and high == pytest.approx(p + half, abs=0.01)


def test_summarize_reports_powers_of_two():
    assert ks_for(8) == [1, 2, 4, 8] and ks_for(6) == [1, 2, 4, 6]
    out = summarize({"a": [True, False, False, False], "b": [False] * 4})
    assert out["pass@1"]["mean"] == pytest.approx(0.125)
    assert out["pass@4"]["mean"] == pytest.approx(0.5)
