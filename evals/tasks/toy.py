"""The toy arithmetic task of the bundled toy model (``emreason.toy.task``)."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from pathlib import Path

from emreason.evals.data import sha256_of_records
from emreason.evals.tasks.base import Graded, LoadedData, Problem, Task

DEFAULT_SIZE = 200


class ToyTask(Task):
    name = "toy"
    kind = "toy"
    group_keys = ("level",)
    max_new_tokens = 64

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = size

    def load(self, data_path: str | Path | None = None, hub: bool = False) -> LoadedData:
        from emreason.toy.task import make_problems

        problems = [
            Problem(
                f"toy-{i}-{p.expression}",
                [{"role": "user", "content": p.prompt}],
                int(p.answer),
                {"level": str(p.level)},
            )
            for i, p in enumerate(make_problems("heldout", self.size))
        ]
        records = [{"id": p.id, "gold": p.gold} for p in problems]
        return LoadedData(problems, "emreason.toy.task:heldout", sha256_of_records(records))

    def grade(self, items: Sequence[tuple[Problem, str]], *, workers: int = 2) -> list[Graded]:
        from emreason.toy.task import extract_answer

        out = []
        for problem, completion in items:
            extracted = extract_answer(completion)  # toy.grade is exactly this comparison
            out.append(Graded(extracted == int(problem.gold), None if extracted is None else str(extracted)))
        return out

    def answer_equivalence(self) -> Callable[[str, str], bool]:
        """Extracted toy answers are canonical integer strings: equal strings, equal answers."""
        return operator.eq
