"""Fixtures for the trainer tests: a tiny toy-architecture model saved to disk, and toy prompt datasets."""

from __future__ import annotations

import pytest
import torch

from emreason.toy.pretrain import ToyPretrainConfig, build_model
from emreason.toy.tokenizer import build_tokenizer
from emreason.trainers.toy_runs import toy_prompt_dataset  # noqa: F401  (re-exported for the tests)


def common_args(output_dir, **overrides) -> dict:
    """Small, CPU-friendly, deterministic trainer settings."""
    args = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        max_completion_length=12,
        max_steps=2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
    )
    args.update(overrides)
    return args


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised 2-layer toy Qwen2 (char tokenizer, ChatML template), saved to disk."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    config = ToyPretrainConfig(
        hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, num_kv_heads=1
    )
    model = build_model(config, tokenizer)
    directory = tmp_path_factory.mktemp("tiny_toy_model")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
