"""Code benchmarks: HumanEval, HumanEval+, MBPP (sanitized), MBPP+, LeetCode, LiveCodeBench."""

from __future__ import annotations

import base64
import io
import json
import pickle
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from emreason.evals import code as grading
from emreason.evals.data import load_from_hub, read_records, require_data_file, sha256_of, sha256_of_records
from emreason.evals.evalplus import shared_times
from emreason.evals.tasks.base import CODE_INSTRUCTION, Graded, LoadedData, Problem, Task


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{CODE_INSTRUCTION}\n\n{text}"}]


class CodeTask(Task):
    """Shared loading and parallel sandboxed grading; subclasses define prompts and the checker."""

    kind = "code"
    local_file = ""
    hub: tuple[str, str | None, str] = ("", None, "test")

    def _records(self, data_path: str | Path | None, hub: bool) -> tuple[list[dict], str, str]:
        if hub:
            dataset, config, split = self.hub
            records = load_from_hub(dataset, split, config)
            return records, f"hub:{dataset}", sha256_of_records(records)
        path = Path(data_path) if data_path else require_data_file(self.local_file)
        return read_records(path), str(path), sha256_of(path)

    def to_problem(self, record: dict) -> Problem:
        raise NotImplementedError

    def check(self, problem: Problem, code: str) -> grading.CodeVerdict:
        raise NotImplementedError

    def load(self, data_path: str | Path | None = None, hub: bool = False) -> LoadedData:
        records, source, digest = self._records(data_path, hub)
        return LoadedData([self.to_problem(r) for r in records], source, digest)

    def prepare(self, problems: Sequence[Problem], *, workers: int) -> None:
        """Work needed once before grading ``problems`` (EvalPlus tasks: reference times)."""

    def grade(self, items: Sequence[tuple[Problem, str]], *, workers: int = 4) -> list[Graded]:
        self.prepare([problem for problem, _ in items], workers=workers)

        def one(item: tuple[Problem, str]) -> Graded:
            problem, completion = item
            code = grading.extract_code(completion)
            verdict = self.check(problem, code)
            return Graded(verdict.passed, code, {"status": verdict.status, **verdict.details})

        # Sandbox runs mostly wait on a child process: a few more threads than cores keeps them busy.
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            return list(pool.map(one, items))


class HumanEvalTask(CodeTask):
    name = "humaneval"
    local_file = "humaneval/HumanEval.jsonl.gz"
    hub = ("openai/openai_humaneval", None, "test")

    def to_problem(self, record: dict) -> Problem:
        prompt = f"Complete the following Python function.\n```python\n{record['prompt']}\n```"
        return Problem(record["task_id"], _user(prompt), record)

    def check(self, problem: Problem, code: str) -> grading.CodeVerdict:
        return grading.check_humaneval(problem.gold, code)


class _EvalPlusMixin:
    """Per-input time limits need the reference's times: measured once per machine, then cached."""

    humaneval_style = True

    def prepare(self, problems: Sequence[Problem], *, workers: int) -> None:
        self._ref_times = shared_times().ensure(
            [p.gold for p in problems], humaneval_style=self.humaneval_style, workers=workers
        )

    def check(self, problem: Problem, code: str) -> grading.CodeVerdict:
        times = getattr(self, "_ref_times", {}).get(problem.gold["task_id"])
        return grading.check_evalplus(
            problem.gold, code, humaneval_style=self.humaneval_style, ref_times=times
        )


