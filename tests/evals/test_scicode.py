"""SciCode: prompt rendering, target regeneration from gold code, and gold code passing its steps."""

from __future__ import annotations

import pytest
from emreason.evals.tasks import get_task
from emreason.evals.tasks.scicode import BROKEN, DEV_TARGETS, recording_test, regenerate_dev_targets


def test_recording_test_rewrites_target_comparisons():
    code = "x = 2\nassert np.allclose(f(x), target)\nassert g(1)[0] == target[1] and h(x, target[0])"
    rewritten = recording_test(code)
    assert "_record(None, f(x))" in rewritten
    assert "_record(1, g(1)[0])" in rewritten and "_record(0, x)" in rewritten
    with pytest.raises(ValueError, match="target"):
        recording_test("assert target")


def test_test_split_counts_and_prompts(shared_data):
    task = get_task("scicode")
    problems = task.load().problems
    assert len({p.meta["problem"] for p in problems}) == 65
    assert sum(p.meta["scored"] for p in problems) == 288
    second = next(p for p in problems if p.depends_on)
    prompt = task.render(second, {second.depends_on: "```python\ndef first_step():\n    return 1\n```"})
    assert "def first_step" in prompt[0]["content"]
    with pytest.raises(ValueError, match="h5"):
        task.targets()


@pytest.mark.slow
def test_dev_gold_code_passes_with_regenerated_targets(shared_data, tmp_path):
    """Regenerate targets for two dev problems, then grade gold code (pass) and corrupted code (fail)."""
    import json

    source = shared_data / "scicode" / "problems_dev.jsonl"
    lines = source.read_text().splitlines()
    chosen = [line for line in lines if json.loads(line)["problem_id"] in ("1", "29")]
    subset = tmp_path / "scicode" / "problems_dev.jsonl"
    subset.parent.mkdir()
    subset.write_text("\n".join(chosen) + "\n")
    for template in ("multistep_template.txt", "background_comment_template.txt"):
        (subset.parent / template).write_text((source.parent / template).read_text())
    targets_path = tmp_path / "targets.json.gz"
    targets = regenerate_dev_targets(subset, targets_path)
    task = get_task("scicode_dev")
    problems = task.load(subset).problems
    import gzip

    with gzip.open(targets_path, "rt") as stream:
        task._targets = json.load(stream)["targets"]
    usable = [p for p in problems if not all(isinstance(t, dict) and BROKEN in t for t in targets[p.id])]
    assert usable
    history: dict[str, str] = {}
    items, histories = [], []
    for problem in problems:
        gold = task._steps[problem.id]["ground_truth_code"]
        items.append((problem, f"```python\n{gold}\n```"))
        histories.append(dict(history))
        history[problem.id] = f"```python\n{gold}\n```"
    verdicts = task.grade(items, workers=2, histories=histories)
    assert all(v.correct for (p, _), v in zip(items, verdicts) if p in usable)
    assert (
        task.extra_metrics(
            [
                {"id": p.id, "sample": 0, "correct": v.correct, "meta": p.meta}
                for (p, _), v in zip(items, verdicts)
            ]
        )["main_problem_pass_rate"]
        == 1.0
    )
    corrupted = [(p, "```python\ndef nothing():\n    pass\n```") for p in usable[:1]]
    assert not task.grade(corrupted, workers=1, histories=histories[:1])[0].correct

    # The same targets through an h5 file in the official layout grade exactly the same.
    from emreason.evals.tasks.scicode import codec
    from emreason.evals.tasks.scicode_h5 import H5TargetsError, write_h5_targets

    decode = codec()["_dec"]
    h5_path = write_h5_targets(
        {step: [decode(v) for v in tests] for step, tests in targets.items()}, tmp_path / "test_data.h5"
    )
    h5_task = get_task("scicode_dev", scicode_h5=str(h5_path))
    h5_task.load(subset)
    assert h5_task.grade(items, workers=2, histories=histories) == verdicts
    assert h5_task.grade(corrupted, workers=1, histories=histories[:1])[0].correct is False
    partial = write_h5_targets(
        {step: [decode(v) for v in tests] for step, tests in targets.items() if step != "29.2"},
        tmp_path / "partial.h5",
    )
    partial_task = get_task("scicode_dev", scicode_h5=str(partial))
    partial_task.load(subset)
    with pytest.raises(H5TargetsError, match=r"step\(s\) 29\.2"):
        partial_task.targets()


def test_full_dev_targets_cache_if_present(shared_data):
    if not DEV_TARGETS.is_file():
        pytest.skip(f"{DEV_TARGETS} not generated (python -m emreason.evals.tasks.scicode)")
    task = get_task("scicode_dev")
    problems = task.load().problems
    assert set(task.targets()) == {p.id for p in problems if p.meta["scored"]}


def test_large_step_programs_fit_in_the_sandbox():
    """Dev 7.1's step program inlines 41 MB of targets; the sandbox's /tmp must grow with it."""
    from emreason.evals.code import run_with_nonce
    from emreason.evals.tasks.scicode import _file_mb

    program = "x = 1\n#" + "0" * (40 << 20) + "\nassert x == 1\n"
    assert not run_with_nonce(program, timeout=60)[0]  # the default 16 MB limit (32 MB /tmp) is too small
    assert run_with_nonce(program, timeout=60, file_mb=_file_mb(program))[0]
