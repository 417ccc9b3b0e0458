"""Code extraction and test-program builders for HumanEval(+), MBPP(+), LeetCode and LiveCodeBench.

Every candidate runs inside :func:`emreason.evals.sandbox.run_python`. A test program reads a fresh random
nonce from stdin *before* the candidate runs and prints it only after every test has passed, so a
candidate that exits early with status 0 (``exit()``, ``os._exit(0)``) is not mistaken for a pass. This
guards against accidents, not against a model that deliberately attacks the grader.
"""

from __future__ import annotations

import ast
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from emreason.evals.sandbox import SandboxResult, run_python

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)
# Imports a LeetCode-style solution may assume, as on the judge.
LEETCODE_PRELUDE = (
    "from typing import *\nfrom collections import *\nfrom functools import *\nfrom itertools import *\n"
    "from heapq import *\nfrom bisect import *\nfrom math import *\nimport math, heapq, bisect, itertools, "
    "functools, collections, string, re, random, operator\n"
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
    program_body: str, *, timeout: float, memory_mb: int = 2048, max_output_bytes: int = 64 * 1024
) -> tuple[bool, SandboxResult]:
    """Run ``program_body`` wrapped in the nonce header/footer; True when it printed the nonce last."""
    nonce = secrets.token_hex(16)
    result = run_python(
        _NONCE_HEADER + program_body + _NONCE_FOOTER,
        stdin=nonce + "\n",
        timeout=timeout,
        memory_mb=memory_mb,
        max_output_bytes=max_output_bytes,
        kill_output_bytes=max(8 * 1024 * 1024, 2 * max_output_bytes),
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


# Comparison of outputs inside the sandbox: exact, else numeric closeness with atol (EvalPlus convention:
# floats get at least 1e-6 tolerance).
_COMPARE_SOURCE = """
import math as _m, re as _re
def _emreason_same(out, exp, atol):
    if isinstance(out, _re.Match) or isinstance(exp, _re.Match):
        return (out is None) == (exp is None)  # regex tasks: only "matched or not" is specified
    if out == exp:
        return True
    num = (int, float, complex)
    if isinstance(out, num) and isinstance(exp, num) and bool not in (type(out), type(exp)):
        if isinstance(out, float) and isinstance(exp, float) and _m.isnan(out) and _m.isnan(exp):
            return True
        return abs(out - exp) <= max(atol, 1e-6) + 1e-7 * abs(exp)
    if isinstance(out, (list, tuple)) and isinstance(exp, (list, tuple)) and len(out) == len(exp):
        return all(_emreason_same(o, e, atol) for o, e in zip(out, exp))
    return False
"""


def example_arguments(text: str, entry_point: str) -> tuple | None:
    """Literal arguments of the first ``entry_point(...)`` call in ``text`` (MBPP+ prompts show one)."""
    for match in re.finditer(rf"\b{re.escape(entry_point)}\s*\(", text):
        depth, start = 0, match.end() - 1
        for index in range(start, len(text)):
            depth += {"(": 1, ")": -1}.get(text[index], 0)
            if depth == 0:
                try:
                    call = ast.parse("f" + text[start : index + 1], mode="eval").body
                    return tuple(ast.literal_eval(arg) for arg in call.args)
                except (SyntaxError, ValueError, AttributeError):
                    break
    return None


def evalplus_program(
    reference: str,
    entry_point: str,
    base: list,
    plus: list,
    atol: float,
    code: str,
    example: tuple | None = None,
) -> str:
    """Reference and candidate in separate namespaces; expected outputs come from the reference first.

    Prints ``{"base": bool, "plus": bool}`` before the nonce; ``plus`` means base and plus inputs pass.
    """
    return f"""
import copy as _copy, json as _json
{_COMPARE_SOURCE}
_ref_ns = {{"__name__": "__reference__"}}
exec(compile({reference!r}, "reference", "exec"), _ref_ns)
_base = _json.loads({json.dumps(base)!r})
_plus = _json.loads({json.dumps(plus)!r})
_ref = _ref_ns[{entry_point!r}]
def _no_lists(x):
    if isinstance(x, list):
        return False
    if isinstance(x, tuple):
        return all(_no_lists(v) for v in x)
    return not isinstance(x, dict)
def _deep_tuple(x):
    return tuple(_deep_tuple(v) for v in x) if isinstance(x, list) else x
def _number(text):
    for kind in (int, float, complex):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
def _conform(value, example):
    # JSON has no tuples or complex numbers: rebuild them wherever the task's own example call has one.
    if isinstance(value, str) and type(example) in (int, float, complex):
        return _number(value)
    if isinstance(example, tuple) and _no_lists(example) and isinstance(value, list):
        return _deep_tuple(value)
    if isinstance(example, (tuple, list)) and isinstance(value, list):
        if len(example) == len(value):
            items = [_conform(v, e) for v, e in zip(value, example)]
        else:
            nested = [e for e in example if isinstance(e, (tuple, list, dict))]
            inner = nested[0] if nested else (example[0] if example else None)
            items = [_conform(v, inner) for v in value]
        return tuple(items) if isinstance(example, tuple) else items
    if isinstance(example, dict) and isinstance(value, dict) and example:
        inner = next(iter(example.values()))
        return {{k: _conform(v, inner) for k, v in value.items()}}
    return value
_example = {example!r}
if _example is not None:
    _base = [[_conform(v, e) for v, e in zip(a, _example)] + list(a[len(_example):]) for a in _base]
    _plus = [[_conform(v, e) for v, e in zip(a, _example)] + list(a[len(_example):]) for a in _plus]
_exp_base = [_ref(*_copy.deepcopy(a)) for a in _base]
_exp_plus = [_ref(*_copy.deepcopy(a)) for a in _plus]
_cand_ns = {{"__name__": "__main__"}}
exec(compile({code!r}, "candidate", "exec"), _cand_ns)
_cand = _cand_ns[{entry_point!r}]
def _all_pass(inputs, expected):
    for args, exp in zip(inputs, expected):
        try:
            if not _emreason_same(_cand(*_copy.deepcopy(args)), exp, {float(atol)!r}):
                return False
        except Exception:
            return False
    return True
_base_ok = _all_pass(_base, _exp_base)
_plus_ok = _base_ok and _all_pass(_plus, _exp_plus)
print(_json.dumps({{"base": _base_ok, "plus": _plus_ok}}))
"""


def check_evalplus(problem: dict, code: str, *, humaneval_style: bool, timeout: float = 60.0) -> CodeVerdict:
    """EvalPlus grading of ``code``; ``passed`` is the plus verdict, ``details['base']`` the base one."""
    entry = problem["entry_point"]
    if humaneval_style:
        reference = problem["prompt"] + problem["canonical_solution"]
        if not re.search(rf"def\s+{re.escape(entry)}\s*\(", code):
            code = problem["prompt"] + code
        example = None
    else:
        reference = problem["canonical_solution"]
        example = example_arguments(problem.get("assertion") or problem["prompt"], entry)
    program = evalplus_program(
        reference,
        entry,
        problem["base_input"],
        problem["plus_input"],
        problem.get("atol") or 0,
        code,
        example,
    )
    finished, result = run_with_nonce(program, timeout=timeout)
    base = plus = False
    if finished:
        lines = result.stdout.strip().splitlines()
        try:
            scores = json.loads(lines[-2])
            base, plus = bool(scores["base"]), bool(scores["plus"])
        except (IndexError, ValueError, KeyError, TypeError):
            pass
    verdict = _verdict(plus, result, base=base, plus=plus)
    if finished and not plus:
        verdict = CodeVerdict(False, "failed", {"base": base, "plus": plus})
    return verdict


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
{_COMPARE_SOURCE}
for _args, _exp in _json.loads({json.dumps(cases)!r}):
    _out = getattr(Solution(), {func_name!r})(*_args)
    if isinstance(_out, tuple):
        _out = list(_out)
    assert _emreason_same(_out, _exp, 0.0), "wrong answer"
"""
    passed, result = run_with_nonce(body, timeout=timeout)
    return _verdict(passed, result, tests=len(cases))
