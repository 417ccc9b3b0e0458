"""Canonical solutions pass and broken ones fail on the real code benchmarks (sandboxed)."""

from __future__ import annotations

import gzip
import json

import pytest
from emreason.evals.code import extract_code
from emreason.evals.tasks import get_task


def _records(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as stream:
        return [json.loads(line) for line in stream]


def test_extract_code():
    text = (
        "Here:\n```python\ndef f():\n    return 1\n```\nand finally\n```python\ndef f():\n    return 2\n```"
    )
    assert "return 2" in extract_code(text)
    assert extract_code("```\nx = 1\n```") == "x = 1\n"
    assert extract_code("```python\nx = 3\n") == "x = 3\n"  # cut off before the closing fence
    assert extract_code("x = 4") == "x = 4"


def _grade(task_name, problems, completions, workers=4):
    task = get_task(task_name)
    return task.grade(list(zip(problems, completions)), workers=workers)


def test_humaneval_canonical_164_of_164_and_broken_fail(shared_data):
    task = get_task("humaneval")
    problems = task.load().problems
    assert len(problems) == 164
    canonical = [f"```python\n{p.gold['prompt']}{p.gold['canonical_solution']}```" for p in problems]
    verdicts = task.grade(list(zip(problems, canonical)), workers=4)
    assert sum(v.correct for v in verdicts) == 164, [
        p.id for p, v in zip(problems, verdicts) if not v.correct
    ]
    # Corruptions: wrong return value, early exit(0) (must not pass), crash.
    broken = [
        f"```python\n{problems[0].gold['prompt']}    return not True\n```",
        "```python\nimport os\nos._exit(0)\n```",
        "```python\nraise RuntimeError\n```",
    ]
    assert not any(v.correct for v in task.grade(list(zip(problems[:3], broken)), workers=3))


# The plus suites run every 3rd / 8th problem here to fit the test budget; benchmarks/evals.py --validate
# runs all of them (figures in docs/evals.md).
@pytest.mark.slow
def test_humaneval_plus_canonical(shared_data):
    task = get_task("humaneval_plus")
    problems = task.load().problems[::3]
    verdicts = task.grade([(p, f"```python\n{p.gold['canonical_solution']}```") for p in problems], workers=4)
    assert sum(v.correct for v in verdicts) == len(problems)
    assert all(v.details["base"] for v in verdicts if v.correct)
    wrong = task.grade([(problems[2], "```python\ndef truncate_number(number):\n    return number\n```")])
    assert not wrong[0].correct


@pytest.mark.slow
def test_mbpp_plus_canonical(shared_data):
    task = get_task("mbpp_plus")
    problems = task.load().problems[::8]
    verdicts = task.grade([(p, p.gold["canonical_solution"]) for p in problems], workers=4)
    failed = [p.id for p, v in zip(problems, verdicts) if not v.correct]
    # All 378 references pass with the EvalPlus rules (`emreason eval verify-code`, docs/evals.md).
    assert failed == [], failed


def test_mbpp_reference_code_sample(shared_data):
    task = get_task("mbpp")
    problems = task.load().problems[:40]
    verdicts = task.grade([(p, p.gold["code"]) for p in problems], workers=4)
    assert sum(v.correct for v in verdicts) >= 39
    assert not task.grade([(problems[0], "def similar_elements(a, b):\n    return ()")])[0].correct


LEETCODE_SOLUTIONS = {
    "weekly-contest-381-minimum-number-of-pushes-to-type-word-i": (
        "class Solution:\n    def minimumPushes(self, word: str) -> int:\n"
        "        return sum(i // 8 + 1 for i in range(len(word)))\n"
    ),
    # Uses the judge's ListNode without defining it (the harness prelude provides it, as LeetCode does).
    "weekly-contest-358-double-a-number-represented-as-a-linked-list": (
        "class Solution:\n    def doubleIt(self, head):\n        digits = []\n        while head:\n"
        "            digits.append(head.val)\n            head = head.next\n"
        "        value = int(''.join(map(str, digits))) * 2\n        out = None\n"
        "        for d in reversed(str(value)):\n            out = ListNode(int(d), out)\n"
        "        return out\n"
    ),
}


def test_leetcode_harness_with_hand_written_solutions(shared_data):
    task = get_task("leetcode")
    problems = {p.id: p for p in task.load().problems}
    assert len(problems) == 180
    items = [(problems[k], f"```python\n{code}```") for k, code in LEETCODE_SOLUTIONS.items()]
    wrong = [(p, code.replace("i // 8 + 1", "i // 9 + 1").replace("* 2", "* 3")) for p, code in items]
    verdicts = task.grade(items + wrong)
    assert [v.correct for v in verdicts] == [True, True, False, False]


def test_humaneval_plus_39_off_by_one_large_integer_fails(shared_data):
    """prime_fib returns values up to ~1e17 on plus inputs; an off-by-one there must fail (atol 0)."""
    from emreason.evals.code import check_evalplus

    task = get_task("humaneval_plus")
    problem = next(p for p in task.load().problems if p.id == "HumanEval/39").gold
    assert not problem["atol"]
    reference = problem["prompt"] + problem["canonical_solution"]
    off_by_one = (
        reference + "\n_reference = prime_fib\ndef prime_fib(n):\n    value = _reference(n)\n"
        "    return value + 1 if value > 10**8 else value\n"
    )
    assert check_evalplus(problem, reference, humaneval_style=True).passed
    verdict = check_evalplus(problem, off_by_one, humaneval_style=True)
    assert not verdict.passed and verdict.details["failure"]["reason"] == "wrong"
