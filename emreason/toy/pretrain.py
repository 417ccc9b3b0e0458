"""Pretraining of the toy reasoning model from scratch on CPU (driven by recipes/pretrain_toy.py).

The model is a small Qwen2 (so vLLM can serve it; head_dim 32 because vLLM's CPU attention needs
>= 32) trained with next-token cross-entropy on the assistant part of chat-formatted toy problems,
25% of whose solutions carry one corrupted step (see `emreason.toy.task`). With ``shortcut_rate``
> 0 (regime 2, "shortcut") that fraction of solutions are instead direct guesses of the answer.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from emreason.toy.task import iter_problems
from emreason.toy.tokenizer import IM_END, IM_START, build_tokenizer


@dataclass
class ToyPretrainConfig:
    """Everything that determines the toy checkpoint (with the seed, the run is reproducible)."""

    output_dir: str = "toy-model"
    seed: int = 0
    steps: int = 3000
    batch_size: int = 64
    lr: float = 3e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.1
    corruption_rate: float = 0.25
    # Fraction of solutions that are "direct guesses" (see ToyProblem.shortcut_solution); 0 for
    # regime 1 ("default"), 0.6 for regime 2 ("shortcut").
    shortcut_rate: float = 0.0
    shortcut_max_offset: int = 3
    levels: list[int] = field(default_factory=lambda: [1, 2])
    hidden_size: int = 192
    intermediate_size: int = 768
    num_layers: int = 4
    num_heads: int = 6
    num_kv_heads: int = 2
    max_position_embeddings: int = 512
    num_threads: int = 0  # 0: leave torch's default


def build_model(config: ToyPretrainConfig, tokenizer: PreTrainedTokenizerFast) -> Qwen2ForCausalLM:
    vocab_size = 64 * math.ceil(len(tokenizer) / 64)
    model_config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.hidden_size // config.num_heads,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        bos_token_id=tokenizer.convert_tokens_to_ids(IM_START),
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    return Qwen2ForCausalLM(model_config)


def encode_example(tokenizer: PreTrainedTokenizerFast, prompt: str, completion: str) -> tuple[list[int], int]:
    """Token ids of a chat-formatted example and the index where the assistant's completion starts."""
    prefix = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion + IM_END, add_special_tokens=False)["input_ids"]
    return prefix_ids + completion_ids, len(prefix_ids)


def training_solution(problem, rng: random.Random, config: ToyPretrainConfig) -> str:
    """One pretraining target for ``problem``: a shortcut guess with probability ``shortcut_rate``,
    else the step-by-step solution (corrupted with probability ``corruption_rate``)."""
    if config.shortcut_rate > 0 and rng.random() < config.shortcut_rate:
        return problem.shortcut_solution(rng, config.shortcut_max_offset)
    return problem.solution(rng, config.corruption_rate)


def _batch(tokenizer, problems, rng, config: ToyPretrainConfig):
    encoded = [encode_example(tokenizer, p.prompt, training_solution(p, rng, config)) for p in problems]
    return collate_right_padded(encoded, tokenizer.pad_token_id)


def collate_right_padded(encoded: list[tuple[list[int], int]], pad_token_id: int):
    """``(input_ids, attention_mask, labels)``, each ``[B, T]``, from ``(ids, completion_start)`` pairs:
    right-padded, with labels only on each row's completion tokens (-100 elsewhere)."""
    length = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), length), pad_token_id, dtype=torch.long)
    labels = torch.full_like(input_ids, -100)
    attention_mask = torch.zeros_like(input_ids)
    for row, (ids, start) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, start : len(ids)] = torch.tensor(ids[start:])
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask, labels


def pretrain(config: ToyPretrainConfig) -> Path:
    """Train the toy model and save it (safetensors, config, tokenizer, chat template) to output_dir."""
    if config.steps < 1:
        raise ValueError(f"steps must be >= 1, got {config.steps}")
    if not 0.0 <= config.shortcut_rate <= 1.0:
        raise ValueError(f"shortcut_rate must be in [0, 1], got {config.shortcut_rate}")
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    tokenizer = build_tokenizer()
    model = build_model(config, tokenizer)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.95),
    )

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return config.lr * (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)

    problems = iter_problems("train", seed=config.seed + 1, levels=tuple(config.levels))
    model.train()
    start = time.perf_counter()
    log = []
    bar = tqdm(range(config.steps), desc="pretrain toy", mininterval=5)
    for step in bar:
        batch = [next(problems) for _ in range(config.batch_size)]
        input_ids, attention_mask, labels = _batch(tokenizer, batch, rng, config)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 50 == 0 or step == config.steps - 1:
            log.append({"step": step, "loss": round(loss.item(), 5), "seconds": time.perf_counter() - start})
            bar.set_postfix(loss=f"{loss.item():.4f}")
    seconds = time.perf_counter() - start

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        eos_token_id=model.config.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    meta = {
        "recipe": "recipes/pretrain_toy.py",
        "config": asdict(config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "pretrain_seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "loss_log": log,
    }
    (out / "pretrain_meta.json").write_text(json.dumps(meta, indent=2))
    return out
