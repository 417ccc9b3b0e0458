"""A 2-process CPU (gloo) `accelerate launch` run matches the 1-process run with the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_parity_run import METHODS, run
from safetensors.torch import load_file

SCRIPT = Path(__file__).resolve().parent / "ddp_parity_run.py"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo_run_matches_one_process(tiny_model_dir, tmp_path):
    # `--multi_gpu` selects accelerate's torchrun launcher (`--cpu` alone starts a single process); with
    # no GPU and `use_cpu=True` the two processes form a gloo process group on the CPU.
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_machines",
        "1",
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        str(SCRIPT),
        "--model",
        str(tiny_model_dir),
        "--out",
        str(tmp_path / "two"),
        "--per_device_batch",
        "4",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    launched = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    run(str(tiny_model_dir), tmp_path / "one", per_device_batch=8)  # same global batch, one process
    _, stderr = launched.communicate(timeout=400)
    assert launched.returncode == 0, stderr[-4000:]

    initial = load_file(next(Path(tiny_model_dir).glob("*.safetensors")))
    for method in METHODS:
        one = torch.load(tmp_path / "one" / f"{method}.pt")
        two = torch.load(tmp_path / "two" / f"{method}.pt")
        assert one["losses"] == pytest.approx(two["losses"], rel=1e-4, abs=1e-6), method
        moved = max((one["state"][k] - initial[k]).abs().max().item() for k in initial)
        gap = max((one["state"][k] - two["state"][k]).abs().max().item() for k in initial)
        print(f"{method}: losses {one['losses']} vs {two['losses']}; weight gap {gap:.3g}, moved {moved:.3g}")
        assert moved > 1e-2, f"{method}: training did not move the weights ({moved})"
        assert gap < 1e-4 * moved, f"{method}: 1- vs 2-process weights differ by {gap} (moved {moved})"
