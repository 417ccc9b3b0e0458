"""Speed of the evaluation harness; prints one JSON object.

- MATH-500 grading throughput: the 500 gold solutions and 500 corrupted ones (``+1`` appended inside the
  box, which forces the symbolic math-verify path), with 2 worker processes, pool start-up included.
- Sandbox throughput: trivial programs per second, isolated vs. not isolated (ratio = cost of namespaces).
- ``--validate``: canonical-solution pass rates on the full HumanEval, HumanEval+, MBPP+ and MBPP sets.

Run: ``OMP_NUM_THREADS=1 python benchmarks/evals.py [--validate]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

from emreason.evals.data import require_data_file
from emreason.evals.math import extract_answer, grade_many
from emreason.evals.sandbox import active_protections, run_python


def grading_speed() -> dict:
    rows = [json.loads(line) for line in open(require_data_file("math500/test.jsonl"))]
    gold_pairs = [(r["solution"], r["answer"]) for r in rows]

    def corrupt(solution: str) -> str:
        answer = extract_answer(solution)
        return solution.replace(f"\\boxed{{{answer}}}", f"\\boxed{{{answer}+1}}")

    corrupted_pairs = [(corrupt(r["solution"]), r["answer"]) for r in rows]
    out = {}
    for name, pairs in (("gold", gold_pairs), ("corrupted", corrupted_pairs)):
        start = time.perf_counter()
        verdicts = grade_many(pairs, workers=2)
        seconds = time.perf_counter() - start
        out[f"math500_{name}_seconds"] = round(seconds, 3)
        out[f"math500_{name}_items_per_s"] = round(len(pairs) / seconds, 1)
        out[f"math500_{name}_accuracy"] = sum(verdicts) / len(verdicts)
    return out


def sandbox_speed(runs: int = 40, threads: int = 4) -> dict:
    out = {}
    for isolate in (True, False):
        start = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(lambda _, iso=isolate: run_python("print(1)", isolate=iso), range(runs)))
        assert all(r.ok for r in results)
        out["sandbox_isolated_runs_per_s" if isolate else "sandbox_plain_runs_per_s"] = round(
            runs / (time.perf_counter() - start), 2
        )
    out["sandbox_isolation_cost_ratio"] = round(
        out["sandbox_plain_runs_per_s"] / out["sandbox_isolated_runs_per_s"], 3
    )
    out["sandbox_protections"] = list(active_protections())
    return out


def validate() -> dict:
    from emreason.evals.tasks import get_task

    out = {}
    completions = {
        "humaneval": lambda g: g["prompt"] + g["canonical_solution"],
        "humaneval_plus": lambda g: g["canonical_solution"],
        "mbpp_plus": lambda g: g["canonical_solution"],
        "mbpp": lambda g: g["code"],
    }
    for name, make in completions.items():
        task = get_task(name)
        problems = task.load().problems
        start = time.perf_counter()
        verdicts = task.grade([(p, make(p.gold)) for p in problems], workers=4)
        out[f"{name}_canonical_pass"] = f"{sum(v.correct for v in verdicts)}/{len(problems)}"
        out[f"{name}_canonical_failed"] = {
            p.id: v.details.get("status") for p, v in zip(problems, verdicts) if not v.correct
        }
        out[f"{name}_seconds"] = round(time.perf_counter() - start, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--validate", action="store_true", help="also grade all canonical code solutions")
    args = parser.parse_args()
    result = {"cpu_count": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)}
    result.update(grading_speed())
    result.update(sandbox_speed())
    if args.validate:
        result.update(validate())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
