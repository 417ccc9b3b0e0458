"""The evaluation loop: generate, grade, append to ``samples.jsonl``, summarise into ``metrics.json``.

Layout of an output folder::

    OUT/metrics.json                 all tasks' summaries (rewritten atomically after each task)
    OUT/<task>/samples.jsonl         one line per problem x sample (sharded: ``samples.shard-I-of-N.jsonl``)
    OUT/<task>/metrics.json          scores with 95% bootstrap CIs, sub-scores, config, data sha256

Runs resume: finished ``(id, sample)`` pairs found in any sample file of the task folder are skipped, and
a partial last line left by a crash is ignored. A resume must render the same prompts: samples made with
another prompt format or system prompt (each record keeps both) are refused with an error. Shards write
separate sample files, so several processes (one per GPU) can share one output folder; each shard's
``metrics.json`` covers every sample file present.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emreason.evals.metrics import summarize, summarize_majority
from emreason.evals.prompts import PromptFormat
from emreason.evals.tasks import Problem, Task, get_task
from tqdm import tqdm

from emreason.atomic_io import write_json_atomic

CHUNK = 64  # conversations per generate/grade/write round: the most a crash can lose


def read_samples(task_dir: Path) -> list[dict[str, Any]]:
    """Every complete record in ``task_dir/samples*.jsonl``; a torn final line is skipped."""
    records = []
    for path in sorted(task_dir.glob("samples*.jsonl")):
        with open(path, encoding="utf-8") as stream:
            for line in stream:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and "id" in record and "sample" in record:
                    records.append(record)
    return records


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"--shard needs 0 <= I < N, got {text!r}")
    return index, count


def select_problems(problems: list[Problem], limit: int | None, shard: tuple[int, int]) -> tuple[list, list]:
    """(problems of this run after ``limit``, the subset this shard generates); chains stay whole."""
    groups: dict[str, list[Problem]] = {}
    order: list[str] = []
    for problem in problems:
        root = str(problem.meta.get("problem", problem.id))  # SciCode: steps of one main problem
        if root not in groups:
            groups[root] = []
            order.append(root)
        groups[root].append(problem)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        order = order[:limit]
    selected = [p for root in order for p in groups[root]]
    index, count = shard
    mine = [p for position, root in enumerate(order) if position % count == index for p in groups[root]]
    return selected, mine


def _append(path: Path, records: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as stream:
        stream.seek(0, os.SEEK_END)
        if stream.tell() > 0:
            stream.seek(-1, os.SEEK_END)
            if stream.read(1) != b"\n":
                stream.write(b"\n")  # a crash left a torn line: start cleanly after it
        stream.write("".join(json.dumps(r, default=str) + "\n" for r in records).encode())
        stream.flush()
        os.fsync(stream.fileno())


def check_prompt_format(
    task_dir: Path, records: Sequence[dict[str, Any]], prompt_format: PromptFormat
) -> None:
    """Refuse to resume into ``task_dir`` when its samples were prompted differently (records written
    before prompt formats existed are ``chat`` with each task's own system prompt)."""
    wanted = prompt_format.describe()
    for record in records:
        found = {key: record.get(key, PromptFormat().describe()[key]) for key in wanted}
        if found != wanted:
            raise ValueError(
                f"{task_dir} holds samples made with --prompt-format {found['prompt_format']} and system "
                f"prompt {found['system_prompt']!r} (None: the task's own), but this run uses "
                f"--prompt-format {wanted['prompt_format']} and {wanted['system_prompt']!r}; resuming would "
                "mix prompts: use another --output folder or the same prompt settings"
            )


def task_metrics(
    task: Task, problems: list[Problem], records: list[dict[str, Any]], n_samples: int
) -> dict[str, Any]:
    """Scores over the selected problems (scored ones only) from whatever samples exist."""
    wanted = {p.id: p for p in problems if p.meta.get("scored", True)}
    latest: dict[tuple[str, int], dict] = {}
    for record in records:
        if record["id"] in wanted and record["sample"] < n_samples:
            latest[(record["id"], record["sample"])] = record
    by_problem: dict[str, list[bool]] = defaultdict(list)
    voted: dict[str, list[tuple[str | None, bool]]] = defaultdict(list)
    for (problem_id, _), record in sorted(latest.items()):
        by_problem[problem_id].append(bool(record["correct"]))
        voted[problem_id].append((record.get("extracted"), bool(record["correct"])))
    scores = summarize(dict(by_problem))
    equivalence = task.answer_equivalence()
    if equivalence is not None:
        scores.update(summarize_majority(dict(voted), equivalence))
    subscores: dict[str, dict[str, Any]] = {}
    for key in task.group_keys:
        groups: dict[str, list[float]] = defaultdict(list)
        for problem_id, verdicts in by_problem.items():
            groups[str(wanted[problem_id].meta.get(key))].append(sum(verdicts) / len(verdicts))
        subscores[key] = {g: {"pass@1": sum(v) / len(v), "n": len(v)} for g, v in sorted(groups.items())}
    complete = sum(1 for v in by_problem.values() if len(v) >= n_samples)
    all_records = [latest[k] for k in sorted(latest)]
    return {
        "task": task.name,
        "n_problems": len(wanted),
        "n_problems_complete": complete,
        "complete": complete == len(wanted),
        "n_samples": n_samples,
        "scores": scores,
        "subscores": subscores,
        "extra": task.extra_metrics(all_records),
    }


def run_task(
    task: Task,
    backend: Any,
    output: Path,
    *,
    n_samples: int = 1,
    limit: int | None = None,
    shard: tuple[int, int] = (0, 1),
    data_path: str | None = None,
    hub: bool = False,
    workers: int = 2,
    run_config: dict[str, Any] | None = None,
    progress: bool = True,
    prompt_format: PromptFormat | None = None,
) -> dict[str, Any]:
    """Evaluate one task into ``output/<task>/``; returns its metrics dict.

    ``prompt_format``: how messages reach the backend (default ``chat`` with the task's system prompt).
    """
    prompt_format = prompt_format or PromptFormat()
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    data = task.load(data_path, hub)
    problems, mine = select_problems(data.problems, limit, shard)
    task_dir = output / task.name
    index, count = shard
    sample_file = task_dir / ("samples.jsonl" if count == 1 else f"samples.shard-{index}-of-{count}.jsonl")
    existing = read_samples(task_dir)
    check_prompt_format(task_dir, existing, prompt_format)
    done = {(r["id"], r["sample"]) for r in existing}
    history: dict[int, dict[str, str]] = defaultdict(dict)
    for record in existing:
        history[record["sample"]][record["id"]] = record["completion"]
    pending = [(p, k) for p in mine for k in range(n_samples) if (p.id, k) not in done]
    bar = tqdm(total=len(pending), desc=task.name, unit="sample", disable=not progress)
    backend_name = getattr(backend, "name", type(backend).__name__)
    while pending:
        ready = [(p, k) for p, k in pending if p.depends_on is None or (p.depends_on, k) in done]
        if not ready:
            raise RuntimeError(
                f"{task.name}: unsatisfiable dependencies among {len(pending)} pending samples"
            )
        for start in range(0, len(ready), CHUNK):
            chunk = ready[start : start + CHUNK]
            # Samples of one problem with the same history share one request (n > 1 in the backend).
            requests: dict[tuple[str, bool], list[tuple[Problem, int]]] = defaultdict(list)
            for problem, k in chunk:
                key = (problem.id, problem.depends_on is None)
                requests[key if key[1] else (f"{problem.id}#{k}", False)].append((problem, k))
            groups = list(requests.values())
            conversations = [prompt_format.apply(task.render(g[0][0], history[g[0][1]])) for g in groups]
            began = time.monotonic()
            by_count: dict[int, list[int]] = defaultdict(list)
            for position, group in enumerate(groups):
                by_count[len(group)].append(position)
            completions: list[list[str]] = [[] for _ in groups]
            for n, positions in by_count.items():
                outputs = backend.generate([conversations[i] for i in positions], n=n)
                for position, texts in zip(positions, outputs):
                    completions[position] = texts
            gen_time = (time.monotonic() - began) / max(1, len(chunk))
            items, histories, prompts = [], [], []
            for group, texts, conversation in zip(groups, completions, conversations):
                for (problem, k), text in zip(group, texts):
                    items.append((problem, text))
                    histories.append(dict(history[k]))
                    prompts.append(conversation)
            began = time.monotonic()
            if task.kind == "scicode":
                verdicts = task.grade(items, workers=workers, histories=histories)
            else:
                verdicts = task.grade(items, workers=workers)
            grade_time = (time.monotonic() - began) / max(1, len(items))
            records = []
            for (problem, text), verdict, prompt, (_, k) in zip(
                items, verdicts, prompts, [(p, k) for g in groups for p, k in g]
            ):
                records.append(
                    {
                        "task": task.name,
                        "id": problem.id,
                        "sample": k,
                        "prompt": prompt,
                        **prompt_format.describe(),
                        "completion": text,
                        "extracted": verdict.extracted,
                        "correct": bool(verdict.correct),
                        "gold": problem.gold if task.kind in ("math", "toy") else None,
                        "details": verdict.details,
                        "meta": problem.meta,
                        "timing": {"generate_s": round(gen_time, 4), "grade_s": round(grade_time, 4)},
                        "backend": backend_name,
                        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    }
                )
                done.add((problem.id, k))
                history[k][problem.id] = text
            _append(sample_file, records)
            bar.update(len(records))
        pending = [(p, k) for p, k in pending if (p.id, k) not in done]
    bar.close()
    metrics = task_metrics(task, problems, read_samples(task_dir), n_samples)
    metrics["config"] = dict(
        run_config or {}, shard=f"{index}/{count}", limit=limit, **prompt_format.describe()
    )
    metrics["data"] = {"source": data.source, "sha256": data.sha256}
    write_json_atomic(task_dir / "metrics.json", metrics, sort_keys=True)
    return metrics


def run_eval(
    task_names: Sequence[str],
    backend: Any,
    output: str | os.PathLike,
    *,
    task_options: dict | None = None,
    **kwargs,
) -> dict[str, Any]:
    """Run several tasks into one folder and write the combined ``metrics.json``."""
    output = Path(output)
    tasks = [get_task(name, **(task_options or {})) for name in task_names]
    summary_path = output / "metrics.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {"tasks": {}}
    for task in tasks:
        summary["tasks"][task.name] = run_task(task, backend, output, **kwargs)
        write_json_atomic(summary_path, summary, sort_keys=True)
    return summary
