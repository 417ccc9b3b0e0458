"""`emreason eval verify-code`: reference solutions graded through the harness, failures listed."""

from __future__ import annotations

import json

import pytest
from emreason.evals import verify
from emreason.evals.cli import main


def test_verify_code_reports_passes_and_lists_failures(shared_data, tmp_path, monkeypatch):
    report = verify.verify_code(["humaneval", "leetcode"], limit=3, workers=2)
    assert report["humaneval"]["passed"] == 3 and report["humaneval"]["failed"] == []
    assert report["leetcode"]["passed"] == 3  # the stub Solution runs every test program
    # A broken reference is listed by id and makes the command fail.
    original = verify.reference_code
    monkeypatch.setattr(
        verify,
        "reference_code",
        lambda name, gold: (
            "def nope():\n    pass\n" if gold["task_id"] == "HumanEval/1" else original(name, gold)
        ),
    )
    out = tmp_path / "report.json"
    assert main(["verify-code", "--task", "humaneval", "--limit", "3", "--output", str(out)]) == 1
    saved = json.loads(out.read_text())
    assert [row["id"] for row in saved["humaneval"]["failed"]] == ["HumanEval/1"]
    with pytest.raises(SystemExit):
        main(["verify-code", "--task", "math500"])
