"""Code extraction and test-program builders for HumanEval(+), MBPP(+), LeetCode and LiveCodeBench.

Every candidate runs inside :func:`emreason.evals.sandbox.run_python`. A test program reads a fresh random
nonce from stdin *before* the candidate runs and prints it only after every test has passed, so a
candidate that exits early with status 0 (``exit()``, ``os._exit(0)``) is not mistaken for a pass. This
guards against accidents, not against a model that deliberately attacks the grader.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from emreason.evals import evalplus
from emreason.evals.sandbox import SandboxResult, run_python

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)
# Imports a LeetCode-style solution may assume, as on the judge.
LEETCODE_PRELUDE = (
    "from typing import *\nfrom collections import *\nfrom functools import *\nfrom itertools import *\n"
    "from heapq import *\nfrom bisect import *\nfrom math import *\nimport math, heapq, bisect, itertools, "
    "functools, collections, string, re, random, operator\n"
    # LeetCode's judge defines these node classes; a solution's own definition (later) replaces them.
    "class ListNode:\n    def __init__(self, val=0, next=None):\n"
    "        self.val = val\n        self.next = next\n"
    "class TreeNode:\n    def __init__(self, val=0, left=None, right=None):\n"
    "        self.val = val\n        self.left = left\n        self.right = right\n"
)

_NONCE_HEADER = "import sys as _emreason_sys\n_emreason_nonce = _emreason_sys.stdin.readline().strip()\n"
_NONCE_FOOTER = "\nprint(_emreason_nonce, flush=True)\n"


def extract_code(completion: str) -> str:
    """The last fenced ```python block (else the last fenced block; an unclosed one runs to the end).

    Without any fence the whole completion is returned: it may already be bare code.
    """
    if not isinstance(completion, str):
        raise TypeError(f"completion must be str, got {type(completion).__name__}")
    blocks = _FENCE.findall(completion)
    python_blocks = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3")]
    if python_blocks:
        return python_blocks[-1]
    if blocks:
        return blocks[-1][1]
    opened = re.search(r"```[ \t]*(?:python|py|python3)?[^\n]*\n(.*)$", completion, re.DOTALL)
    if opened:
        return opened.group(1)
    return completion


@dataclass(frozen=True)
class CodeVerdict:
    """Outcome of running a candidate's tests; ``details`` holds sub-results (e.g. base vs plus)."""

    passed: bool
    status: str  # passed | failed | timeout | output_limit | error
    details: dict[str, Any] = field(default_factory=dict)


def _status(result: SandboxResult) -> str:
    if result.timed_out:
        return "timeout"
    if result.output_limit_exceeded:
        return "output_limit"
    return "failed"


def run_with_nonce(
    program_body: str,
    *,
    timeout: float,
    memory_mb: int = 2048,
    max_output_bytes: int = 64 * 1024,
    file_mb: int = 16,
) -> tuple[bool, SandboxResult]:
    """Run ``program_body`` wrapped in the nonce header/footer; True when it printed the nonce last.

    ``file_mb``: the sandbox's file-size limit (its private ``/tmp`` holds twice that, program included).
    """
    nonce = secrets.token_hex(16)
    result = run_python(
        _NONCE_HEADER + program_body + _NONCE_FOOTER,
        stdin=nonce + "\n",
        timeout=timeout,
        memory_mb=memory_mb,
        max_output_bytes=max_output_bytes,
        kill_output_bytes=max(8 * 1024 * 1024, 2 * max_output_bytes),
        file_mb=file_mb,
    )
    lines = result.stdout.strip().splitlines()
    return (result.ok and bool(lines) and lines[-1].strip() == nonce), result


def _verdict(passed: bool, result: SandboxResult, **details: Any) -> CodeVerdict:
    details["wall_time_s"] = round(result.wall_time_s, 3)
    status = "passed" if passed else _status(result)
    if not passed and status == "failed":
        details["stderr_tail"] = result.stderr[-500:]
    return CodeVerdict(passed, status, details)


def humaneval_program(prompt: str, entry_point: str, test: str, code: str) -> str:
    """Candidate (completed from ``prompt`` when it lacks ``def entry_point``) + official ``check``."""
    if not re.search(rf"def\s+{re.escape(entry_point)}\s*\(", code):
        code = prompt + code
    return f"{code}\n\n{test}\n\ncheck({entry_point})\n"


def check_humaneval(problem: dict, code: str, *, timeout: float = 10.0) -> CodeVerdict:
    passed, result = run_with_nonce(
        humaneval_program(problem["prompt"], problem["entry_point"], problem["test"], code), timeout=timeout
    )
    return _verdict(passed, result)


