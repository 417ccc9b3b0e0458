"""HumanEval+ / MBPP+ grading as EvalPlus 0.3.1 does it, inside :func:`emreason.evals.sandbox.run_python`.

- Expected outputs come from the reference solution, run in the same sandboxed program in its own
  namespace (JSON inputs are first rebuilt into tuples / complex numbers from the task's example call).
- Outputs are compared by :mod:`emreason.evals._evalplus_compare` (exact first, float tolerance only).
- Every input has its own time limit ``max(floor, factor * t_ref)`` (EvalPlus: ``min_time_limit=1``,
  ``gt_time_limit_factor=4``), where ``t_ref`` is the reference's time on that input; a split (base or
  plus) also has EvalPlus's budget ``min(60, sum(limits)) + 1`` s, raised to ``factor * sum(t_ref) + 1``
  where the reference alone needs more than 60 s (Mbpp/599's plus inputs take ~20-80 s here; with the
  fixed 60 s cap the reference itself fails on a slow machine). The first failing input stops the
  split. Plus is only run when base passed (the plus verdict needs both).
- ``t_ref`` is the larger of the reference time measured once per machine (cached atomically, see
  :class:`ReferenceTimes`) and the reference time measured in the grading program itself. The second
  term keeps a verdict from flipping on a machine that is slower *now* (heavy load) than when the cache
  was filled: the reference then slows down with the candidate and the limits grow with it.
- The sandbox's wall-clock limit is a safety net only (it catches what a signal cannot interrupt).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import platform
import re
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from emreason.atomic_io import write_json_atomic

MIN_TIME_LIMIT_S = 1.0  # evalplus/config.py DEFAULT_MIN_TIME_LIMIT
TIME_LIMIT_FACTOR = 4.0  # evalplus/config.py DEFAULT_GT_TIME_LIMIT_FACTOR
# evalplus/eval/__init__.py query_maximum_memory_bytes: 4 GiB for the candidate's process. Here the
# reference's outputs live in the same process, so a little more address space (Mbpp/255's plus outputs).
MEMORY_MB = 6144
SPLIT_BUDGET_CAP_S = 60.0  # evalplus/eval/__init__.py untrusted_check: EVALPLUS_TIMEOUT_PER_TASK
COMPARE_SOURCE = Path(__file__).with_name("_evalplus_compare.py").read_text()


def time_limits(
    ref_times: Sequence[float], *, factor: float = TIME_LIMIT_FACTOR, floor: float = MIN_TIME_LIMIT_S
) -> list[float]:
    """Per-input limits in seconds: ``max(floor, factor * t)`` for each reference time ``t`` (seconds)."""
    if not factor > 0 or not floor > 0:
        raise ValueError(f"factor and floor must be > 0, got factor={factor!r}, floor={floor!r}")
    limits = []
    for t in ref_times:
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t >= 0:
            raise ValueError(f"reference times must be numbers >= 0 seconds, got {t!r}")
        limits.append(max(floor, factor * float(t)))
    return limits


def split_budget(
    ref_times: Sequence[float], *, factor: float = TIME_LIMIT_FACTOR, cap: float = SPLIT_BUDGET_CAP_S
) -> float:
    """Whole-split budget in seconds: EvalPlus's ``min(cap, sum(limits)) + 1``, but never below
    ``factor * sum(ref_times) + 1`` (a budget the reference itself cannot meet flips with machine speed)."""
    limits = time_limits(ref_times, factor=factor)
    return max(min(cap, float(sum(limits))), factor * float(sum(ref_times))) + 1.0


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


# Reference run shared by the measuring and the grading programs: rebuilds inputs, computes expected
# outputs and times each reference call (deepcopy outside the timed region, as evalplus trusted_exec).
_REFERENCE_RUN = """
import copy as _copy, json as _json, signal as _signal, sys as _sys, time as _time
{compare}
_DATASET, _ENTRY = {dataset!r}, {entry_point!r}
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
_inputs = {{"base": _json.loads({base!r}), "plus": _json.loads({plus!r})}}
if _example is not None:
    for _split in _inputs:
        _inputs[_split] = [
            [_conform(v, e) for v, e in zip(a, _example)] + list(a[len(_example):]) for a in _inputs[_split]
        ]
