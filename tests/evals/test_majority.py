"""Majority voting (maj@k): equivalent-answer grouping, the tie rule, unanswered samples, the runner."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from emreason.evals.cli import _score_line
from emreason.evals.math import answers_equivalent
from emreason.evals.metrics import (
    group_answers,
    maj_at_k,
    majority_correct,
    majority_vote,
    summarize_majority,
)
from emreason.evals.runner import run_task
from emreason.evals.tasks import get_task


def test_equivalent_math_answers_vote_together():
    answers = ["3", "0.5", "1/2", "3", "\\frac{1}{2}", "3.0", "0.5"]
    # Plain string equality would let "3" (2 votes, "3.0" apart) beat every spelling of one half.
    assert Counter(answers).most_common(1)[0] == ("3", 2)
    assert majority_vote(answers, answers_equivalent) == ("0.5", 4)
    assert group_answers(answers, answers_equivalent) == [[0, 3, 5], [1, 2, 4, 6]]
    assert not answers_equivalent("2", "3") and not answers_equivalent("0.333", "1/3")


def test_math_task_votes_with_the_grader_equivalence():
    equivalent = get_task("math500").answer_equivalence()
    assert equivalent("1/2", "0.5") and not equivalent("1/2", "0.25")
    assert get_task("humaneval").answer_equivalence() is None  # code: nothing to vote on


def test_ties_go_to_the_group_seen_first():
    assert majority_vote(["4", "7", "7", "4"]) == ("4", 2)
    assert majority_vote(["7", "4", "4", "7"]) == ("7", 2)
    assert majority_vote(["9", "4", "7", "7", "4"]) == ("4", 2)  # "9" lost; "4" appeared before "7"
    assert majority_correct(["7", "4", "4", "7"], [False, True, True, False]) is False


def test_unanswered_samples_do_not_vote():
    assert majority_vote([None, "", "  ", None]) == (None, 0)
    assert majority_correct([None, None], [False, False]) is False
    assert majority_vote([None, "3", None, None, ""]) == ("3", 1)
    assert group_answers([None, "3", None, "3"]) == [[1, 3]]


def test_non_transitive_equivalence_is_deterministic():
    # 1~2 and 2~3 but not 1~3: "2" joins the group of "1" (first representative that matches); "3" is
    # compared with the representative "1" only, so it opens its own group.
    close = lambda a, b: abs(a - b) <= 1  # noqa: E731
    assert group_answers([1, 2, 3], close) == [[0, 1], [2]]


def _brute_force_vote(answers, correct):
    """Independent tie-breaking by first occurrence over exact-equality groups."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return False
    top = max(counts.values())
    first = min((answers.index(a) for a, c in counts.items() if c == top))
    return correct[first]


@pytest.mark.parametrize("k", [1, 2, 3, 4, 6])
def test_maj_at_k_is_the_mean_over_disjoint_blocks(k):
    answers = ["1", "2", None, "2", "1", "1", "3", "3", "2", None, "1", "2"]
    correct = [a == "1" for a in answers]
    blocks = [range(b * k, (b + 1) * k) for b in range(len(answers) // k)]
    expected = sum(_brute_force_vote([answers[i] for i in r], [correct[i] for i in r]) for r in blocks)
    assert maj_at_k(answers, correct, k) == pytest.approx(expected / len(blocks))
    if k == 1:
        assert maj_at_k(answers, correct, 1) == pytest.approx(sum(correct) / len(correct))


def test_maj_at_k_rejects_bad_input():
    with pytest.raises(ValueError, match="k=3"):
        maj_at_k(["1", "2"], [True, False], 3)
    with pytest.raises(ValueError, match="length"):
        majority_correct(["1", "2"], [True])


def test_maj_exhaustive_small_votes_agree_with_brute_force():
    for answers in itertools.product(["a", "b", None], repeat=4):
        correct = [a == "b" for a in answers]
        assert majority_correct(list(answers), correct) == _brute_force_vote(list(answers), correct)


class _PatternBackend:
    """Toy answers by sample index: wrong (+1), right, right, wrong (+2), repeating."""

    name = "pattern"

    def generate(self, conversations, n=1):
        from emreason.toy.task import make_problems

        answers = {p.prompt: p.answer for p in make_problems("heldout", 20)}
        offsets = [1, 0, 0, 2]
        return [
            [f"\\boxed{{{answers[c[-1]['content']] + offsets[i % 4]}}}" for i in range(n)]
            for c in conversations
        ]


def test_runner_reports_maj_at_k_beside_pass_at_k(tmp_path):
    metrics = run_task(get_task("toy", toy_size=20), _PatternBackend(), tmp_path, n_samples=4, progress=False)
    scores = metrics["scores"]
    assert scores["pass@1"]["mean"] == pytest.approx(0.5) and scores["pass@4"]["mean"] == pytest.approx(1.0)
    assert scores["maj@1"]["mean"] == pytest.approx(0.5)
    # Blocks [+1, 0] (tie: the wrong answer came first) and [0, +2] (tie: the right one came first).
    assert scores["maj@2"]["mean"] == pytest.approx(0.5)
    assert scores["maj@4"]["mean"] == pytest.approx(1.0)  # 2 right votes against 1 + 1
    line = _score_line(metrics)
    assert "pass@4 = 1.0000" in line and "maj@4 = 1.0000" in line


def test_summarize_majority_on_empty_and_uneven_input():
    assert summarize_majority({}) == {}
    out = summarize_majority(
        {"a": [("1", True), ("1", True), ("2", False)], "b": [("2", False), (None, False)]}
    )
    assert set(out) == {"maj@1", "maj@2"}  # k up to the smallest sample count
    assert out["maj@2"]["mean"] == pytest.approx(0.5)


def test_votes_group_answers_the_grader_equates_after_its_rewrites():
    """Majority voting uses the grader's rewrites too: a repeating decimal votes with its fraction and an
    inequality with its interval; a different digit or a closed endpoint does not."""
    assert answers_equivalent("0.\\overline{3}", "\\frac{1}{3}")
    assert answers_equivalent("x > 3", "(3,\\infty)")
    assert not answers_equivalent("x > 3", "[3,\\infty)")
    assert not answers_equivalent("0.\\overline{4}", "\\frac{1}{3}")