class HumanEvalPlusTask(_EvalPlusMixin, HumanEvalTask):
    name = "humaneval_plus"
    local_file = "humanevalplus/HumanEvalPlus.jsonl.gz"
    hub = ("evalplus/humanevalplus", None, "test")

    def extra_metrics(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return _base_score(records)


def _base_score(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """pass@1 on the original (base) tests only, next to the main plus score."""
    if not records:
        return {}
    base = [bool(r.get("details", {}).get("base")) for r in records]
    return {"base_pass@1": sum(base) / len(base)}


class MbppPlusTask(_EvalPlusMixin, CodeTask):
    name = "mbpp_plus"
    local_file = "mbppplus/MbppPlus.jsonl.gz"
    hub = ("evalplus/mbppplus", None, "test")
    humaneval_style = False

    def to_problem(self, record: dict) -> Problem:
        text = record["prompt"].strip().strip('"').strip()
        return Problem(record["task_id"], _user(text), record)

    def extra_metrics(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return _base_score(records)


class MbppTask(CodeTask):
    name = "mbpp"
    local_file = "mbpp/new_mbpp.json"
    hub = ("google-research-datasets/mbpp", "sanitized", "test")

    def to_problem(self, record: dict) -> Problem:
        tests = "\n".join(record["test_list"])
        text = f"{record['prompt']}\nYour code should pass these tests:\n{tests}"
        return Problem(f"mbpp-{record['task_id']}", _user(text), record)

    def check(self, problem: Problem, code: str) -> grading.CodeVerdict:
        return grading.check_mbpp(problem.gold, code)


class LeetCodeTask(CodeTask):
    name = "leetcode"
    local_file = "leetcode/leetcode-test.json"
    group_keys = ("difficulty",)

    def to_problem(self, record: dict) -> Problem:
        return Problem(
            record["task_id"],
            _user(record["prompt_sft"]),
            {"test": record["test"]},
            {"difficulty": record.get("meta", {}).get("difficulty")},
        )

    def load(self, data_path: str | Path | None = None, hub: bool = False) -> LoadedData:
        if hub:
            raise ValueError("leetcode: no hub copy is known; pass --data-path to leetcode-test.json")
        return super().load(data_path, hub)

    def check(self, problem: Problem, code: str) -> grading.CodeVerdict:
        return grading.check_leetcode(problem.gold, code)


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Refuses every class/function reference: LiveCodeBench's payload is a pickled ``str``."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a test-case pickle")


def decode_private_tests(value: Any, *, trust_pickle: bool) -> list[dict]:
    """LiveCodeBench private tests: plain JSON, or base64(zlib(pickle(json str))) when trusted.

    The pickled form is only opened with ``trust_pickle`` (a local file the user vouches for), and even
    then through an unpickler that cannot import anything.
    """
    if isinstance(value, list):
        return value
    if not value:
        return []
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        pass
    if not trust_pickle:
        raise ValueError(
            "livecodebench private tests are pickled; pass --trust-lcb-pickle (local file only) "
            "to decode them, or use --lcb-public-only"
        )
    raw = zlib.decompress(base64.b64decode(value))
    decoded = _NoGlobalsUnpickler(io.BytesIO(raw)).load()
    return json.loads(decoded) if isinstance(decoded, str) else decoded


class LiveCodeBenchTask(CodeTask):
    name = "livecodebench"
    hub = ("livecodebench/code_generation_lite", None, "test")
    group_keys = ("difficulty",)

    def __init__(self, trust_pickle: bool = False, public_only: bool = False) -> None:
        self.trust_pickle = trust_pickle
        self.public_only = public_only

    def load(self, data_path: str | Path | None = None, hub: bool = False) -> LoadedData:
        if data_path is None and not hub:
            raise ValueError("livecodebench has no offline copy: pass --data-path FILE.jsonl or --hub")
        if hub and self.trust_pickle:
            raise ValueError("--trust-lcb-pickle is only accepted with a local --data-path file")
        return super().load(data_path, hub)

    def to_problem(self, record: dict) -> Problem:
        public = decode_private_tests(record.get("public_test_cases"), trust_pickle=False)
        private = (
            []
            if self.public_only
            else decode_private_tests(record.get("private_test_cases"), trust_pickle=self.trust_pickle)
        )
        metadata = record.get("metadata") or {}
        if isinstance(metadata, str):
            metadata = json.loads(metadata) if metadata.strip() else {}
        starter = record.get("starter_code") or ""
        text = record["question_content"]
        if starter:
            text += f"\n\nUse this starter code:\n```python\n{starter}\n```"
        else:
            text += "\n\nRead the input from standard input and write the answer to standard output."
        gold = {"tests": public + private, "func_name": metadata.get("func_name")}
        return Problem(
            str(record["question_id"]), _user(text), gold, {"difficulty": record.get("difficulty")}
        )

    def check(self, problem: Problem, code: str) -> grading.CodeVerdict:
        tests, func_name = problem.gold["tests"], problem.gold["func_name"]
        if func_name and all(t.get("testtype", "functional") == "functional" for t in tests):
            return grading.check_functional(tests, func_name, code)
        return grading.check_stdio(tests, code)


CODE_TASKS: dict[str, Callable[[], Task]] = {
    "humaneval": HumanEvalTask,
    "humaneval_plus": HumanEvalPlusTask,
    "mbpp": MbppTask,
    "mbpp_plus": MbppPlusTask,
    "leetcode": LeetCodeTask,
    "livecodebench": LiveCodeBenchTask,
}
