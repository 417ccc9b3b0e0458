"""Math extraction and grading, validated on MATH-500 gold solutions and corrupted ones."""

from __future__ import annotations

import json
import threading

import pytest
from emreason.evals.math import (
    expand_repeating_decimals,
    extract_answer,
    grade_many,
    inequality_to_interval,
    is_correct,
    normalize_answer,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so \\boxed{\\frac{1}{2}} and then \\boxed{7}", "7"),
        ("nested \\boxed{\\frac{a}{\\sqrt{b}}}.", "\\frac{a}{\\sqrt{b}}"),
        ("\\fbox{42}", "42"),
        ("Thus the answer is $12$.", "12"),
        ("The final answer is: 3.5\nDone", "3.5"),
        ("we get 3 apples then 1,250 pears", "1250"),
        ("no digits here", None),
        ("cut off \\boxed{\\frac{1}{", "1"),  # unbalanced box: falls back to the last number
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_is_correct_uses_math_verify_for_equivalent_forms():
    assert is_correct("\\boxed{0.5}", "\\frac{1}{2}")
    assert is_correct("\\boxed{\\dfrac{14}{3}}", "\\frac{14}{3}")
    assert is_correct("\\boxed{(3,\\pi/2)}", "\\left( 3, \\frac{\\pi}{2} \\right)")
    assert is_correct("\\boxed{\\text{Monday}}", "\\text{Monday}")
    assert not is_correct("\\boxed{0.51}", "\\frac{1}{2}")
    assert not is_correct("no answer", "3")
    with pytest.raises(TypeError, match="gold"):
        is_correct("\\boxed{1}", 1)  # type: ignore[arg-type]


def test_normalize_answer():
    assert normalize_answer("\\$32,\\!348") == "32348"
    assert normalize_answer("(1,234)") == "(1,234)"
    assert normalize_answer("142.0") == "142"


def test_is_correct_off_the_main_thread():
    # math-verify's SIGALRM timeouts cannot be armed here; is_correct must still work.
    out = []
    thread = threading.Thread(target=lambda: out.append(is_correct("\\boxed{\\frac{2}{4}}", "0.5")))
    thread.start()
    thread.join()
    assert out == [True]


def test_antlr_runtime_serves_math_verify():
    from importlib.metadata import version

    # latex2sympy2_extended (math-verify) is generated for antlr 4.13; sympy's own parse_latex wants 4.11,
    # which this package never uses.
    assert version("antlr4-python3-runtime").startswith("4.13")
    from math_verify import parse

    assert parse("$\\frac{1}{3}$")


def test_grade_many_kills_a_hung_worker(monkeypatch):
    # A pathological input (a power tower) must not block grading of the others.
    pairs = [
        ("\\boxed{2}", "2"),
        ("\\boxed{9^{9^{9^{9^{9}}}}}", "3"),
        ("\\boxed{5}", "6"),
        ("\\boxed{1/2}", "0.5"),
    ]
    assert grade_many(pairs, workers=2, timeout=3.0) == [True, False, False, True]
    with pytest.raises(ValueError, match="workers"):
        grade_many(pairs, workers=0)


def test_math500_gold_solutions_and_corruptions(shared_data):
    rows = [json.loads(line) for line in open(shared_data / "math500" / "test.jsonl")]
    assert len(rows) == 500
    gold = grade_many([(r["solution"], r["answer"]) for r in rows], workers=2)
    assert sum(gold) == 500, [r["unique_id"] for r, ok in zip(rows, gold) if not ok]

    def corrupt(solution: str) -> str:
        answer = extract_answer(solution)
        return solution.replace(f"\\boxed{{{answer}}}", f"\\boxed{{{answer}+1}}")

    corrupted = grade_many([(corrupt(r["solution"]), r["answer"]) for r in rows[:100]], workers=2)
    assert sum(corrupted) == 0


def test_math500_prime_normalised_answers_are_equivalent(shared_data):
    """PRIME's cleaned MATH-500 answers differ textually in 85 rows but are math-equivalent."""
    rows = [json.loads(line) for line in open(shared_data / "math500" / "test.jsonl")]
    cleaned = json.load(open(shared_data / "math500" / "math_test_cleaned.json"))
    by_problem = {cleaned["problem"][k]: cleaned["expected_answer"][k] for k in cleaned["problem"]}
    pairs = [(f"\\boxed{{{by_problem[r['problem']]}}}", r["answer"]) for r in rows]
    differing = [p for p in pairs if normalize_answer(p[0][7:-1]) != normalize_answer(p[1])]
    assert len(differing) >= 20  # the rest already agree after string normalisation
    assert all(grade_many(differing, workers=2))


# Families math-verify alone rejects, each with near-misses that must stay wrong.
@pytest.mark.parametrize(
    ("answer", "gold", "expected"),
    [
        # multiple choice: letter + option text
        ("(C) Plane", "C", True),
        ("(C) Plane", "(C)", True),
        ("\\text{(C) Plane}", "\\text{(C)}", True),
        ("C. Plane", "C", True),
        ("C", "\\text{(C)}", True),
        ("(B) Plane", "C", False),
        ("B", "\\text{(C)}", False),
        ("Plane", "C", False),
        # inequality <-> interval
        ("x > 3", "(3,\\infty)", True),
        ("3 < x", "(3,\\infty)", True),
        ("x \\geq 3", "[3,\\infty)", True),
        ("x \\ge 3", "(3,\\infty)", False),
        ("x > 2", "(3,\\infty)", False),
        ("(3,\\infty)", "x > 3", True),
        ("[3,\\infty)", "x > 3", False),
        ("-2 < x < 5", "(-2,5)", True),
        ("5 > x > -2", "(-2,5)", True),
        ("-2 \\le x < 5", "(-2,5)", False),
        ("\\frac{3}{5} < x \\le \\frac{8}{3}", "\\left(\\frac{3}{5},\\frac{8}{3}\\right]", True),
        ("x < 2 \\text{ or } x > 3", "(-\\infty, 2) \\cup (3, \\infty)", True),
        ("x < 2 \\text{ or } x \\geq 3", "(-\\infty, 2) \\cup (3, \\infty)", False),
        # repeating decimals
        ("0.\\overline{5}", "\\frac{5}{9}", True),
        ("\\frac{5}{9}", "0.\\overline{5}", True),
        ("0.1\\overline{6}", "\\frac{1}{6}", True),
        ("0.\\overline{36}", "\\frac{4}{11}", True),
        ("0.\\overline{6}", "\\frac{5}{9}", False),
        ("0.\\overline{63}", "\\frac{4}{11}", False),
        ("0.5", "\\frac{5}{9}", False),
    ],
)
def test_answer_families(answer, gold, expected):
    assert is_correct(f"so \\boxed{{{answer}}}", gold) is expected


def test_family_normalisers():
    # Independent check of the repeating-decimal formula with exact fractions.
    from fractions import Fraction

    assert expand_repeating_decimals("1.2\\overline{34}") == "\\frac{611}{495}"
    assert abs(float(Fraction(611, 495)) - float("1." + "2" + "34" * 7)) < 1e-13  # the digits themselves
    assert Fraction(611, 495) == Fraction(1234 - 12, 990)  # 1000x - 10x = 1234.34... - 12.34...
    assert expand_repeating_decimals("-0.\\overline{9}") == "-\\frac{1}{1}"
    assert inequality_to_interval("x \\leq -1") == "(-\\infty,-1]"
    assert inequality_to_interval("a < b") is None  # two letters: no variable to pick
    assert inequality_to_interval("x > 1, y < 2") is None
    assert inequality_to_interval("y = 2x + 1") is None
    assert inequality_to_interval("x < 1 \\text{ or } y > 2") is None  # two variables
