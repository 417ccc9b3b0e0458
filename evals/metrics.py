"""Scores over problems x samples: the unbiased pass@k estimator, majority voting (maj@k, i.e.
self-consistency) and bootstrap confidence intervals.

Majority voting. A problem's ``n`` samples each carry an extracted answer (or none) and a verdict.
:func:`group_answers` clusters the answers with a task's equivalence (math: math-verify, so ``1/2`` and
``0.5`` vote together; toy: equal integers): each answer joins the first existing group whose
*representative* (its first member) it is equivalent to, else opens a new group. Samples without an
answer (``None`` or blank) do not vote. The group with the most votes wins; **ties go to the group whose
first member comes earliest in sample order**. Samples are exchangeable, so this deterministic rule picks
each tied group with equal probability over reruns, like a fair coin, while staying reproducible. The
vote is correct when the winning group's representative was graded correct; no votes -> incorrect.

maj@k for ``k < n`` is the mean over the ``n // k`` disjoint blocks of ``k`` consecutive samples (sample
indices ``0..k-1``, ``k..2k-1``, ...): an unbiased estimate for i.i.d. samples that uses every sample when
``k`` divides ``n``; maj@1 equals pass@1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

Answer = TypeVar("Answer")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``n`` samples of which ``c`` are correct (Chen et al. 2021).

    ``1 - C(n-c, k) / C(n, k)``, computed as a stable product.
    """
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def ks_for(n: int) -> list[int]:
    """The k reported for ``n`` samples: 1, 2, 4, ... up to n, and n itself."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    if ks[-1] != n:
        ks.append(n)
    return ks


def bootstrap_ci(
    values: Sequence[float], *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of per-problem ``values`` (resampling problems)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def summarize(correct_by_problem: dict[str, list[bool]]) -> dict[str, dict[str, float]]:
    """pass@k with CIs over problems; problems may have unequal sample counts (k <= the smallest)."""
    if not correct_by_problem:
        return {}
    n_min = min(len(v) for v in correct_by_problem.values())
    out = {}
    for k in ks_for(n_min):
        per_problem = [pass_at_k(len(v), sum(v), k) for v in correct_by_problem.values()]
        low, high = bootstrap_ci(per_problem)
        out[f"pass@{k}"] = {"mean": float(np.mean(per_problem)), "ci95": [low, high]}
    return out


def _votes(answer: Any) -> bool:
    """Whether a sample's answer takes part in a vote (None and blank strings do not)."""
    return answer is not None and not (isinstance(answer, str) and not answer.strip())


def group_answers(
    answers: Sequence[Answer | None], equivalent: Callable[[Answer, Answer], bool] | None = None
) -> list[list[int]]:
    """Indices of ``answers`` grouped by ``equivalent`` (default ``==``), groups in order of first member.

    Each answer is compared with the representative (first member) of each group in turn and joins the
    first match, so a non-transitive equivalence still yields a deterministic partition. Unanswered
    entries (None, blank strings) belong to no group.
    """
    same = equivalent if equivalent is not None else (lambda a, b: a == b)
    groups: list[list[int]] = []
    for index, answer in enumerate(answers):
        if not _votes(answer):
            continue
        for group in groups:
            if same(answers[group[0]], answer):
                group.append(index)
                break
        else:
            groups.append([index])
    return groups


def _winner(groups: list[list[int]]) -> list[int] | None:
    """The largest group; among equally large ones, the one whose first member comes first."""
    if not groups:
        return None
    return min(groups, key=lambda g: (-len(g), g[0]))


def majority_vote(
    answers: Sequence[Answer | None], equivalent: Callable[[Answer, Answer], bool] | None = None
) -> tuple[Answer | None, int]:
    """``(winning answer, its number of votes)``; ``(None, 0)`` when no sample has an answer.

    The winning answer is its group's representative (first member in ``answers``' order); ties go to the
    group whose first member comes earliest (see the module docstring).

        >>> majority_vote(["0.5", None, "2", "1/2", "2"], lambda a, b: float(eval(a)) == float(eval(b)))
        ('0.5', 2)
    """
    best = _winner(group_answers(answers, equivalent))
    if best is None:
        return None, 0
    return answers[best[0]], len(best)


def majority_correct(
    answers: Sequence[Answer | None],
    correct: Sequence[bool],
    equivalent: Callable[[Answer, Answer], bool] | None = None,
) -> bool:
    """Whether the majority-voted answer is correct: the verdict of the winning group's representative."""
    if len(answers) != len(correct):
        raise ValueError(f"answers and correct differ in length: {len(answers)} vs {len(correct)}")
    best = _winner(group_answers(answers, equivalent))
    return bool(correct[best[0]]) if best is not None else False


def maj_at_k(
    answers: Sequence[Answer | None],
    correct: Sequence[bool],
    k: int,
    equivalent: Callable[[Answer, Answer], bool] | None = None,
) -> float:
    """maj@k of one problem: the fraction of its ``len(answers) // k`` disjoint ``k``-blocks whose vote
    is correct (blocks of consecutive samples, in the order given)."""
    n = len(answers)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if len(correct) != n:
        raise ValueError(f"answers and correct differ in length: {n} vs {len(correct)}")
    blocks = n // k
    wins = sum(
        majority_correct(answers[b * k : (b + 1) * k], correct[b * k : (b + 1) * k], equivalent)
        for b in range(blocks)
    )
    return wins / blocks


def summarize_majority(
    samples_by_problem: dict[str, list[tuple[Any, bool]]],
    equivalent: Callable[[Any, Any], bool] | None = None,
) -> dict[str, dict[str, float]]:
    """``maj@k`` (k as in :func:`ks_for` of the smallest sample count) with bootstrap CIs over problems.

    ``samples_by_problem``: problem -> ``[(extracted answer or None, correct), ...]`` in sample order.
    """
    if not samples_by_problem:
        return {}
    n_min = min(len(v) for v in samples_by_problem.values())
    if n_min < 1:
        return {}
    out = {}
    columns = [([a for a, _ in v[:n_min]], [c for _, c in v[:n_min]]) for v in samples_by_problem.values()]
    for k in ks_for(n_min):
        per_problem = [maj_at_k(answers, correct, k, equivalent) for answers, correct in columns]
        low, high = bootstrap_ci(per_problem)
        out[f"maj@{k}"] = {"mean": float(np.mean(per_problem)), "ci95": [low, high]}
    return out
