"""``emreason eval verify-code``: grade the benchmarks' own reference solutions with the harness.

A reference that fails means either a broken reference or a harness that grades differently from the
benchmark's own checker; both need a look before model scores are trusted.

- HumanEval: ``prompt + canonical_solution`` against the official ``check``.
- HumanEval+, MBPP+: ``canonical_solution`` through the EvalPlus path (it is also the oracle, so this
  checks input rebuilding, comparison, time limits and oracles end to end).
- MBPP (sanitized): the dataset's ``code`` against its ``test_list``.
- LeetCode has no reference solutions: a stub ``Solution`` whose every method returns a value equal to
  anything shows that each test program runs (prelude, test helpers, method names); it cannot check
  tests that walk the returned object (linked lists), which are reported as ``unchecked``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emreason.atomic_io import write_json_atomic

VERIFIABLE = ("humaneval", "humaneval_plus", "mbpp_plus", "mbpp", "leetcode")

LEETCODE_STUB = '''
class _Anything:
    """Equal to, less than and greater than everything; arithmetic keeps it."""
    def __eq__(self, other): return True
    __ne__ = lambda self, other: False
    __lt__ = __le__ = __gt__ = __ge__ = __eq__
    def __bool__(self): return True
    def __hash__(self): return 0
    def _same(self, *args, **kwargs): return self
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _same
    __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = __pow__ = __rpow__ = __abs__ = __neg__ = _same
    __round__ = _same
class Solution:
    def __getattr__(self, name):
        return lambda *args, **kwargs: _Anything()
'''


def reference_code(task_name: str, gold: dict) -> str | None:
    """The reference solution a task is graded with (``None``: this task has none)."""
    if task_name == "humaneval":
        return gold["prompt"] + gold["canonical_solution"]
    if task_name in ("humaneval_plus", "mbpp_plus"):
        return gold["canonical_solution"]
    if task_name == "mbpp":
        return gold["code"]
    if task_name == "leetcode":
        return LEETCODE_STUB
    return None


def _unchecked(task_name: str, gold: dict) -> bool:
    # Tests that convert the returned linked list back to a Python list cannot run on the stub.
    return task_name == "leetcode" and "ListNode" in gold.get("test", "")


def verify_code(
    task_names: Sequence[str], *, workers: int = 2, limit: int | None = None, data_path: str | None = None
) -> dict[str, Any]:
    """Grade the references of ``task_names``; returns per task: n, passed, failed [{id, status, ...}]."""
    from emreason.evals.tasks import get_task

    unknown = [n for n in task_names if n not in VERIFIABLE]
    if unknown:
        raise ValueError(f"verify-code supports {', '.join(VERIFIABLE)}; got {unknown}")
    if data_path and len(task_names) != 1:
        raise ValueError("--data-path needs exactly one --task")
    report: dict[str, Any] = {}
    for name in task_names:
        task = get_task(name)
        problems = task.load(data_path).problems[:limit]
        started = time.perf_counter()
        items = [(p, f"```python\n{reference_code(name, p.gold)}\n```") for p in problems]
        verdicts = task.grade(items, workers=workers)
        failed, unchecked = [], []
        for problem, verdict in zip(problems, verdicts):
            if verdict.correct:
                continue
            row = {"id": problem.id, "status": verdict.details.get("status")}
            keys = ("failure", "base", "stderr_tail")
            row.update({k: verdict.details[k] for k in keys if k in verdict.details})
            (unchecked if _unchecked(name, problem.gold) else failed).append(row)
        report[name] = {
            "n": len(problems),
            "passed": len(problems) - len(failed) - len(unchecked),
            "failed": failed,
            "unchecked": unchecked,
            "seconds": round(time.perf_counter() - started, 1),
        }
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="emreason eval verify-code",
        description="Grade the benchmarks' reference solutions and list every task whose reference fails.",
    )
    parser.add_argument(
        "--task", default=",".join(VERIFIABLE), help=f"comma-separated: {', '.join(VERIFIABLE)}"
    )
    parser.add_argument("--workers", type=int, default=2, help="sandbox threads")
    parser.add_argument("--limit", type=int, default=None, help="first N problems of each task")
    parser.add_argument("--data-path", default=None, help="benchmark file (only with a single task)")
    parser.add_argument("--output", default=None, help="also write the report as JSON to this file")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    names = [n.strip() for n in args.task.split(",") if n.strip()]
    try:
        report = verify_code(names, workers=args.workers, limit=args.limit, data_path=args.data_path)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    for name, row in report.items():
        extra = f", {len(row['unchecked'])} unchecked" if row["unchecked"] else ""
        print(f"{name}: {row['passed']}/{row['n']} references pass{extra} ({row['seconds']} s)")
        for failure in row["failed"]:
            rest = json.dumps({k: v for k, v in failure.items() if k != "id"})
            print(f"  FAIL {failure['id']}: {rest[:300]}")
        for item in row["unchecked"]:
            print(f"  unchecked {item['id']} (the stub cannot answer tests that walk the result)")
    if args.output:
        write_json_atomic(Path(args.output), report)
    return 0 if not any(row["failed"] for row in report.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
