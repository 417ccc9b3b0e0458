"""A few EM-RL and EM-FT steps with per-sample seeded sampling; saves each trained state and its losses.

Run in-process for the 1-process reference and under `accelerate launch` (DDP or FSDP2) for the
multi-process run by tests/trainers/test_distributed_parity.py (DDP, FSDP2, ZeRO-3). Plain SGD (not Adam,
whose first step is ~lr * sign(g) and so turns float-rounding differences of near-zero gradient entries
into full-size steps) makes the weights compare at the scale of the gradients' own rounding.

``--resume_at K`` trains K steps saving a checkpoint, then a fresh trainer resumes from it to
``--max_steps``: the result must equal the uninterrupted run.
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


def allow_fsdp_on_cpu() -> None:
    """Let accelerate run its FSDP path on CPU processes (gloo), for this test only.

    accelerate keeps FSDP for accelerator devices: on CPU it classifies the run as MULTI_CPU (plain DDP)
    and drops the FSDP plugin. Everything after that choice (``fully_shard`` over a CPU mesh, DTensor
    parameters, sharded checkpoints) works on gloo, so the choice is flipped back to FSDP.
    """
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            # Both: each AcceleratorState() copies PartialState's shared fields over its own again.
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin

    AcceleratorState.__init__ = init


def _trainer(name: str, model: str, out: Path, per_device_batch: int, max_steps: int, **overrides):
    config_class, trainer_class, extra = METHODS[name]
    args = config_class(
        **common_args(
            out / name,
            per_device_train_batch_size=per_device_batch,
            max_steps=max_steps,
            optim="sgd",
            learning_rate=1.0,
            lr_scheduler_type="constant",
            per_sample_seeded_sampling=True,
            **{**extra, **overrides},
        )
    )
    return trainer_class(
        model,
        args=args,
        train_dataset=toy_prompt_dataset(32),
        processing_class=AutoTokenizer.from_pretrained(model),
    )


def _losses(trainer, after: int = 0) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h and h["step"] > after]


def _save(trainer, path: Path, losses: list[float]) -> None:
    # FSDP2 shards parameters as DTensors; ZeRO-3 replaces each by an empty placeholder with a ds_id.
    sharded = any(hasattr(p, "full_tensor") or hasattr(p, "ds_id") for p in trainer.model.parameters())
    # A collective under FSDP (gathers the shards): every process calls it, the main one saves.
    # DeepSpeed gathers ZeRO-3 partitions through its engine, not the bare module.
    module = trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model
    state = trainer.accelerator.get_state_dict(module)
    if trainer.accelerator.is_main_process:
        state = {k: v.detach().cpu().clone() for k, v in state.items()}
        kind = str(trainer.accelerator.distributed_type)
        torch.save({"state": state, "losses": losses, "sharded": sharded, "kind": kind}, path)
    trainer.accelerator.wait_for_everyone()


def run(
    model: str,
    out: Path,
    per_device_batch: int,
    max_steps: int = 2,
    resume_at: int | None = None,
    methods: tuple[str, ...] = tuple(METHODS),
) -> None:
    """``out/<method>.pt``: ``max_steps`` steps; with ``resume_at``, also ``out/<method>.resumed.pt``."""
    for name in methods:
        trainer = _trainer(name, model, out, per_device_batch, max_steps)
        trainer.train()
        _save(trainer, out / f"{name}.pt", _losses(trainer))
        if resume_at is None:
            continue
        folder = out / f"{name}-resume"
        first = _trainer(
            name, model, folder, per_device_batch, resume_at, save_strategy="steps", save_steps=resume_at
        )
        first.train()
        losses = _losses(first)
        del first
        resumed = _trainer(name, model, folder, per_device_batch, max_steps)
        resumed.train(resume_from_checkpoint=str(folder / name / f"checkpoint-{resume_at}"))
        _save(resumed, out / f"{name}.resumed.pt", losses + _losses(resumed, after=resume_at))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--per_device_batch", type=int, required=True)
    parser.add_argument("--max_steps", type=int, default=2)
    parser.add_argument("--resume_at", type=int, default=None)
    parser.add_argument("--fsdp_on_cpu", action="store_true", help="see allow_fsdp_on_cpu")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of METHODS")
    options = parser.parse_args()
    torch.set_num_threads(1)
    if options.fsdp_on_cpu:
        allow_fsdp_on_cpu()
    methods = tuple(options.methods.split(","))
    run(options.model, options.out, options.per_device_batch, options.max_steps, options.resume_at, methods)
