"""LiveCodeBench loading from a local file: JSON tests, refusal of pickles unless trusted."""

from __future__ import annotations

import base64
import json
import pickle
import zlib

import pytest
from emreason.evals.tasks import get_task
from emreason.evals.tasks.code_tasks import decode_private_tests


def _record(private):
    return {
        "question_id": "q1",
        "question_content": "Read two ints, print their sum.",
        "starter_code": "",
        "public_test_cases": json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]),
        "private_test_cases": private,
        "metadata": "{}",
        "difficulty": "easy",
    }


def test_stdin_problem_from_local_file(tmp_path):
    path = tmp_path / "lcb.jsonl"
    private = json.dumps([{"input": "5 7\n", "output": "12\n", "testtype": "stdin"}])
    path.write_text(json.dumps(_record(private)) + "\n")
    task = get_task("livecodebench")
    problems = task.load(path).problems
    good = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    bad = "```python\nprint(3)\n```"
    assert [v.correct for v in task.grade([(problems[0], good), (problems[0], bad)])] == [True, False]


def test_functional_problem():
    task = get_task("livecodebench")
    problem = task.to_problem(
        {
            **_record("[]"),
            "public_test_cases": json.dumps(
                [{"input": "[1, 2]\n3", "output": "[1, 2, 3]", "testtype": "functional"}]
            ),
            "metadata": json.dumps({"func_name": "push"}),
            "starter_code": "class Solution:\n    def push(self, xs, x):\n",
        }
    )
    code = "```python\nclass Solution:\n    def push(self, xs, x):\n        return xs + [x]\n```"
    assert task.grade([(problem, code)])[0].correct


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_private_tests_need_trust_and_never_import():
    payload = json.dumps([{"input": "1 1\n", "output": "2\n", "testtype": "stdin"}])
    encoded = base64.b64encode(zlib.compress(pickle.dumps(payload))).decode()
    with pytest.raises(ValueError, match="trust-lcb-pickle"):
        decode_private_tests(encoded, trust_pickle=False)
    assert decode_private_tests(encoded, trust_pickle=True)[0]["output"] == "2\n"
    evil = base64.b64encode(zlib.compress(pickle.dumps(_Evil()))).decode()
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        decode_private_tests(evil, trust_pickle=True)


def test_livecodebench_needs_a_source():
    with pytest.raises(ValueError, match="data-path"):
        get_task("livecodebench").load()
