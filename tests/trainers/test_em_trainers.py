"""EMRLTrainer / EMFTTrainer on a tiny random toy model: rewards and losses against direct computations
from full logits, entropy reduction, checkpoint resume, and input validation."""

from __future__ import annotations

import pytest
import torch
from conftest import common_args, toy_prompt_dataset
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from emreason.entropy import sequence_logprob, token_entropy
from emreason.toy import make_problems
from emreason.toy.evaluate import generate_completions
from emreason.trainers import EMFTConfig, EMFTTrainer, EMRLConfig, EMRLTrainer
from emreason.trainers.em_ft_trainer import chunked_token_logprobs


def _rl_trainer(model_dir, tmp_path, **overrides):
    args = EMRLConfig(**common_args(tmp_path / "rl", num_generations=2, **overrides))
    return EMRLTrainer(
        str(model_dir),
        args=args,
        train_dataset=toy_prompt_dataset(16),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
    )


def _ft_trainer(model_dir, tmp_path, **overrides):
    args = EMFTConfig(**common_args(tmp_path / "ft", **overrides))
    return EMFTTrainer(
        str(model_dir),
        args=args,
        train_dataset=toy_prompt_dataset(16),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
    )


def _rollout(trainer, n=4):
    trainer.model.train()
    return trainer._generate_and_score_completions([trainer.train_dataset[i // 2] for i in range(n)])


def _direct_logits(model, batch):
    """float64 full-sequence logits at the positions that predict each completion token: [B, C, V]."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    length = batch["completion_ids"].shape[1]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention).logits
    return logits[:, -length - 1 : -1].double()


@pytest.mark.parametrize(
    "reward_type, aggregation, estimator",
    [("sequence", "sum", "rloo"), ("token", "mean", "grpo"), ("token", "sum", "rloo")],
)
def test_em_rl_reward_equals_direct_computation_from_logits(
    tiny_model_dir, tmp_path, reward_type, aggregation, estimator
):
    trainer = _rl_trainer(
        tiny_model_dir,
        tmp_path,
        reward_type=reward_type,
        reward_aggregation=aggregation,
        advantage_estimator=estimator,
        reward_scale=2.0,
    )
    batch = _rollout(trainer)
    logits = _direct_logits(trainer.model, batch)
    mask = batch["completion_mask"].double()
    if reward_type == "sequence":
        per_token = sequence_logprob(logits, batch["completion_ids"], batch["completion_mask"]).token_logprobs
    else:
        per_token = -token_entropy(logits) * mask
    expected = per_token.sum(-1)
    if aggregation == "mean":
        expected = expected / mask.sum(-1)
    expected = 2.0 * expected
    assert torch.allclose(trainer._em_global_rewards.double(), expected, atol=1e-4, rtol=1e-5)
    grouped = expected.view(-1, 2)
    centred = (grouped - grouped.mean(1, keepdim=True)).reshape(-1)
    factor = 2.0 if estimator == "rloo" else 1.0  # G / (G - 1) for G = 2
    assert torch.allclose(batch["advantages"].double(), factor * centred, atol=1e-4)


@pytest.mark.parametrize("recompute", ["true", "false", "auto"])
def test_em_ft_loss_and_gradient_equal_full_logit_entropy(tiny_model_dir, tmp_path, recompute):
    # "auto" with a budget of 2 of the chunks (5 tokens x 128 float32 logits each): kept and recomputed.
    budget = 2 * 5 * 128 * 4 / 2**20
    trainer = _ft_trainer(
        tiny_model_dir,
        tmp_path,
        entropy_chunk_size=5,
        entropy_recompute_logits=recompute,
        entropy_keep_logits_max_mb=budget,
    )
    batch = _rollout(trainer)
    model = trainer.model
    model.zero_grad()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which this test bypasses
    loss = trainer._compute_loss(model, batch)
    loss.backward()
    chunked_grads = [p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    length = batch["completion_ids"].shape[1]
    logits = model(input_ids=ids, attention_mask=attention).logits[:, -length - 1 : -1]
    mask = batch["completion_mask"].float()
    direct = (token_entropy(logits) * mask).sum() / mask.sum()
    direct.backward()
    assert loss.item() == pytest.approx(direct.item(), rel=1e-5)
    for chunked, p in zip(chunked_grads, model.parameters()):
        assert torch.allclose(chunked, p.grad, atol=1e-6, rtol=1e-4)


def test_chunked_token_logprobs_match_sequence_logprob():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 8, generator=g, dtype=torch.float64)
    weight = torch.randn(11, 8, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 11, (3, 5), generator=g)
    got = chunked_token_logprobs(hidden, weight, None, ids, temperature=0.5, chunk_size=4)
    expected = sequence_logprob((hidden @ weight.T) / 0.5, ids).token_logprobs
    assert torch.allclose(got, expected, atol=1e-12)


def test_em_ft_kl_term_is_zero_at_start_and_logged(tiny_model_dir, tmp_path):
    trainer = _ft_trainer(tiny_model_dir, tmp_path, beta=0.5, max_steps=1)
    trainer.train()
    logs = trainer.state.log_history[0]
    assert logs["kl"] == pytest.approx(0.0, abs=1e-6)
    assert logs["loss"] == pytest.approx(logs["entropy"], rel=1e-4)


def _heldout_entropy(model_dir, prompts) -> float:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    _, entropies = generate_completions(model, tokenizer, prompts, temperature=1.0, seed=0, max_new_tokens=12)
    return sum(entropies) / len(entropies)


@pytest.mark.parametrize("method", ["em_ft", "em_rl_token"])
def test_entropy_falls_over_a_few_steps(tiny_model_dir, tmp_path, method):
    prompts = [p.prompt for p in make_problems("heldout", 16, seed=3)]
    before = _heldout_entropy(tiny_model_dir, prompts)
    if method == "em_ft":
        trainer = _ft_trainer(tiny_model_dir, tmp_path, learning_rate=3e-2, max_steps=6)
    else:
        # Rollouts of a random model differ little in entropy, so the reward is scaled up to move it fast.
        trainer = _rl_trainer(
            tiny_model_dir,
            tmp_path,
            learning_rate=3e-2,
            max_steps=6,
            reward_type="token",
            beta=0.0,
            reward_scale=10.0,
        )
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    after = _heldout_entropy(tmp_path / "final", prompts)
    # A random model starts near log(128) = 4.85 nats.
    assert before > 4.5
    assert after < before - 0.3, (before, after)


@pytest.mark.parametrize("method", ["em_rl", "em_ft"])
def test_resume_from_checkpoint_reproduces_losses(tiny_model_dir, tmp_path, method):
    build = _rl_trainer if method == "em_rl" else _ft_trainer
    settings = dict(max_steps=4, save_strategy="steps", save_steps=2, learning_rate=1e-3)
    full = build(tiny_model_dir, tmp_path / "full", **settings)
    full.train()
    full_losses = [h["loss"] for h in full.state.log_history if "loss" in h]
    assert len(full_losses) == 4

    resumed = build(tiny_model_dir, tmp_path / "full", **settings)  # same output_dir: reads checkpoint-2
    checkpoint = next((tmp_path / "full").glob("*/checkpoint-2"))
    resumed.train(resume_from_checkpoint=str(checkpoint))
    # The restored trainer state already holds steps 1-2; only steps 3-4 are computed after the resume.
    resumed_losses = [h["loss"] for h in resumed.state.log_history if "loss" in h and h["step"] > 2]
    assert len(resumed_losses) == 2
    assert resumed_losses == pytest.approx(full_losses[2:], rel=1e-5, abs=1e-6)


def test_dataset_without_prompt_column_is_rejected(tiny_model_dir, tmp_path):
    data = Dataset.from_dict({"question": ["Compute 1+2."]})
    with pytest.raises(ValueError, match="no 'prompt' column.*question"):
        EMRLTrainer(
            str(tiny_model_dir),
            args=EMRLConfig(**common_args(tmp_path, num_generations=2)),
            train_dataset=data,
        )
    with pytest.raises(ValueError, match="no 'prompt' column"):
        EMFTTrainer(str(tiny_model_dir), args=EMFTConfig(**common_args(tmp_path)), train_dataset=data)


def test_generation_count_must_divide_batch(tmp_path):
    with pytest.raises(ValueError, match="divisible by num_generations"):
        EMRLConfig(**common_args(tmp_path, per_device_train_batch_size=3, num_generations=2))
    with pytest.raises(ValueError, match="divisible by num_generations"):
        EMFTConfig(**common_args(tmp_path, per_device_train_batch_size=3, num_generations=2))


def test_config_rejects_bad_values(tmp_path):
    with pytest.raises(ValueError, match="reward_type"):
        EMRLConfig(**common_args(tmp_path, reward_type="trajectory"))
    with pytest.raises(ValueError, match="advantage_estimator"):
        EMRLConfig(**common_args(tmp_path, advantage_estimator="ppo"))
    with pytest.raises(ValueError, match="reward_scale"):
        EMRLConfig(**common_args(tmp_path, reward_scale=0.0))
    with pytest.raises(ValueError, match="num_generations must be >= 1"):
        EMFTConfig(**common_args(tmp_path, num_generations=0))
    with pytest.raises(ValueError, match="entropy_recompute_logits"):
        EMFTConfig(**common_args(tmp_path, entropy_recompute_logits="sometimes"))
    with pytest.raises(ValueError, match="entropy_keep_logits_max_mb"):
        EMFTConfig(**common_args(tmp_path, entropy_keep_logits_max_mb=-1))
    assert EMFTConfig(**common_args(tmp_path, per_device_train_batch_size=3)).num_generations == 1
    with pytest.raises(TypeError, match="EMRLConfig"):
        EMRLTrainer("unused", args=EMFTConfig(**common_args(tmp_path)), train_dataset=toy_prompt_dataset(2))


def test_tokenizer_without_pad_token(tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.pad_token = None
    trainer = EMRLTrainer(
        str(tiny_model_dir),
        args=EMRLConfig(**common_args(tmp_path, num_generations=2, max_steps=1)),
        train_dataset=toy_prompt_dataset(8),
        processing_class=tokenizer,
    )
    assert tokenizer.pad_token == tokenizer.eos_token
    trainer.train()

    bare = AutoTokenizer.from_pretrained(tiny_model_dir)
    bare.pad_token = None
    bare.eos_token = None
    with pytest.raises(ValueError, match="neither a pad token nor an EOS token"):
        EMFTTrainer(
            str(tiny_model_dir),
            args=EMFTConfig(**common_args(tmp_path)),
            train_dataset=toy_prompt_dataset(8),
            processing_class=bare,
        )
