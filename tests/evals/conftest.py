"""Shared fixtures: a tiny random Qwen2 with the toy character tokenizer, and the offline data folder."""

from __future__ import annotations

import pytest
from emreason.evals.data import data_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised ~50k-parameter Qwen2 saved with a ChatML character tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from emreason.toy.tokenizer import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    path = tmp_path_factory.mktemp("tiny_qwen2")
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def shared_data():
    root = data_dir()
    if root is None:
        pytest.skip("benchmark data folder ../shared/data (or $EMREASON_DATA_DIR) is absent")
    return root
