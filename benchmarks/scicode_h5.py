"""SciCode: the official-h5 grading path agrees with the regenerated-target path on the dev split.

Writes the dev split's regenerated targets into a ``test_data.h5`` in the official layout
(:func:`emreason.evals.tasks.scicode_h5.write_h5_targets`), then grades every dev step twice — targets
from that h5 file (``--scicode-h5``) and from the regenerated JSON — with two candidates per step: the
gold code, and the gold code with its return value perturbed (floats x1.01 + 0.01, ints + 1). Prints
one JSON object: verdicts per path and every step where the two paths disagree.

Run: ``OMP_NUM_THREADS=1 python benchmarks/scicode_h5.py [--workers 2]`` (regenerates the dev targets
first when ``$EMREASON_CACHE_DIR/scicode_dev_targets.json.gz`` is missing; minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import tempfile
import time
from pathlib import Path

PERTURB = """
def _emreason_perturb(value):
    import numpy as _np
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, (float, complex)):
        return value * 1.01 + 0.01
    if isinstance(value, _np.ndarray) and value.dtype.kind in "iuf":
        return value * 1.01 + 0.01 if value.dtype.kind == "f" else value + 1
    if isinstance(value, (list, tuple)):
        return type(value)(_emreason_perturb(v) for v in value)
    return value
_emreason_original = {name}
def {name}(*args, **kwargs):
    return _emreason_perturb(_emreason_original(*args, **kwargs))
"""


def perturbed(gold: str, header: str) -> str:
    """Gold code whose function returns a slightly wrong value (class headers are left unchanged)."""
    match = re.match(r"\s*def\s+(\w+)", header)
    return gold if match is None else gold + "\n" + PERTURB.format(name=match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from emreason.evals.data import require_data_file
    from emreason.evals.tasks.scicode import DEV_TARGETS, SciCodeTask, codec, regenerate_dev_targets
    from emreason.evals.tasks.scicode_h5 import write_h5_targets

    source = require_data_file("scicode/problems_dev.jsonl")
    started = time.perf_counter()
    if not DEV_TARGETS.is_file():
        regenerate_dev_targets(source)
    with gzip.open(DEV_TARGETS, "rt", encoding="utf-8") as stream:
        encoded = json.load(stream)["targets"]
    decode = codec()["_dec"]
    values = {step: [decode(v) for v in tests] for step, tests in encoded.items()}
    out: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        h5_path = write_h5_targets(values, Path(folder) / "test_data.h5")
        out["h5_bytes"] = h5_path.stat().st_size
        paths = {"regenerated": SciCodeTask("dev"), "h5": SciCodeTask("dev", h5_path=str(h5_path))}
        verdicts: dict[str, dict[str, list[bool]]] = {}
        for label, task in paths.items():
            problems = task.load(source).problems
            items, histories, history = [], [], {}
            for problem in problems:
                step = task._steps[problem.id]
                gold = step["ground_truth_code"]
                histories.append(dict(history))
                items.append((problem, f"```python\n{gold}\n```"))
                history[problem.id] = f"```python\n{gold}\n```"
            wrong = []
            for problem, _ in items:
                step = task._steps[problem.id]
                code = perturbed(step["ground_truth_code"], step["function_header"])
                wrong.append((problem, f"```python\n{code}\n```"))
            scored = [i for i, (p, _) in enumerate(items) if p.meta["scored"]]
            gold_v = task.grade(
                [items[i] for i in scored], workers=args.workers, histories=[histories[i] for i in scored]
            )
            wrong_v = task.grade(
                [wrong[i] for i in scored], workers=args.workers, histories=[histories[i] for i in scored]
            )
            verdicts[label] = {
                items[i][0].id: [g.correct, w.correct] for i, g, w in zip(scored, gold_v, wrong_v)
            }
    regenerated, h5 = verdicts["regenerated"], verdicts["h5"]
    out["steps"] = len(regenerated)
    out["gold_pass"] = {k: sum(v[0] for v in d.values()) for k, d in verdicts.items()}
    out["perturbed_pass"] = {k: sum(v[1] for v in d.values()) for k, d in verdicts.items()}
    out["gold_failing_steps"] = sorted(s for s, v in regenerated.items() if not v[0])
    out["perturbed_passing_steps"] = sorted(s for s, v in regenerated.items() if v[1])
    out["agree"] = sum(regenerated[s] == h5.get(s) for s in regenerated)
    out["disagreements"] = {
        s: {"regenerated": regenerated[s], "h5": h5.get(s)}
        for s in regenerated
        if regenerated[s] != h5.get(s)
    }
    out["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
