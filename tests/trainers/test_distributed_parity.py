"""DDP, FSDP2 and DeepSpeed ZeRO-3 (the shipped accelerate configs) on 2 CPU processes (gloo) match 1 process
with the same global batch; their checkpoints resume.

Each 2-process run uses the shipped config (``recipes/accelerate/ddp.yaml`` / ``fsdp.yaml`` /
``zero3.yaml``) with only the hardware fields changed (2 processes, no mixed precision, CPU). accelerate
keeps FSDP for accelerator devices, so the FSDP run flips its device-type decision back to FSDP
(``ddp_parity_run.allow_fsdp_on_cpu``); sharding, DTensor parameters and sharded checkpoints are then the
real FSDP2 code path. DeepSpeed runs on its CPU accelerator as shipped. 3 SGD steps of EM-RL (token reward)
and EM-FT (with KL): losses and final parameters equal the 1-process run within 1e-5, and a run stopped at
step 2 (sharded checkpoint) and resumed reaches the same parameters. Under ZeRO-3 EM-FT runs the LM head
inside the forward (full logits) while the 1-process reference uses the chunked hidden-state entropy, so the
ZeRO-3 case also checks those two paths against each other.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from ddp_parity_run import METHODS, run
from safetensors.torch import load_file

SCRIPT = Path(__file__).resolve().parent / "ddp_parity_run.py"
CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "accelerate"
DDP_CONFIG, FSDP_CONFIG, ZERO3_CONFIG = (CONFIGS / name for name in ("ddp.yaml", "fsdp.yaml", "zero3.yaml"))
STEPS, RESUME_AT, TOLERANCE = 3, 2, 1e-5


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_shipped_fsdp_config_is_fsdp2():
    config = yaml.safe_load(FSDP_CONFIG.read_text())
    assert config["distributed_type"] == "FSDP"
    assert config["fsdp_config"]["fsdp_version"] == 2  # EMFTTrainer refuses FSDP1
    assert config["fsdp_config"]["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"


def _max_gap(a: dict, b: dict, keys) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in keys)


def test_shipped_zero3_config_is_stage_3():
    config = yaml.safe_load(ZERO3_CONFIG.read_text())
    assert config["distributed_type"] == "DEEPSPEED"
    assert config["deepspeed_config"]["zero_stage"] == 3


# name: (shipped config, run-script flags, distributed type, a file only that checkpoint format writes)
SHARDINGS = {
    # With no GPU, accelerate's multi-GPU launcher starts gloo CPU processes.
    "ddp": (DDP_CONFIG, [], "DistributedType.MULTI_CPU", "optimizer.pt"),
    "fsdp2": (FSDP_CONFIG, ["--fsdp_on_cpu"], "DistributedType.FSDP", "pytorch_model_fsdp_0"),
    "zero3": (ZERO3_CONFIG, [], "DistributedType.DEEPSPEED", "global_step2"),
}


@pytest.mark.slow
@pytest.mark.parametrize("sharding", list(SHARDINGS))
def test_two_process_run_matches_one_process_and_resumes(sharding, tiny_model_dir, tmp_path):
    shipped, flags, kind, checkpoint_marker = SHARDINGS[sharding]
    config = yaml.safe_load(shipped.read_text())
    config.update(num_processes=2, mixed_precision="no")
    if sharding == "zero3":
        config["use_cpu"] = True  # DeepSpeed's CPU accelerator (deepspeed is in the dev extras)
    config_file = tmp_path / f"{sharding}_cpu.yaml"
    config_file.write_text(yaml.safe_dump(config))
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
        "--main_process_port", str(_free_port()), "--dynamo_backend", "no", str(SCRIPT),
        "--model", str(tiny_model_dir), "--out", str(tmp_path / "two"), "--per_device_batch", "4",
        "--max_steps", str(STEPS), "--resume_at", str(RESUME_AT), *flags,
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    launched = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    run(str(tiny_model_dir), tmp_path / "one", per_device_batch=8, max_steps=STEPS)  # same global batch
    _, stderr = launched.communicate(timeout=600)
    assert launched.returncode == 0, stderr[-4000:]

    initial = load_file(next(Path(tiny_model_dir).glob("*.safetensors")))
    for method in METHODS:
        one = torch.load(tmp_path / "one" / f"{method}.pt")
        two = torch.load(tmp_path / "two" / f"{method}.pt")
        resumed = torch.load(tmp_path / "two" / f"{method}.resumed.pt")
        assert two["kind"] == kind and two["sharded"] == (sharding != "ddp"), (two["kind"], two["sharded"])
        assert len(one["losses"]) == len(two["losses"]) == len(resumed["losses"]) == STEPS
        moved = _max_gap(one["state"], initial, initial)
        gap = _max_gap(one["state"], two["state"], initial)
        resume_gap = _max_gap(two["state"], resumed["state"], initial)
        print(
            f"{sharding} {method}: losses 1-proc {one['losses']} 2-proc {two['losses']} resumed "
            f"{resumed['losses']}; weight gap {gap:.3g}, resume gap {resume_gap:.3g}, moved {moved:.3g}"
        )
        assert moved > 1e-2, f"{method}: training did not move the weights ({moved})"
        assert one["losses"] == pytest.approx(two["losses"], rel=0, abs=TOLERANCE), method
        assert gap < TOLERANCE, f"{method}: 1-process vs {sharding} weights differ by {gap}"
        assert resumed["losses"] == pytest.approx(two["losses"], rel=0, abs=TOLERANCE), method
        assert resume_gap < TOLERANCE, f"{method}: resumed {sharding} run differs by {resume_gap}"
        checkpoint = tmp_path / "two" / f"{method}-resume" / method / f"checkpoint-{RESUME_AT}"
        assert (checkpoint / checkpoint_marker).exists(), sorted(p.name for p in checkpoint.iterdir())
