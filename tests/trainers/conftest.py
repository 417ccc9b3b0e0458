"""Fixtures for the trainer tests: a tiny toy-architecture model saved to disk, and toy prompt datasets."""

from __future__ import annotations

import pytest
import torch

from emreason.toy.pretrain import ToyPretrainConfig, build_model
from emreason.toy.tokenizer import build_tokenizer
from emreason.trainers.toy_runs import _TOY_COMMON, toy_prompt_dataset  # noqa: F401  (re-exported)


def common_args(output_dir, **overrides) -> dict:
    """The toy runs' CPU settings, shrunk to a 2-step, 4-sequence, deterministic test run."""
    args = dict(
        _TOY_COMMON,
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        max_completion_length=12,
        max_steps=2,
        logging_steps=1,
        seed=0,
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