_ref_ns = {{"__name__": "__reference__"}}
exec(compile({reference!r}, "reference", "exec"), _ref_ns)
_ref = _ref_ns[_ENTRY]
_expected, _ref_times = {{}}, {{}}
for _split, _split_inputs in _inputs.items():
    _expected[_split], _ref_times[_split] = [], []
    for _args in _split_inputs:
        _copied = _copy.deepcopy(_args)
        _t0 = _time.perf_counter()
        _value = _ref(*_copied)
        _ref_times[_split].append(_time.perf_counter() - _t0)
        _expected[_split].append(_emreason_expected(_DATASET, _ENTRY, _value))
"""

_MEASURE = """
print(_json.dumps(_ref_times))
"""

_GRADE = """
_cached = _json.loads({cached!r})
_ATOL, _FACTOR, _FLOOR, _CAP = {atol!r}, {factor!r}, {floor!r}, {cap!r}
class _EmreasonTimeout(BaseException):
    # BaseException, so that a candidate's `except Exception` does not swallow its own time limit.
    pass
def _on_alarm(signum, frame):
    raise _EmreasonTimeout()
_signal.signal(_signal.SIGALRM, _on_alarm)
class _Sink:
    # EvalPlus swallow_io: the candidate's prints are discarded (they must not hit the output caps).
    def write(self, text):
        return len(text)
    def flush(self):
        pass
_real_out, _real_err = _sys.stdout, _sys.stderr
def _ref(split):
    inline = _ref_times[split]
    cached = (_cached or {{}}).get(split) or [0.0] * len(inline)
    return [max(a, b) for a, b in zip(inline, cached)]
def _limits(split):
    return [max(_FLOOR, _FACTOR * t) for t in _ref(split)]
def _budget(split):
    return max(min(_CAP, sum(_limits(split))), _FACTOR * sum(_ref(split))) + 1.0
