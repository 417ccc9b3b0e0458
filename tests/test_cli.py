"""`emreason demo`: a real small run, and one clear error line for bad input."""

import json
import subprocess
import sys

import pytest


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "emreason.cli", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["demo", "--device", "cuda:0"], "CUDA is not available"),
        (["demo", "--device", "banana"], "bad device 'banana'"),
        (["demo", "--dtype", "int3"], "invalid choice: 'int3'"),
        (["demo", "--model", "/nonexistent/model"], "model directory not found: /nonexistent/model"),
        (["demo", "--methods", "em_magic"], "unknown method(s) ['em_magic']"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_input_gives_one_clear_error(args, message):
    result = run_cli(*args, timeout=120)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_small_run_writes_results_and_plot(tmp_path):
    out = tmp_path / "demo"
    result = run_cli("demo", "--n-problems", "24", "--methods", "em_inf", "--output", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    rows = {(r["method"], r["decoding"]): r for r in results["rows"]}
    for decoding in ("greedy", "T=0.5", "T=0.7", "T=1"):
        assert ("base", decoding) in rows
    assert ("EM-INF", "T=1") in rows
    for row in rows.values():
        assert 0 <= row["ci95"][0] <= row["accuracy"] <= row["ci95"][1] <= 1 and row["n"] == 24
    assert (out / "accuracy.png").stat().st_size > 5000
    assert "Held-out toy accuracy" in result.stdout


def test_demo_runs_a_trainer_method_with_overridden_steps(tmp_path):
    out = tmp_path / "demo"
    result = run_cli(
        "demo", "--n-problems", "16", "--methods", "em_ft", "--train-steps", "2", "--output", str(out)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    em_ft = [r for r in results["rows"] if r["method"] == "EM-FT"]
    assert [r["decoding"] for r in em_ft] == ["greedy", "T=1"]
    assert all(r["note"].startswith("2 steps") for r in em_ft)
    assert (out / "models" / "em_ft" / "model.safetensors").is_file()
