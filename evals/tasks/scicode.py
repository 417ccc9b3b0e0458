"""SciCode: multi-step scientific coding problems, graded step by step in the sandbox.

Each sub-step is one generation; its prompt includes the model's own code for the earlier steps of the
same problem (as in the official harness), so steps are generated in dependency order. Scores: sub-step
pass rate and main-problem pass rate (every tested step of the problem passes).

Targets. Test cases compare against a variable ``target``. The official targets live in ``test_data.h5``
(pass it with ``--scicode-h5``; needs ``h5py``; read as the official ``process_hdf5_to_tuple`` does, see
:mod:`emreason.evals.tasks.scicode_h5`). For the dev split the targets are regenerated here by
running the gold code on the test inputs (:func:`regenerate_dev_targets`) and stored as JSON
(``scicode_dev_targets.json.gz`` in the cache folder), never as pickle.
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from emreason.evals.code import extract_code, run_with_nonce
from emreason.evals.data import read_records, require_data_file, sha256_of
from emreason.evals.tasks.base import Graded, LoadedData, Problem, Task

from emreason.atomic_io import write_json_atomic


def _default_dev_targets() -> Path:
    cache = os.environ.get("EMREASON_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "emreason"
    )
    return Path(cache) / "scicode_dev_targets.json.gz"


DEV_TARGETS = _default_dev_targets()
BROKEN = "__broken_test__"

# JSON encoding of test values (arrays, complex numbers, tuples, non-finite floats), used inside the sandbox.
CODEC_SOURCE = r"""
import base64 as _b64, json as _json, math as _math
import numpy as _np
def _enc(v):
    if type(v).__module__.startswith("scipy.sparse"):
        return {"__sparse__": v.format, "dense": _enc(v.toarray())}
    if isinstance(v, _np.ndarray) and v.dtype.kind in "biufc":
        raw = _np.ascontiguousarray(v, dtype=v.dtype.newbyteorder("<")).tobytes()
        return {"__ndb__": _b64.b64encode(raw).decode(), "dtype": v.dtype.newbyteorder("<").str,
                "shape": list(v.shape)}
    if isinstance(v, _np.ndarray):
        return {"__nd__": _enc(v.tolist()), "dtype": str(v.dtype), "shape": list(v.shape)}
    if isinstance(v, _np.generic):
        return _enc(v.item())
    if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
        return v
    if isinstance(v, float):
        return v if _math.isfinite(v) else {"__float__": repr(v)}
    if isinstance(v, complex):
        return {"__complex__": [_enc(v.real), _enc(v.imag)]}
    if isinstance(v, tuple):
        return {"__tuple__": [_enc(x) for x in v]}
    if isinstance(v, list):
        return [_enc(x) for x in v]
    if isinstance(v, dict):
        return {"__dict__": [[_enc(k), _enc(x)] for k, x in v.items()]}
    if isinstance(v, (set, frozenset)):
        return {"__set__": [_enc(x) for x in v]}
    raise TypeError(f"cannot encode {type(v).__name__}")
def _dec(v):
    if isinstance(v, list):
        return [_dec(x) for x in v]
    if isinstance(v, dict):
        if "__sparse__" in v:
            import scipy.sparse as _sparse
            return _sparse.csr_matrix(_dec(v["dense"])).asformat(v["__sparse__"])
        if "__ndb__" in v:
            raw = _b64.b64decode(v["__ndb__"])
            return _np.frombuffer(raw, dtype=_np.dtype(v["dtype"])).reshape(v["shape"]).copy()
        if "__nd__" in v:
            data = _dec(v["__nd__"])
            return _np.array(data, dtype=v["dtype"]).reshape(v["shape"])
        if "__float__" in v:
            return float(v["__float__"])
        if "__complex__" in v:
            return complex(*_dec(v["__complex__"]))
        if "__tuple__" in v:
            return tuple(_dec(x) for x in v["__tuple__"])
        if "__set__" in v:
            return set(_dec(x) for x in v["__set__"])
        if "__dict__" in v:
            return {_dec(k): _dec(x) for k, x in v["__dict__"]}
    return v
"""

# Comparison helpers that SciCode's test cases call by name.
HELPERS_SOURCE = r"""
import numpy as _np_h
def cmp_tuple_or_list(a, b):
    if len(a) != len(b):
        return False
    return all(_np_h.allclose(x, y) if not isinstance(x, (tuple, list)) else cmp_tuple_or_list(x, y)
               for x, y in zip(a, b))
def are_dicts_close(a, b, rtol=1e-05, atol=1e-08):
    if set(a) != set(b):
        return False
    return all(_np_h.allclose(a[k], b[k], rtol=rtol, atol=atol) for k in a)