def _timed(seconds, call):
    _signal.setitimer(_signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        return call()
    finally:
        _signal.setitimer(_signal.ITIMER_REAL, 0)
def _run(split, function):
    limits = _limits(split)
    budget = _budget(split)
    started = _time.perf_counter()
    for index, (args, exp) in enumerate(zip(_inputs[split], _expected[split])):
        remaining = budget - (_time.perf_counter() - started)
        if remaining <= 0:
            return {{"split": split, "index": index, "reason": "split_timeout"}}
        copied = _copy.deepcopy(args)
        try:
            out = _timed(min(limits[index], remaining), lambda: function(*copied))
        except _EmreasonTimeout:
            reason = "timeout" if limits[index] <= remaining else "split_timeout"
            return {{"split": split, "index": index, "reason": reason, "limit_s": limits[index]}}
        except BaseException as error:
            return {{"split": split, "index": index, "reason": "error", "error": repr(error)[:200]}}
        if not _emreason_same(out, exp, _ATOL, _DATASET, _ENTRY, args):
            return {{"split": split, "index": index, "reason": "wrong"}}
    return None
_failure = None
_sys.stdout = _sys.stderr = _Sink()
try:
    _cand_ns = {{"__name__": "__main__"}}
    try:
        # Module-level code gets the base split's budget (EvalPlus: inside the same process timeout).
        _timed(
            _budget("base"),
            lambda: exec(compile({code!r}, "candidate", "exec"), _cand_ns),
        )
        _cand = _cand_ns[_ENTRY]
    except BaseException as error:
        _failure = {{"split": "base", "index": None, "reason": "load", "error": repr(error)[:200]}}
    if _failure is None:
        _failure = _run("base", _cand)
    _base_ok = _failure is None
    if _base_ok:
        _failure = _run("plus", _cand)
finally:
    _sys.stdout, _sys.stderr = _real_out, _real_err
print(_json.dumps({{"base": _base_ok, "plus": _failure is None, "failure": _failure}}))
"""


def _reference_source(problem: dict, humaneval_style: bool) -> tuple[str, tuple | None]:
    if humaneval_style:
        return problem["prompt"] + problem["canonical_solution"], None
    entry = problem["entry_point"]
    return problem["canonical_solution"], example_arguments(
        problem.get("assertion") or problem["prompt"], entry
    )


def _reference_run(problem: dict, humaneval_style: bool) -> str:
    reference, example = _reference_source(problem, humaneval_style)
    return _REFERENCE_RUN.format(
        compare=COMPARE_SOURCE,
        dataset="humaneval" if humaneval_style else "mbpp",
        entry_point=problem["entry_point"],
        example=example,
        base=json.dumps(problem["base_input"]),
        plus=json.dumps(problem["plus_input"]),
        reference=reference,
    )


def measuring_program(problem: dict, *, humaneval_style: bool) -> str:
    """Program printing ``{"base": [s, ...], "plus": [s, ...]}``: the reference's time per input."""
    return _reference_run(problem, humaneval_style) + _MEASURE


def grading_program(
    problem: dict,
    code: str,
    *,
    humaneval_style: bool,
    ref_times: dict[str, list[float]] | None = None,
    factor: float = TIME_LIMIT_FACTOR,
    floor: float = MIN_TIME_LIMIT_S,
    cap: float = SPLIT_BUDGET_CAP_S,
) -> str:
    """Program printing ``{"base": bool, "plus": bool, "failure": {...} | null}`` (then the nonce).

    ``plus`` is the EvalPlus plus verdict (base and plus inputs all pass); ``failure`` names the first
    failing input (split, index, reason: load | error | timeout | split_timeout | wrong).
    """
    if humaneval_style and not re.search(rf"def\s+{re.escape(problem['entry_point'])}\s*\(", code):
        code = problem["prompt"] + code
    return _reference_run(problem, humaneval_style) + _GRADE.format(
        cached=json.dumps(ref_times),
        atol=float(problem.get("atol") or 0.0),
        factor=float(factor),
        floor=float(floor),
        cap=float(cap),
        code=code,
    )


def safety_timeout(ref_times: dict[str, list[float]] | None, *, default: float = 300.0) -> float:
    """Whole-program wall-clock cap (s): reference runs plus both split budgets, doubled, plus start-up.

    Only a net for what SIGALRM cannot interrupt; per-input limits decide normal verdicts.
    """
    if not ref_times:
        return default
    total_ref = sum(sum(ref_times.get(s) or ()) for s in ("base", "plus"))
    budgets = sum(split_budget(ref_times.get(s) or ()) for s in ("base", "plus"))
    return 20.0 + 4.0 * total_ref + 2.0 * budgets


def problem_key(problem: dict) -> str:
    """Content hash of what determines reference times: reference code and inputs."""
    digest = hashlib.sha256()
    for part in (problem["task_id"], problem.get("prompt", ""), problem["canonical_solution"]):
        digest.update(part.encode() + b"\0")
    digest.update(json.dumps([problem["base_input"], problem["plus_input"]]).encode())
    return digest.hexdigest()[:32]


def machine_fingerprint() -> dict[str, Any]:
    """What makes reference times comparable: host, CPU architecture and count, Python version."""
    return {
        "host": socket.gethostname(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def cache_dir() -> Path:
    """``$EMREASON_CACHE_DIR`` or ``~/.cache/emreason``."""
    return Path(os.environ.get("EMREASON_CACHE_DIR") or Path.home() / ".cache" / "emreason")


class ReferenceTimes:
    """Per-input reference times, measured once per machine and kept in an atomically written JSON file.

    File: ``<cache_dir>/evalplus_ref_times-<machine hash>.json`` with ``{"machine": {...}, "entries":
    {problem_key: {"base": [s...], "plus": [s...]}}}``; a file whose machine differs is ignored.
    Concurrent writers merge what they read; an entry lost in a race is just measured again.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        machine = machine_fingerprint()
        tag = hashlib.sha256(json.dumps(machine, sort_keys=True).encode()).hexdigest()[:12]
        self.machine = machine
        self.path = Path(path) if path else cache_dir() / f"evalplus_ref_times-{tag}.json"
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, list[float]]] | None = None

    def _read(self) -> dict[str, dict[str, list[float]]]:
        try:
            payload = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # absent or torn by something other than us: measure again
        if not isinstance(payload, dict) or payload.get("machine") != self.machine:
            return {}
        entries = payload.get("entries")
        return entries if isinstance(entries, dict) else {}

    def get(self, problem: dict) -> dict[str, list[float]] | None:
        with self._lock:
            if self._entries is None:
                self._entries = self._read()
            entry = self._entries.get(problem_key(problem))
        if entry and len(entry.get("base", ())) == len(problem["base_input"]):
            if len(entry.get("plus", ())) == len(problem["plus_input"]):
                return entry
        return None

    def put(self, items: Iterable[tuple[dict, dict[str, list[float]]]]) -> None:
        with self._lock:
            merged = self._read()
            merged.update({problem_key(p): times for p, times in items})
            self._entries = merged
            write_json_atomic(self.path, {"machine": self.machine, "entries": merged}, indent=None)

    def ensure(
        self,
        problems: Sequence[dict],
        *,
        humaneval_style: bool,
        workers: int = 2,
        progress: bool = False,
        measure: Callable[[dict], dict[str, list[float]] | None] | None = None,
    ) -> dict[str, dict[str, list[float]] | None]:
        """Times for every problem (task_id -> times, None where the reference itself failed to run).

        Missing entries are measured (sandboxed, ``workers`` at a time) and written in one atomic update.
        """
        measure = measure or (lambda p: measure_reference(p, humaneval_style=humaneval_style))
        unique = {p["task_id"]: p for p in problems}
        found = {tid: self.get(p) for tid, p in unique.items()}
        missing = [unique[tid] for tid, times in found.items() if times is None]
        if missing:
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=len(missing), desc="reference times", unit="problem")

            def one(problem: dict) -> dict[str, list[float]] | None:
                times = measure(problem)
                if bar is not None:
                    bar.update(1)
                return times

            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                measured = list(pool.map(one, missing))
            if bar is not None:
                bar.close()
            good = [(p, t) for p, t in zip(missing, measured) if t is not None]
            if good:
                self.put(good)
            found.update({p["task_id"]: t for p, t in zip(missing, measured)})
        return found


def measure_reference(
    problem: dict, *, humaneval_style: bool, timeout: float = 600.0
) -> dict[str, list[float]] | None:
    """Run the reference alone in the sandbox and return its per-input times (None if it fails)."""
    from emreason.evals.code import run_with_nonce

    finished, result = run_with_nonce(
        measuring_program(problem, humaneval_style=humaneval_style),
        timeout=timeout,
        memory_mb=MEMORY_MB,
        max_output_bytes=16 * 1024 * 1024,
    )
    if not finished:
        return None
    try:
        times = json.loads(result.stdout.strip().splitlines()[-2])
        return {"base": [float(t) for t in times["base"]], "plus": [float(t) for t in times["plus"]]}
    except (IndexError, ValueError, KeyError, TypeError):
        return None


_SHARED: dict[Path, ReferenceTimes] = {}
_SHARED_LOCK = threading.Lock()


def shared_times() -> ReferenceTimes:
    """The process-wide cache object for the current cache path (``$EMREASON_CACHE_DIR`` may change)."""
    wanted = ReferenceTimes()
    with _SHARED_LOCK:
        return _SHARED.setdefault(wanted.path, wanted)
