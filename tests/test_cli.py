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
        (["demo", "--regime", "regime-9"], "valid regimes: 'default' (1), 'shortcut' (2)"),
        (["demo", "--train-steps", "0"], "train_steps must be >= 1"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_input_gives_one_clear_error(args, message):
    result = run_cli(*args, timeout=120)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def _rows(results: dict, regime: str) -> dict:
    return {(r["method"], r["decoding"]): r for r in results["regimes"][regime]["rows"]}


def test_demo_small_run_covers_both_regimes_and_writes_results_and_plot(tmp_path):
    out = tmp_path / "demo"
    result = run_cli("demo", "--n-problems", "24", "--methods", "em_inf", "--output", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert sorted(results["regimes"]) == ["default", "shortcut"]
    default, shortcut = _rows(results, "default"), _rows(results, "shortcut")
    for decoding in ("greedy", "T=0.5", "T=0.7", "T=1.0"):
        assert ("base", decoding) in default
    assert ("EM-INF", "T=1.0") in default and ("EM-INF", "T=1.0") in shortcut
    assert {("base", "greedy"), ("base", "T=1.0"), ("base, forced step-by-step", "greedy")} <= set(shortcut)
    for row in [*default.values(), *shortcut.values()]:
        assert isinstance(row["method"], str) and row["n"] == 24
        assert 0 <= row["ci_low"] <= row["accuracy"] <= row["ci_high"] <= 1
        assert abs(sum(route["fraction"] for route in row["routes"].values()) - 1) < 1e-3
    # regime 2: greedy takes the shortcut; the forced ceiling is all step-by-step
    assert shortcut[("base", "greedy")]["routes"]["shortcut"]["fraction"] > 0.5
    assert shortcut[("base, forced step-by-step", "greedy")]["routes"]["step-by-step"]["fraction"] == 1
    assert (out / "accuracy.png").stat().st_size > 5000
    assert "Regime 1 (default)" in result.stdout and "Regime 2 (shortcut)" in result.stdout


def test_demo_runs_a_trainer_method_quietly_with_overridden_steps(tmp_path):
    out = tmp_path / "demo"
    result = run_cli(
        "demo",
        *("--regime", "shortcut", "--n-problems", "16", "--methods", "em_ft", "--train-steps", "2"),
        *("--output", str(out)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert list(results["regimes"]) == ["shortcut"]
    em_ft = [r for r in results["regimes"]["shortcut"]["rows"] if r["method"] == "EM-FT"]
    assert [r["decoding"] for r in em_ft] == ["greedy", "T=1.0"]
    assert all(r["note"].startswith("2 steps") for r in em_ft)
    assert (out / "models" / "shortcut" / "em_ft" / "model.safetensors").is_file()
    # Readable output: progress bars and tables only, no trainer log dicts or library warnings.
    printed = result.stdout + result.stderr
    for noise in ("'loss'", "Warning", "Loading weights", "Writing model shards", "train_runtime"):
        assert noise not in printed, noise
