"""EvalPlus semantics: output comparison, special oracles, per-input time limits, reference-time cache."""

from __future__ import annotations

import json
import math

import pytest
from emreason.evals import evalplus
from emreason.evals._evalplus_compare import _emreason_expected, _emreason_same
from emreason.evals.code import check_evalplus


def same(out, exp, atol=0.0, dataset="", entry="", args=()):
    return _emreason_same(out, exp, atol, dataset, entry, args)


def test_large_integer_off_by_one_is_wrong_with_atol_zero():
    # HumanEval/39-style: Fibonacci primes ~3e9. The old rule accepted |diff| <= 1e-6 + 1e-7*|exp| (~300).
    exp = 2971215073
    assert abs((exp + 1) - exp) <= 1e-6 + 1e-7 * abs(exp)  # what the old comparison allowed
    assert not same(exp + 1, exp)
    assert not same([exp + 1], [exp])
    assert same(exp, exp)
    # Even when the task gives an atol, integers stay exact (floats only get the tolerance).
    assert not same(exp + 1, exp, atol=1e-4)
    assert not same((1, exp + 1), (1, exp), atol=1e-4)


def test_floats_get_tolerance_ints_bools_strings_do_not():
    assert same(0.1 + 0.2, 0.3)  # atol 0 and a float: EvalPlus enforces 1e-6
    assert same([0.1 + 0.2, 1.0], [0.3, 1.0])
    assert not same(0.3 + 2e-6, 0.3)
    assert same(0.3 + 5e-5, 0.3, atol=1e-4)
    assert same(1e9 * (1 + 5e-8), 1e9)  # relative part: rtol 1e-7
    assert not same(1e9 * (1 + 5e-7), 1e9)
    # A list of tuples of floats is not "floats" for EvalPlus: exact unless the task gives an atol.
    assert not same([(0.1 + 0.2, 1.0)], [(0.3, 1.0)])
    assert same([(0.1 + 0.2, 1.0)], [(0.3, 1.0)], atol=1e-6)
    # With an atol the top-level types must agree (EvalPlus asserts type(out) == type(exp)).
    assert not same(3, 3.0000001, atol=1e-4)
    assert same(3, 3.0)  # exact equality comes first
    assert not same(True, 1.5, atol=1.0)
    assert not same("1.0", 1.0, atol=1e-4)
    assert not same([1.0, 2.0], [1.0], atol=1e-4)


def test_nan_as_evalplus():
    nan = float("nan")
    assert not same(nan, nan)  # np.allclose(equal_nan=False) and nan != nan
    assert not same(float("nan"), nan, atol=1e-4)
    assert not same([float("nan")], [nan])
    assert same([nan], [nan])  # only exact equality: the same object inside a container
    assert same(math.inf, math.inf) and not same(-math.inf, math.inf, atol=1.0)


def test_special_oracles():
    # HumanEval/32 find_zero: any root within atol of zero, not the reference's root.
    xs = [-6, 11, -6, 1]  # (x-1)(x-2)(x-3)
    assert same(2.0, 1.0, 1e-4, "humaneval", "find_zero", (xs,))
    assert not same(2.5, 1.0, 1e-4, "humaneval", "find_zero", (xs,))
    # Set-equality tasks and "is not None" regex tasks (Mbpp).
    assert same([3, 1, 2], [1, 2, 3], 0.0, "mbpp", "similar_elements")
    assert not same([3, 1], [1, 2, 3], 0.0, "mbpp", "similar_elements")
    assert _emreason_expected("mbpp", "text_match_three", None) is False
    assert same(object(), True, 0.0, "mbpp", "text_match_three")
    assert not same(None, True, 0.0, "mbpp", "text_match_three")
    assert same(False, False, 0.0, "mbpp", "text_match_three")
    assert same(0, 7, 0.0, "mbpp", "sum_div") and not same(1, 7, 0.0, "mbpp", "sum_div")
    # Mbpp/558: "012" vs "345" -> 9 is accepted whatever the reference said (4 = unpadded zip).
    assert same(9, 4, 0.0, "mbpp", "digit_distance_nums", (12, 345))
    assert not same(8, 4, 0.0, "mbpp", "digit_distance_nums", (12, 345))
    # The same names outside their dataset get no oracle.
    assert not same([3, 1, 2], [1, 2, 3], 0.0, "humaneval", "similar_elements")


def test_time_limits_floor_and_factor():
    assert evalplus.time_limits([0.0, 0.1, 0.5, 2.0]) == [1.0, 1.0, 2.0, 8.0]
    assert evalplus.split_budget([0.1] * 100) == 61.0  # EvalPlus: min(60, sum(limits)) + 1
    assert evalplus.split_budget([0.0, 0.5]) == 4.0  # limits 1 + 2
    assert evalplus.split_budget([1.0] * 30) == 121.0  # the reference alone needs 30 s: 4 x 30 + 1
    with pytest.raises(ValueError, match="-1"):
        evalplus.time_limits([-1])


