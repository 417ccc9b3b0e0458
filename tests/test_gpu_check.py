"""scripts/gpu_check.sh: the dry run on CPU, and the step runner's bookkeeping (errors, skips, time limit)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STEPS = [
    "environment", "prepare", "hf_twin", "vllm_default", "vllm_classic", "vllm_serve",
    "processor_timing", "emft_memory", "compare", "trl_colocate", "trl_server",
]  # fmt: skip


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_dry_run_plans_every_step_within_ten_minutes(tmp_path):
    report_path = tmp_path / "report.json"
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", "--output", str(report_path),
         "--workdir", str(tmp_path / "work")],  # fmt: skip
        capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["dry_run"] and report["passed"] and report["summary"] == {"planned": len(STEPS)}
    assert [s["name"] for s in report["steps"]] == STEPS
    assert report["planned_budget_s"] <= report["time_limit_s"] <= 600 - 30
    steps = {s["name"]: s for s in report["steps"]}
    prepared = steps["prepare"]["dry_run"]
    assert Path(prepared["model"], "config.json").is_file() and prepared["prompts"] == 32
    assert prepared["vocab_size"] > 0 and prepared["prompt_tokens_mean"] > 5
    assert "vllm.entrypoints.openai.api_server" in prepared["server_command"]
    assert "processed_logprobs" in prepared["server_command"]
    assert "--worker" in prepared["worker_command"]
    assert json.loads((tmp_path / "work" / "prompts.json").read_text())["token_ids"]
    assert steps["hf_twin"]["dry_run"]["imported"]
    assert "cuda" in steps["processor_timing"]["would_skip_for"] or steps["environment"]["dry_run"].get("gpu")
    # TRL use_vllm: the trainer command runs the same script as the vLLM CPU suite; server mode is planned
    # with the server command TRL itself builds (NCCL weight transfer) and needs two GPUs.
    for mode in ("colocate", "server"):
        command = steps[f"trl_{mode}"]["dry_run"]["trainer_command"]
        assert command[1].endswith("scripts/trl_vllm_run.py") and Path(command[1]).is_file()
        assert command[command.index("--vllm-mode") + 1] == mode and "--device" in command
    assert "--server-url" in steps["trl_server"]["dry_run"]["trainer_command"]
    server = steps["trl_server"]["dry_run"]["server_command"]
    assert "serve" in server and '{"backend": "nccl"}' in server and "float32" in server
    if not steps["environment"]["dry_run"].get("gpu", {}).get("count", 0) >= 2:
        assert "two_gpus" in steps["trl_server"]["would_skip_for"]


def test_wrapper_rejects_a_bad_time_limit():
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run"],
        capture_output=True, text=True, env={**os.environ, "GPU_CHECK_TIME_LIMIT": "abc"},
    )  # fmt: skip
    assert result.returncode == 2 and "GPU_CHECK_TIME_LIMIT" in result.stderr


def test_runner_records_errors_failures_skips_and_the_time_limit(tmp_path):
    gc = load_gpu_check()

    def boom(ctx, budget):
        raise RuntimeError("no GPU here")

    def failing(ctx, budget):
        return {"checks": {"x": gc.check(0.5, 0.9, True)}}

    def fine(ctx, budget):
        assert budget <= 5
        return {"checks": {"y": gc.check(1e-4, 1e-3, False)}, "value": 1}

    steps = [
        gc.Step("a", 5, (), boom, "raises"),
        gc.Step("b", 5, (), failing, "a check fails"),
        gc.Step("c", 5, ("cuda",), fine, "needs CUDA"),
        gc.Step("d", 5, (), fine, "runs"),
        gc.Step("e", 50, (), fine, "no time left"),
    ]
    args = gc.parse_args(["--output", str(tmp_path / "r.json")])
    ctx = gc.Context(args=args, workdir=tmp_path, deadline=time.monotonic() + 10, available={"cuda": False})
    report = {"steps": []}
    out = gc.run_plan(steps, ctx, report, tmp_path / "r.json", dry_run=False)
    status = {s["name"]: s["status"] for s in out["steps"]}
    assert status == {"a": "error", "b": "fail", "c": "skipped", "d": "ok", "e": "skipped"}
    ctx.deadline = time.monotonic()  # the overall limit reached: later steps are skipped, not started
    late = gc.run_plan([gc.Step("f", 50, (), fine, "late")], ctx, {"steps": []}, tmp_path / "s.json", False)
    assert late["steps"][0]["status"] == "skipped" and "time limit" in late["steps"][0]["reason"]
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["passed"] is False and saved["summary"] == {"error": 1, "fail": 1, "ok": 1, "skipped": 2}
    assert "no GPU here" in saved["steps"][0]["error"] and saved["steps"][3]["result"]["value"] == 1
    assert ctx.results["d"]["value"] == 1


def test_bad_arguments_are_refused():
    gc = load_gpu_check()
    for argv in (["--time-limit", "0"], ["--gpu-memory-utilization", "1.5"], ["--prompts", "0"]):
        with pytest.raises(SystemExit):
            gc.parse_args(argv)
    with pytest.raises(SystemExit, match="unknown step"):
        gc.main(["--dry-run", "--steps", "nope"])
