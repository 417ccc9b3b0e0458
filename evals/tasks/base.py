"""What every benchmark task provides to the runner: problems, prompts, grading and extra metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MATH_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
CODE_INSTRUCTION = (
    "Write a complete, self-contained Python solution. Put your final code in a single ```python code block "
    "at the end of your answer."
)


@dataclass
class Problem:
    """One prompt to generate for. ``gold`` is whatever the task's grader needs (JSON-serialisable).

    ``depends_on`` names the problem whose completion (of the same sample index) must exist before this
    one's prompt can be rendered (SciCode's later steps include the model's earlier functions).
    """

    id: str
    messages: list[dict[str, str]] | None
    gold: Any
    meta: dict[str, Any] = field(default_factory=dict)
    depends_on: str | None = None


@dataclass
class Graded:
    """A verdict on one completion: ``extracted`` is the answer or code that was judged."""

    correct: bool
    extracted: str | None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadedData:
    problems: list[Problem]
    source: str  # file path or hub id
    sha256: str


class Task:
    """Base class; subclasses set ``name`` and implement :meth:`load` and :meth:`grade`."""

    name: str = ""
    kind: str = "math"  # math | code | scicode | toy (decides the default token budget and workers)
    group_keys: tuple[str, ...] = ()  # meta keys to report sub-scores by
    max_new_tokens: int = 4096

    def load(self, data_path: str | Path | None = None, hub: bool = False) -> LoadedData:
        raise NotImplementedError

    def render(self, problem: Problem, history: dict[str, str]) -> list[dict[str, str]]:
        """Chat messages for ``problem``; ``history``: earlier problem id -> this sample's completion."""
        if problem.messages is None:
            raise ValueError(f"{self.name}: problem {problem.id} has no prompt")
        return problem.messages

    def grade(self, items: Sequence[tuple[Problem, str]], *, workers: int = 2) -> list[Graded]:
        raise NotImplementedError

    def answer_equivalence(self) -> Callable[[str, str], bool] | None:
        """How two extracted answers are compared for majority voting (maj@k); None: the task has no
        final answers to vote on (code), so no maj@k is reported."""
        return None

    def extra_metrics(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Task-specific scores computed from the finished sample records (e.g. SciCode main problems)."""
        return {}
