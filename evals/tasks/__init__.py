"""Task registry: ``get_task(name, **options)`` returns a fresh task object."""

from __future__ import annotations

from typing import Any

from emreason.evals.tasks.base import Graded, LoadedData, Problem, Task
from emreason.evals.tasks.code_tasks import CODE_TASKS, LiveCodeBenchTask
from emreason.evals.tasks.math_tasks import MATH_SPECS, MathTask
from emreason.evals.tasks.scicode import SciCodeTask
from emreason.evals.tasks.toy import ToyTask

TASK_NAMES = (
    *MATH_SPECS,
    *CODE_TASKS,
    "scicode",
    "scicode_bg",
    "scicode_dev",
    "scicode_dev_bg",
    "toy",
)


def get_task(name: str, **options: Any) -> Task:
    """Build task ``name``; options: lcb_trust_pickle, lcb_public_only, scicode_h5, toy_size."""
    if name in MATH_SPECS:
        return MathTask(MATH_SPECS[name])
    if name == "livecodebench":
        return LiveCodeBenchTask(
            trust_pickle=bool(options.get("lcb_trust_pickle")),
            public_only=bool(options.get("lcb_public_only")),
        )
    if name in CODE_TASKS:
        return CODE_TASKS[name]()
    if name.startswith("scicode"):
        split = "dev" if "_dev" in name else "test"
        return SciCodeTask(split, with_background=name.endswith("_bg"), h5_path=options.get("scicode_h5"))
    if name == "toy":
        return ToyTask(size=int(options.get("toy_size") or 200))
    raise ValueError(f"unknown task {name!r}; known: {', '.join(TASK_NAMES)}")


__all__ = ["TASK_NAMES", "Graded", "LoadedData", "Problem", "Task", "get_task"]