def are_equivalent(a, b):
    # Same set of rows regardless of order.
    a, b = _np_h.asarray(a), _np_h.asarray(b)
    if a.shape != b.shape:
        return False
    key = lambda m: m[_np_h.lexsort(m.reshape(len(m), -1).T[::-1])] if m.ndim > 1 else _np_h.sort(m)
    return bool(_np_h.allclose(key(a.round(8)), key(b.round(8))))
"""


def _target_key(node: ast.AST) -> int | None | bool:
    """None for ``target``, i for ``target[i]``, False for anything else."""
    if isinstance(node, ast.Name) and node.id == "target":
        return None
    if (
        isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Name)
        and node.value.id == "target"
        and isinstance(node.slice, ast.Constant)
        and isinstance(node.slice.value, int)
    ):
        return node.slice.value
    return False


_SCICODE_IMPORT = re.compile(r"^\s*from scicode\S* import .*$", re.MULTILINE)


def strip_scicode_imports(test_code: str) -> str:
    """Test cases import comparison helpers from the ``scicode`` package; ours are defined in-program."""
    return _SCICODE_IMPORT.sub("", test_code)


def recording_test(test_code: str) -> str:
    """Rewrite a test case so that, instead of asserting against ``target``, it records the value.

    ``assert np.allclose(EXPR, target)`` / ``assert EXPR == target`` / ``f(EXPR, target[0]) and ...``
    become ``_record(key, EXPR)``; other statements are kept.
    """
    module = ast.parse(strip_scicode_imports(test_code))
    body: list[ast.stmt] = []
    for statement in module.body:
        if not (isinstance(statement, ast.Assert) and "target" in ast.unparse(statement.test)):
            body.append(statement)
            continue
        records = []
        for node in ast.walk(statement.test):
            pairs: list[tuple[ast.AST, ast.AST]] = []
            if isinstance(node, ast.Call) and len(node.args) >= 2:
                pairs = [(node.args[1], node.args[0]), (node.args[0], node.args[1])]
            elif isinstance(node, ast.Compare) and len(node.comparators) == 1:
                pairs = [(node.comparators[0], node.left), (node.left, node.comparators[0])]
            for maybe_target, expression in pairs:
                key = _target_key(maybe_target)
                if key is not False and "target" not in ast.unparse(expression):
                    records.append((key, expression))
                    break
        if not records:
            raise ValueError(f"cannot find the value compared with target in: {ast.unparse(statement)}")
        for key, expression in records:
            call = ast.parse(f"_record({key!r}, None)").body[0]
            call.value.args[1] = expression
            body.append(call)
    module.body = body
    return ast.unparse(ast.fix_missing_locations(module))


def _step_program(dependencies: str, previous_code: Sequence[str], code: str) -> str:
    return "\n\n".join([dependencies, HELPERS_SOURCE, *previous_code, code])


# SciCode's eval/scripts/test_generated_code.py runs all test cases of a step in one script, in order
# (state such as np.random.seed carries over from one case to the next), with a 1800 s timeout.
STEP_TIMEOUT_S = 1800.0


def _file_mb(program: str) -> int:
    """File-size limit for a step program: its inline targets can be tens of MB (dev 7.1: 41 MB), and
    the sandbox's private /tmp (twice this) must hold the program itself."""
    return 16 + len(program.encode()) // (1 << 20)


def regenerate_dev_targets(problems_path: str | Path, out_path: str | Path = DEV_TARGETS) -> dict:
    """Run the dev split's gold code on each step's test inputs and store the results as gzipped JSON.

    One sandboxed program per step runs its test cases in order, as the official harness does (dev 47.4
    seeds the random generator only in its first case). Arrays are stored as base64 of their
    little-endian bytes; several targets are multi-megabyte arrays, which is why this lives in a cache
    folder (``$EMREASON_CACHE_DIR`` or ``~/.cache/emreason``), not in the package. Written atomically.
    """
    jobs = []
    for record in read_records(problems_path):
        gold_so_far: list[str] = []
        for step in record["sub_steps"]:
            if step["test_cases"]:
                program = _step_program(
                    record["required_dependencies"], gold_so_far, step["ground_truth_code"]
                )
                program += "\n" + CODEC_SOURCE + "\n_results = []\n"
                for test in step["test_cases"]:
                    source = "_recorded = {}\ndef _record(key, value):\n    _recorded[key] = value\n"
                    source += recording_test(test)
                    source += (
                        "\n_value = _recorded[None] if None in _recorded else "
                        "tuple(_recorded[i] for i in sorted(_recorded))\n"
                    )
                    # A case the gold code cannot run (dev 10.x case 4 uses an undefined ``L``) cannot
                    # grade anyone: it is marked and left out when grading; the next case still runs.
                    program += (
                        f"try:\n    exec(compile({source!r}, 'test', 'exec'), globals())\n"
                        "    _results.append(_enc(_value))\n"
                        "except Exception as _error:\n"
                        f"    _results.append({{{BROKEN!r}: f'{{type(_error).__name__}}: {{_error}}'}})\n"
                    )
                program += "print(_json.dumps(_results))\n"
                jobs.append((step["step_number"], len(step["test_cases"]), program))
            gold_so_far.append(step["ground_truth_code"])

    def run(job: tuple[str, int, str]) -> tuple[str, list]:
        step_id, count, program = job
        finished, result = run_with_nonce(
            program,
            timeout=STEP_TIMEOUT_S,
            memory_mb=4096,
            max_output_bytes=64 << 20,
            file_mb=_file_mb(program),
        )
        if not finished:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            return step_id, [{BROKEN: f"step program failed: {last}"}] * count
        return step_id, json.loads(result.stdout.strip().splitlines()[-2])

    with ThreadPoolExecutor(max_workers=4) as pool:
        targets = dict(pool.map(run, jobs))
    write_json_atomic(
        out_path,
        {"source_sha256": sha256_of(problems_path), "targets": targets},
        indent=None,
        opener=gzip.open,
    )
    return targets