def _problem(reference_body: str, base, plus, atol=0.0) -> dict:
    return {
        "task_id": "Synthetic/0",
        "prompt": "import time\ndef f(x):\n",
        "canonical_solution": reference_body,
        "entry_point": "f",
        "base_input": base,
        "plus_input": plus,
        "atol": atol,
    }


def test_per_input_limits_first_failure_and_slow_machine():
    # The reference sleeps 0.6 s on input 5 only: limit there is 4 * 0.6 = 2.4 s, elsewhere the 1 s floor.
    reference = "    if x == 5:\n        time.sleep(0.6)\n    return x * 2\n"
    problem = _problem(reference, [[1], [5], [2]], [[3]])
    # Candidate 2x slower than the reference on input 5: passes (one wall-clock cap of 1 s would fail it).
    slow_ok = "import time\ndef f(x):\n    if x == 5:\n        time.sleep(1.2)\n    return x * 2\n"
    verdict = check_evalplus(
        problem, slow_ok, humaneval_style=True, ref_times={"base": [0.0] * 3, "plus": [0.0]}
    )
    assert verdict.passed, verdict
    # Slow everywhere else: input 0 takes 1.5 s > the 1 s floor -> timeout at base index 0, nothing after.
    too_slow = (
        "import time\ndef f(x):\n    if x == 1:\n        time.sleep(1.5)\n"
        "    print('x' * 10**6)\n    return x * 2\n"  # prints are swallowed, not an output-limit failure
    )
    verdict = check_evalplus(problem, too_slow, humaneval_style=True)
    assert not verdict.passed and verdict.status == "timeout"
    assert verdict.details["failure"]["split"] == "base" and verdict.details["failure"]["index"] == 0
    # First failure stops: a wrong answer on input 1 is reported there (input 2 would crash).
    wrong = "def f(x):\n    if x == 2:\n        raise RuntimeError\n    return x * 2 + (x == 5)\n"
    verdict = check_evalplus(problem, wrong, humaneval_style=True)
    assert verdict.details["failure"] == {"split": "base", "index": 1, "reason": "wrong"}
    # A cached time from a slower run raises the limit: 1.5 s on input 0 passes with t_ref = 0.5 s cached.
    cached = {"base": [0.5, 0.6, 0.0], "plus": [0.0]}
    assert check_evalplus(problem, too_slow, humaneval_style=True, ref_times=cached).passed


def test_candidate_cannot_swallow_its_time_limit():
    problem = _problem("    return x\n", [[1]], [])
    sneaky = (
        "def f(x):\n    while True:\n        try:\n            while True:\n                pass\n"
        "        except Exception:\n            pass\n"
    )
    verdict = check_evalplus(problem, sneaky, humaneval_style=True, timeout=30)
    assert verdict.status == "timeout" and verdict.details["failure"]["reason"] == "timeout"


def test_reference_times_measured_once_and_cached(tmp_path):
    problem = _problem("    return x\n", [[1], [2]], [[3]])
    calls = []

    def fake_measure(p):
        calls.append(p["task_id"])
        return {"base": [0.1, 0.2], "plus": [0.3]}

    path = tmp_path / "times.json"
    first = evalplus.ReferenceTimes(path).ensure(
        [problem, problem], humaneval_style=True, measure=fake_measure
    )
    assert first == {"Synthetic/0": {"base": [0.1, 0.2], "plus": [0.3]}} and calls == ["Synthetic/0"]
    again = evalplus.ReferenceTimes(path).ensure([problem], humaneval_style=True, measure=fake_measure)
    assert again == first and calls == ["Synthetic/0"]  # read from the file, not measured again
    assert [p.name for p in tmp_path.iterdir()] == ["times.json"]  # atomic write left no temp file
    # Another machine's file is ignored; so is an entry whose input count no longer matches.
    payload = json.loads(path.read_text())
    payload["machine"]["host"] = "elsewhere"
    path.write_text(json.dumps(payload))
    evalplus.ReferenceTimes(path).ensure([problem], humaneval_style=True, measure=fake_measure)
    assert calls == ["Synthetic/0"] * 2
    changed = dict(problem, plus_input=[[3], [4]])
    evalplus.ReferenceTimes(path).ensure([changed], humaneval_style=True, measure=fake_measure)
    assert len(calls) == 3
    # The real measurement runs the reference in the sandbox.
    measured = evalplus.measure_reference(problem, humaneval_style=True)
    assert len(measured["base"]) == 2 and len(measured["plus"]) == 1
    assert all(0 <= t < 1 for t in measured["base"] + measured["plus"])
