"""EM-FT / EM-RL on the bundled toy model with unlabeled train-split prompts (used by the recipes'
no-argument defaults and by `emreason demo`).

The defaults in `TOY_DEFAULTS` (regime 1, "default") come from the sweep recorded in docs/trainers.md;
`REGIME_DEFAULTS["shortcut"]` (regime 2) from `recipes/sweep_toy_em.py`, recorded in docs/toy_model.md.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from emreason.toy import get_regime, make_problems
from emreason.toy import model_path as bundled_model_path
from emreason.trainers.em_ft_config import EMFTConfig
from emreason.trainers.em_ft_trainer import EMFTTrainer
from emreason.trainers.em_rl_config import EMRLConfig
from emreason.trainers.em_rl_trainer import EMRLTrainer

__all__ = [
    "METHODS",
    "TOY_DEFAULTS",
    "REGIME_DEFAULTS",
    "toy_defaults",
    "toy_prompt_dataset",
    "toy_settings",
    "toy_config",
    "train_on_toy",
]

METHODS = ("em_ft", "em_rl_sequence", "em_rl_token")

# Per method: steps and learning rate chosen on the toy model (see docs/trainers.md for the sweep).
TOY_DEFAULTS: dict[str, dict[str, Any]] = {
    "em_ft": {"steps": 30, "learning_rate": 1e-4},
    "em_rl_sequence": {"steps": 30, "learning_rate": 1e-4},
    "em_rl_token": {"steps": 30, "learning_rate": 1e-4},
}

# Per regime and method: steps, learning rate and any further config fields (e.g. reward_aggregation).
# Regime 2 ("shortcut"): chosen by recipes/sweep_toy_em.py (docs/toy_model.md has the sweep).
REGIME_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "default": TOY_DEFAULTS,
    "shortcut": {
        # EM-FT cannot raise greedy here (it sharpens the first token toward the majority shortcut);
        # 1e-5 is the lowest lr at which it visibly moves the model. Lower lrs leave it unchanged.
        "em_ft": {"steps": 40, "learning_rate": 1e-5},
        "em_rl_sequence": {"steps": 40, "learning_rate": 3e-5, "reward_aggregation": "mean"},
        "em_rl_token": {"steps": 40, "learning_rate": 3e-5, "reward_aggregation": "mean"},
    },
}


def toy_defaults(method: str, regime: str | int = "default") -> dict[str, Any]:
    """A copy of the chosen settings of ``method`` on ``regime`` (``steps``, ``learning_rate``, extras)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return dict(REGIME_DEFAULTS[get_regime(regime).name][method])


# Settings shared by every toy run: small CPU batches, float32, no checkpoint writes, no loggers.
_TOY_COMMON: dict[str, Any] = dict(
    max_completion_length=40,
    logging_steps=5,
    save_strategy="no",
    report_to="none",
    bf16=False,
    use_cpu=True,
    gradient_checkpointing=False,
    dataloader_num_workers=0,
    lr_scheduler_type="constant",
    disable_tqdm=True,
)


def toy_prompt_dataset(n: int, seed: int = 0, levels: tuple[int, ...] = (1, 2)) -> Dataset:
    """``n`` unlabeled chat prompts from the toy task's *train* split (answers are never included)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    problems = make_problems("train", n, seed=seed, levels=levels)
    return Dataset.from_dict({"prompt": [[{"role": "user", "content": p.prompt}] for p in problems]})


def toy_settings(
    method: str, *, steps: int | None = None, learning_rate: float | None = None
) -> dict[str, Any]:
    """Config fields of a toy run of ``method`` (``TOY_DEFAULTS`` steps/lr unless given)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    steps = TOY_DEFAULTS[method]["steps"] if steps is None else steps
    learning_rate = TOY_DEFAULTS[method]["learning_rate"] if learning_rate is None else learning_rate
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    settings = dict(_TOY_COMMON, max_steps=steps, learning_rate=learning_rate, per_device_train_batch_size=32)
    if method == "em_ft":
        settings.update(num_generations=1, beta=0.0)
    else:
        # 8 prompts x 4 rollouts per step, RLOO, unscaled advantages, KL 0.001 (the paper's EM-RL settings).
        settings.update(num_generations=4, reward_type=method.removeprefix("em_rl_"))
    return settings


def toy_config(
    method: str,
    output_dir: str | os.PathLike,
    *,
    steps: int,
    learning_rate: float,
    seed: int = 0,
    **overrides,
) -> EMFTConfig | EMRLConfig:
    """The training config of one toy run. ``overrides`` are any config fields (e.g. ``beta``)."""
    settings = toy_settings(method, steps=steps, learning_rate=learning_rate)
    settings.update(output_dir=str(output_dir), seed=seed, **overrides)
    return EMFTConfig(**settings) if method == "em_ft" else EMRLConfig(**settings)


def train_on_toy(
    method: str,
    output_dir: str | os.PathLike,
    *,
    model_path: str | os.PathLike | None = None,
    steps: int,
    learning_rate: float,
    seed: int = 0,
    regime: str | int = "default",
    quiet: bool = False,
    progress: Any = None,
    **overrides,
) -> Path:
    """Train the toy model with ``method`` on unlabeled train-split prompts; return the saved model dir.

    Args:
        method: ``"em_ft"``, ``"em_rl_sequence"`` or ``"em_rl_token"``.
        output_dir: where the trained model and tokenizer are saved (replaced if it exists).
        model_path: starting checkpoint (default: the bundled checkpoint of ``regime``).
        steps: optimizer steps; learning_rate: AdamW learning rate (see `toy_defaults`).
        regime: toy regime ("default" or "shortcut"); sets the default checkpoint and the levels of
            the training prompts.
        quiet: drop the trainer's printed log dicts (the demo's readable output).
        progress: optional tqdm-like bar, advanced by one per optimizer step.
        overrides: further config fields, e.g. ``beta=0.1`` or ``reward_aggregation="mean"``.
    """
    from transformers import AutoTokenizer

    spec = get_regime(regime)
    source = Path(model_path) if model_path is not None else bundled_model_path(spec.name)
    output = Path(output_dir)
    scratch = Path(
        tempfile.mkdtemp(prefix=f"{method}-", dir=output.parent if output.parent.exists() else None)
    )
    try:
        config = toy_config(
            method, scratch / "run", steps=steps, learning_rate=learning_rate, seed=seed, **overrides
        )
        prompts_needed = steps * config.generation_batch_size // config.num_generations
        dataset = toy_prompt_dataset(max(prompts_needed, 64), seed=seed + 1, levels=spec.levels)
        trainer_class = EMFTTrainer if method == "em_ft" else EMRLTrainer
        trainer = trainer_class(
            str(source),
            args=config,
            train_dataset=dataset,
            processing_class=AutoTokenizer.from_pretrained(source),
        )
        if quiet:
            trainer.remove_callback(PrinterCallback)
        if progress is not None:
            trainer.add_callback(_ProgressCallback(progress))
        trainer.train()
        staged = scratch / "model"
        trainer.save_model(str(staged))
        trainer.processing_class.save_pretrained(str(staged))
        # Replace the output directory in one rename, so a crash never leaves a half-written model there.
        if output.exists():
            shutil.rmtree(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, output)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return output


class _ProgressCallback(TrainerCallback):
    """Advances an external progress bar by one per optimizer step."""

    def __init__(self, bar) -> None:
        self.bar = bar

    def on_step_end(self, args, state, control, **kwargs):
        self.bar.update(1)