def codec() -> dict[str, Any]:
    """The sandbox's ``_enc``/``_dec`` (from :data:`CODEC_SOURCE`), for use in the harness process."""
    namespace: dict[str, Any] = {}
    exec(compile(CODEC_SOURCE, "scicode_codec", "exec"), namespace)
    return namespace


def load_h5_targets(path: str | Path, tests_per_step: dict[str, int]) -> dict[str, list]:
    """Targets from SciCode's official ``test_data.h5`` in the codec's JSON form (see
    :mod:`emreason.evals.tasks.scicode_h5` for the layout and its errors)."""
    from emreason.evals.tasks.scicode_h5 import read_h5_targets

    encode = codec()["_enc"]
    values = read_h5_targets(path, tests_per_step)
    return {
        step: [v if isinstance(v, dict) and BROKEN in v else encode(v) for v in tests]
        for step, tests in values.items()
    }


class SciCodeTask(Task):
    kind = "scicode"
    max_new_tokens = 4096

    def __init__(
        self,
        split: str = "test",
        with_background: bool = False,
        h5_path: str | None = None,
        step_timeout: float = STEP_TIMEOUT_S,
    ) -> None:
        if split not in ("test", "dev"):
            raise ValueError(f"scicode split must be 'test' or 'dev', got {split!r}")
        self.split = split
        self.with_background = with_background
        self.h5_path = h5_path
        self.step_timeout = step_timeout
        self.name = "scicode" if split == "test" else "scicode_dev"
        if with_background:
            self.name += "_bg"
        self._steps: dict[str, dict] = {}
        self._records: dict[str, dict] = {}
        self._fixed_code: dict[str, str] = {}
        self._targets: dict[str, list] | None = None
        self._template = ""

    def load(self, data_path: str | Path | None = None, hub: bool = False) -> LoadedData:
        if hub:
            raise ValueError("scicode: use the local problems_*.jsonl (pass --data-path)")
        filename = "scicode/problems_all.jsonl" if self.split == "test" else "scicode/problems_dev.jsonl"
        path = Path(data_path) if data_path else require_data_file(filename)
        template_name = (
            "background_comment_template.txt" if self.with_background else "multistep_template.txt"
        )
        self._template = (path.parent / template_name).read_text()
        problems = []
        for record in read_records(path):
            self._records[record["problem_id"]] = record
            previous = None
            for step in record["sub_steps"]:
                step_id = step["step_number"]
                self._steps[step_id] = step
                special = path.parent / "special_steps" / f"{step_id}.txt"
                tested = bool(step.get("test_cases"))
                if not tested and special.is_file():
                    self._fixed_code[step_id] = special.read_text()
                meta = {"problem": record["problem_id"], "scored": tested}
                problems.append(Problem(step_id, None, {"step": step_id}, meta, depends_on=previous))
                previous = step_id
        return LoadedData(problems, str(path), sha256_of(path))

    def _step_text(self, step: dict, header: bool) -> str:
        text = step["step_description_prompt"]
        if self.with_background and step.get("step_background"):
            text += "\n" + step["step_background"]
        if header:
            text += "\n\n" + step["function_header"] + "\n\n" + step.get("return_line", "")
        return text

    def _previous_code(self, step_id: str, history: dict[str, str]) -> list[str]:
        record = self._records[step_id.split(".")[0]]
        code = []
        for step in record["sub_steps"]:
            if step["step_number"] == step_id:
                break
            other = step["step_number"]
            code.append(self._fixed_code.get(other) or extract_code(history.get(other, "")))
        return code

    def render(self, problem: Problem, history: dict[str, str]) -> list[dict[str, str]]:
        record = self._records[problem.meta["problem"]]
        previous_steps = []
        for step, code in zip(record["sub_steps"], self._previous_code(problem.id, history)):
            previous_steps.append(self._step_text(step, header=False) + "\n\n" + code)
        prompt = self._template.format(
            problem_steps_str="\n\n---\n\n".join(previous_steps),
            next_step_str=self._step_text(self._steps[problem.id], header=True),
            dependencies=record["required_dependencies"],
        )
        return [{"role": "user", "content": prompt}]

    def targets(self) -> dict[str, list]:
        if self._targets is None:
            if self.h5_path:
                counts = {
                    sid: len(st["test_cases"]) for sid, st in self._steps.items() if st.get("test_cases")
                }
                self._targets = load_h5_targets(self.h5_path, counts)
            elif self.split == "dev":
                if not DEV_TARGETS.is_file():
                    raise FileNotFoundError(
                        f"{DEV_TARGETS} missing: run `python -m emreason.evals.tasks.scicode` first"
                    )
                with gzip.open(DEV_TARGETS, "rt", encoding="utf-8") as stream:
                    self._targets = json.load(stream)["targets"]
            else:
                raise ValueError(
                    "grading the SciCode test split needs the official test_data.h5 (--scicode-h5)"
                )
        return self._targets

    def step_program(self, step_id: str, code: str, previous_code: Sequence[str]) -> str:
        """The official per-step script: code, then each usable test case after ``target = ...``."""
        step = self._steps[step_id]
        record = self._records[step_id.split(".")[0]]
        targets = self.targets()[step_id]
        program = _step_program(record["required_dependencies"], previous_code, code)
        program += "\n" + CODEC_SOURCE + "\n"
        for index, test in enumerate(step["test_cases"]):
            if isinstance(targets[index], dict) and BROKEN in targets[index]:
                continue  # even the gold code cannot run it
            program += f"\ntarget = _dec(_json.loads({json.dumps(targets[index])!r}))\n"
            program += strip_scicode_imports(test) + "\n"
        return program

    def check_step(self, step_id: str, code: str, previous_code: Sequence[str]) -> tuple[bool, str]:
        program = self.step_program(step_id, code, previous_code)
        finished, result = run_with_nonce(
            program, timeout=self.step_timeout, memory_mb=4096, file_mb=_file_mb(program)
        )
        if not finished:
            return False, "timeout" if result.timed_out else "failed"
        return True, "passed"

    def grade(
        self,
        items: Sequence[tuple[Problem, str]],
        *,
        workers: int = 4,
        histories: Sequence[dict[str, str]] | None = None,
    ) -> list[Graded]:
        histories = histories or [{} for _ in items]

        def one(index: int) -> Graded:
            problem, completion = items[index]
            code = self._fixed_code.get(problem.id) or extract_code(completion)
            if not problem.meta["scored"]:
                return Graded(False, code, {"status": "untested step"})
            ok, status = self.check_step(problem.id, code, self._previous_code(problem.id, histories[index]))
            return Graded(ok, code, {"status": status})

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            return list(pool.map(one, range(len(items))))

    def extra_metrics(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Main-problem pass rate: a (problem, sample) passes when every tested step passes."""
        scored = [r for r in records if r.get("meta", {}).get("scored", True)]
        by_problem: dict[tuple[str, int], list[bool]] = defaultdict(list)
        for r in scored:
            by_problem[(r["meta"]["problem"], r["sample"])].append(bool(r["correct"]))
        expected = defaultdict(int)
        for step_id, step in self._steps.items():
            if step.get("test_cases"):
                expected[step_id.split(".")[0]] += 1
        complete = {k: v for k, v in by_problem.items() if len(v) == expected.get(k[0], -1)}
        out: dict[str, Any] = {"substep_pass_rate": sum(r["correct"] for r in scored) / max(1, len(scored))}
        if complete:
            out["main_problem_pass_rate"] = sum(all(v) for v in complete.values()) / len(complete)
            out["main_problems_complete"] = len(complete)
        return out


if __name__ == "__main__":
    from emreason.evals.data import require_data_file

    source = require_data_file("scicode/problems_dev.jsonl")
    found = regenerate_dev_targets(source)
    broken = sum(1 for v in found.values() for x in v if isinstance(x, dict) and BROKEN in x)
    print(f"wrote {DEV_TARGETS}: {sum(len(v) for v in found.values())} test targets, {broken} unusable tests")