def check_evalplus(
    problem: dict,
    code: str,
    *,
    humaneval_style: bool,
    ref_times: dict[str, list[float]] | None = None,
    timeout: float | None = None,
    memory_mb: int = evalplus.MEMORY_MB,
) -> CodeVerdict:
    """EvalPlus grading of ``code``; ``passed`` is the plus verdict, ``details['base']`` the base one.

    ``ref_times``: the reference's cached per-input times (:class:`emreason.evals.evalplus.ReferenceTimes`);
    without them the limits come from the reference times measured inside the grading program alone.
    ``timeout`` overrides the whole-program safety cap (:func:`emreason.evals.evalplus.safety_timeout`).
    """
    program = evalplus.grading_program(problem, code, humaneval_style=humaneval_style, ref_times=ref_times)
    cap = timeout if timeout is not None else evalplus.safety_timeout(ref_times)
    finished, result = run_with_nonce(program, timeout=cap, memory_mb=memory_mb)
    base = plus = False
    failure = None
    if finished:
        lines = result.stdout.strip().splitlines()
        try:
            scores = json.loads(lines[-2])
            base, plus, failure = bool(scores["base"]), bool(scores["plus"]), scores.get("failure")
        except (IndexError, ValueError, KeyError, TypeError):
            finished = False
    if not finished:
        return _verdict(False, result, base=False, plus=False)
    details: dict[str, Any] = {"base": base, "plus": plus, "wall_time_s": round(result.wall_time_s, 3)}
    if plus:
        return CodeVerdict(True, "passed", details)
    details["failure"] = failure
    timed_out = (failure or {}).get("reason") in ("timeout", "split_timeout")
    return CodeVerdict(False, "timeout" if timed_out else "failed", details)


def check_mbpp(problem: dict, code: str, *, timeout: float = 10.0) -> CodeVerdict:
    imports = "\n".join(problem.get("test_imports") or [])
    tests = "\n".join(problem["test_list"])
    passed, result = run_with_nonce(f"{imports}\n{code}\n\n{imports}\n{tests}\n", timeout=timeout)
    return _verdict(passed, result)


def check_leetcode(problem: dict, code: str, *, timeout: float = 20.0) -> CodeVerdict:
    """LeetCode: ``problem['test']`` asserts on ``Solution()``."""
    passed, result = run_with_nonce(f"{LEETCODE_PRELUDE}\n{code}\n\n{problem['test']}\n", timeout=timeout)
    return _verdict(passed, result)


def _outputs_match(got: str, expected: str) -> bool:
    """LiveCodeBench stdin comparison: line by line, whitespace-split tokens, numbers with 1e-6 tolerance."""
    got_lines = [line.split() for line in got.strip().splitlines()]
    exp_lines = [line.split() for line in expected.strip().splitlines()]
    if len(got_lines) != len(exp_lines):
        return False
    for got_tokens, exp_tokens in zip(got_lines, exp_lines):
        if got_tokens == exp_tokens:
            continue
        if len(got_tokens) != len(exp_tokens):
            return False
        for a, b in zip(got_tokens, exp_tokens):
            if a == b:
                continue
            try:
                if abs(float(a) - float(b)) > 1e-6 * max(1.0, abs(float(b))):
                    return False
            except ValueError:
                return False
    return True


def check_stdio(tests: Sequence[dict], code: str, *, timeout: float = 6.0) -> CodeVerdict:
    """Run ``code`` once per ``{"input", "output"}`` test on stdin; stops at the first failure."""
    for number, test in enumerate(tests):
        result = run_python(code, stdin=test["input"], timeout=timeout, memory_mb=2048)
        if not result.ok or not _outputs_match(result.stdout, test["output"]):
            status = _status(result)
            return CodeVerdict(False, status, {"failed_test": number, "stderr_tail": result.stderr[-300:]})
    return CodeVerdict(True, "passed", {"tests": len(tests)})


def check_functional(
    tests: Sequence[dict], func_name: str, code: str, *, timeout: float = 20.0
) -> CodeVerdict:
    """LeetCode-style functional tests: each input line is one JSON argument of ``Solution().func_name``."""
    cases = [
        ([json.loads(line) for line in t["input"].strip().splitlines()], json.loads(t["output"]))
        for t in tests
    ]
    body = f"""{LEETCODE_PRELUDE}
{code}
import json as _json
{evalplus.COMPARE_SOURCE}
for _args, _exp in _json.loads({json.dumps(cases)!r}):
    _out = getattr(Solution(), {func_name!r})(*_args)
    if isinstance(_out, tuple):
        _out = list(_out)
    assert _emreason_same(_out, _exp, 0.0), "wrong answer"
"""
    passed, result = run_with_nonce(body, timeout=timeout)
    return _verdict(passed, result, tests=len(cases))
