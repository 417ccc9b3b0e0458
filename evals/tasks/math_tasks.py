"""Math benchmarks: MATH-500, AIME, AMC, Minerva Math, OlympiadBench (graded with math-verify)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emreason.evals.data import load_from_hub, read_records, require_data_file, sha256_of, sha256_of_records
from emreason.evals.math import _last_boxed, answers_equivalent, extract_answer, grade_many
from emreason.evals.tasks.base import MATH_SYSTEM_PROMPT, Graded, LoadedData, Problem, Task


def _year(record: dict) -> str:
    found = re.search(r"(20\d\d)", str(record.get("url", "")))
    return found.group(1) if found else "unknown"


@dataclass(frozen=True)
class MathSpec:
    """How to read one math benchmark: file, hub id, and field accessors."""

    name: str
    local_file: str
    hub: tuple[str, str | None, str]  # (dataset id, config, split)
    question: Callable[[dict], str]
    gold: Callable[[dict], str]
    ident: Callable[[dict], str]
    meta: Callable[[dict], dict[str, Any]]
    group_keys: tuple[str, ...] = ()
    keep: Callable[[dict], bool] = lambda record: True


def _question(record: dict) -> str:
    return str(record.get("problem") or record.get("question"))


def _float_answer(record: dict) -> str:
    value = record["answer"]
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _minerva_gold(record: dict) -> str:
    gold = _last_boxed(record["solution"])
    if gold is None:
        raise ValueError(f"minerva record {record.get('idx')} has no \\boxed{{}} in its solution")
    return gold


def _olympiad_question(record: dict) -> str:
    context = record.get("context")
    return f"{context}\n{record['question']}" if context else record["question"]


MATH_SPECS: dict[str, MathSpec] = {
    spec.name: spec
    for spec in [
        MathSpec(
            "math500",
            "math500/test.jsonl",
            ("HuggingFaceH4/MATH-500", None, "test"),
            _question,
            lambda r: str(r["answer"]),
            lambda r: r["unique_id"],
            lambda r: {"subject": r.get("subject"), "level": str(r.get("level"))},
            ("subject", "level"),
        ),
        MathSpec(
            "aime",
            "aimo_aime/aimo-validation-aime.jsonl",
            ("AI-MO/aimo-validation-aime", None, "train"),
            _question,
            _float_answer,
            lambda r: f"aime-{r['id']}",
            lambda r: {"year": _year(r)},
            ("year",),
        ),
        MathSpec(
            "aime24",
            "aimo_aime/aimo-validation-aime.jsonl",
            ("AI-MO/aimo-validation-aime", None, "train"),
            _question,
            _float_answer,
            lambda r: f"aime-{r['id']}",
            lambda r: {"year": _year(r)},
            keep=lambda r: _year(r) == "2024",
        ),
        MathSpec(
            "amc",
            "aimo_amc/aimo-validation-amc.jsonl",
            ("AI-MO/aimo-validation-amc", None, "train"),
            _question,
            _float_answer,
            lambda r: f"amc-{r['id']}",
            lambda r: {"year": _year(r)},
            ("year",),
        ),
        MathSpec(
            "amc23",
            "aimo_amc/aimo-validation-amc.jsonl",
            ("AI-MO/aimo-validation-amc", None, "train"),
            _question,
            _float_answer,
            lambda r: f"amc-{r['id']}",
            lambda r: {"year": _year(r)},
            keep=lambda r: _year(r) == "2023",
        ),
        MathSpec(
            "minerva",
            "minerva_math/test.jsonl",
            ("math-ai/minervamath", None, "test"),
            _question,
            _minerva_gold,
            lambda r: f"minerva-{r['idx']}",
            lambda r: {"course": r.get("type")},
        ),
        MathSpec(
            "olympiadbench",
            "olympiadbench/test.jsonl",
            ("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train"),
            _olympiad_question,
            lambda r: str(r["final_answer"][0]).strip().strip("$").strip(),
            lambda r: f"olympiad-{r['id']}",
            lambda r: {"subfield": r.get("subfield")},
            ("subfield",),
        ),
    ]
}


class MathTask(Task):
    kind = "math"

    def __init__(self, spec: MathSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.group_keys = spec.group_keys

    def load(self, data_path: str | Path | None = None, hub: bool = False) -> LoadedData:
        if hub:
            dataset, config, split = self.spec.hub
            records = load_from_hub(dataset, split, config)
            source, digest = f"hub:{dataset}", sha256_of_records(records)
        else:
            path = Path(data_path) if data_path else require_data_file(self.spec.local_file)
            records, source, digest = read_records(path), str(path), sha256_of(path)
        problems = []
        for record in records:
            if not self.spec.keep(record):
                continue
            messages = [
                {"role": "system", "content": MATH_SYSTEM_PROMPT},
                {"role": "user", "content": self.spec.question(record)},
            ]
            problems.append(
                Problem(self.spec.ident(record), messages, self.spec.gold(record), self.spec.meta(record))
            )
        return LoadedData(problems, source, digest)

    def grade(self, items: Sequence[tuple[Problem, str]], *, workers: int = 2) -> list[Graded]:
        verdicts = grade_many([(completion, problem.gold) for problem, completion in items], workers=workers)
        return [Graded(bool(ok), extract_answer(completion)) for ok, (_, completion) in zip(verdicts, items)]

    def answer_equivalence(self) -> Callable[[str, str], bool]:
        """The grader's own comparison, so ``1/2`` and ``0.5`` vote together."""
        return answers_equivalent
