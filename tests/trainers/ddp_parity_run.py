"""A few EM-RL and EM-FT steps with per-sample seeded sampling; saves each trained state and its losses.

Run in-process for the 1-process reference and under `accelerate launch` for the multi-process run by
tests/trainers/test_ddp_parity.py. Plain SGD (not Adam, whose first step is ~lr * sign(g) and so turns
float-rounding differences of near-zero gradient entries into full-size steps) makes the weights
compare at the scale of the gradients' own rounding.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import common_args, toy_prompt_dataset  # noqa: E402

from emreason.trainers import EMFTConfig, EMFTTrainer, EMRLConfig, EMRLTrainer  # noqa: E402

METHODS = {
    "em_rl": (EMRLConfig, EMRLTrainer, dict(num_generations=2, reward_type="token")),
    "em_ft": (EMFTConfig, EMFTTrainer, dict(beta=0.1)),
}


def run(model: str, out: Path, per_device_batch: int) -> None:
    for name, (config_class, trainer_class, extra) in METHODS.items():
        args = config_class(
            **common_args(
                out / name,
                per_device_train_batch_size=per_device_batch,
                max_steps=2,
                optim="sgd",
                learning_rate=1.0,
                lr_scheduler_type="constant",
                per_sample_seeded_sampling=True,
                **extra,
            )
        )
        trainer = trainer_class(
            model,
            args=args,
            train_dataset=toy_prompt_dataset(32),
            processing_class=AutoTokenizer.from_pretrained(model),
        )
        trainer.train()
        if trainer.accelerator.is_main_process:
            unwrapped = trainer.accelerator.unwrap_model(trainer.model)
            state = {k: v.detach().cpu().clone() for k, v in unwrapped.state_dict().items()}
            losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
            torch.save({"state": state, "losses": losses}, out / f"{name}.pt")
        trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--per_device_batch", type=int, required=True)
    options = parser.parse_args()
    torch.set_num_threads(1)
    run(options.model, options.out, options.per_device_batch)
