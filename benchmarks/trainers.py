"""Speed/memory of the EM trainers against their baselines, measured in the same run; prints one JSON object.

- EM-FT step (forward with hidden states + chunked entropy + backward) vs a plain cross-entropy SFT step on
  the same model and batch: time ratio (goal <= 1.10) and peak-memory ratio (goal <= 1.0). Peak memory is
  the rise of the process's resident-set high-water mark during the step, each variant measured in a
  fresh subprocess (CPU) or torch.cuda.max_memory_allocated (GPU). Variants: ``em_ft`` (the default
  ``entropy_recompute_logits="auto"``, which keeps the logits at these sizes) and ``em_ft_recompute``
  (``"true"``). Interleaved rounds (one subprocess per variant per round); step time is the minimum over
  rounds of each round's median, peak memory the minimum over rounds; the load average is reported.
- EM-RL trainer step vs TRL's GRPOTrainer with a constant rule reward at the same settings (goal <= 1.05).
  A tiny learning rate keeps both models, hence both trainers' rollouts, identical.

    OMP_NUM_THREADS=1 python benchmarks/trainers.py [--quick]
    OMP_NUM_THREADS=1 python benchmarks/trainers.py --quick --shapes vocab151936 --em-rl-models qwen_format
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# Model shapes: the toy model (vocabulary 128) and one whose vocabulary dominates memory, as in real LMs.
SHAPES = {
    "toy_vocab128": dict(vocab=128, hidden=192, layers=4, heads=6, kv_heads=2, intermediate=768),
    "vocab32k": dict(vocab=32768, hidden=256, layers=2, heads=4, kv_heads=2, intermediate=512),
    # Qwen2.5's vocabulary (the Qwen2.5-format fixture's head) over a small body.
    "vocab151936": dict(vocab=151_936, hidden=256, layers=2, heads=4, kv_heads=2, intermediate=512),
}
EM_FT_BATCHES = {  # (batch, prompt tokens, completion tokens)
    "toy_vocab128": (8, 32, 96),
    "vocab32k": (4, 64, 448),
    "vocab151936": (2, 64, 448),
}


def _build_model_dir(shape: dict, directory: Path) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from emreason.toy.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    config = Qwen2Config(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        intermediate_size=shape["intermediate"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        head_dim=shape["hidden"] // shape["heads"],
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _batch(vocab: int, batch: int, prompt: int, completion: int) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "prompt_ids": torch.randint(5, min(vocab, 100), (batch, prompt), generator=g),
        "prompt_mask": torch.ones(batch, prompt, dtype=torch.long),
        "completion_ids": torch.randint(5, min(vocab, 100), (batch, completion), generator=g),
        "completion_mask": torch.ones(batch, completion, dtype=torch.long),
        "num_items_in_batch": torch.tensor(float(batch * completion)),
    }


def _em_ft_trainer(model_dir: Path, output_dir: Path, recompute_logits: str = "auto"):
    from transformers import AutoTokenizer

    from emreason.trainers import EMFTConfig, EMFTTrainer
    from emreason.trainers.toy_runs import toy_prompt_dataset

    args = EMFTConfig(
        output_dir=str(output_dir),
        bf16=False,
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=False,
        report_to="none",
        per_device_train_batch_size=2,
        entropy_chunk_size=1024,
        entropy_recompute_logits=recompute_logits,
    )
    trainer = EMFTTrainer(
        str(model_dir),
        args=args,
        train_dataset=toy_prompt_dataset(4),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
    )
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.train()
    return trainer


def _step(variant: str, trainer, inputs: dict) -> None:
    model = trainer.model
    if variant == "sft":
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
        labels = ids.clone()
        labels[:, : inputs["prompt_ids"].shape[1]] = -100
        # The same attention mask as the EM-FT step (a padded SFT batch carries one too).
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
        loss = model(input_ids=ids, attention_mask=attention_mask, labels=labels).loss
    else:
        loss = trainer._compute_loss(model, inputs)
    loss.backward()
    model.zero_grad(set_to_none=True)


def _measure_one(
    variant: str, model_dir: str, batch: int, prompt: int, completion: int, repeats: int
) -> dict:
    """Runs in a fresh subprocess: step time (median) and peak memory rise of one variant."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        recompute = "true" if variant == "em_ft_recompute" else "auto"
        trainer = _em_ft_trainer(Path(model_dir), Path(scratch), recompute)
        vocab = trainer.model.config.vocab_size
        device = trainer.accelerator.device
        inputs = {k: v.to(device) for k, v in _batch(vocab, batch, prompt, completion).items()}
        cuda = device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        _step(variant, trainer, inputs)  # first step: the memory high-water mark
        if cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            _step(variant, trainer, inputs)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return {"step_s": statistics.median(times), "peak_bytes": peak}


VARIANTS = ("sft", "em_ft", "em_ft_recompute")


def em_ft_vs_sft(
    shape_name: str, batch: int, prompt: int, completion: int, repeats: int, rounds: int
) -> dict:
    runs: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
    with tempfile.TemporaryDirectory() as directory:
        model_dir = _build_model_dir(SHAPES[shape_name], Path(directory) / "model")
        for _ in range(rounds):  # interleaved: a load change on the shared machine hits every variant
            for variant in VARIANTS:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--measure",
                        variant,
                        str(model_dir),
                        str(batch),
                        str(prompt),
                        str(completion),
                        str(repeats),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                runs[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = {
        variant: {
            "step_s": min(r["step_s"] for r in results),
            "peak_bytes": min(r["peak_bytes"] for r in results),
            "step_s_per_round": [round(r["step_s"], 3) for r in results],
        }
        for variant, results in runs.items()
    }
    report = {
        "shape": SHAPES[shape_name]
        | {"batch": batch, "prompt_tokens": prompt, "completion_tokens": completion},
    } | best
    for variant in VARIANTS[1:]:
        report[f"{variant}_time_ratio"] = best[variant]["step_s"] / best["sft"]["step_s"]
        report[f"{variant}_memory_ratio"] = best[variant]["peak_bytes"] / max(best["sft"]["peak_bytes"], 1)
    return report


def constant_reward(prompts, completions, **kwargs) -> list[float]:
    return [1.0] * len(prompts)


def em_rl_vs_grpo(steps: int, model: str = "toy") -> dict:
    """``model``: ``"toy"`` (vocabulary 128) or ``"qwen_format"`` (the fixture, vocabulary 151,936)."""
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from emreason.toy import model_path, qwen_format_path
    from emreason.trainers import EMRLConfig, EMRLTrainer
    from emreason.trainers.toy_runs import toy_prompt_dataset, toy_settings

    source = model_path() if model == "toy" else qwen_format_path()
    settings = toy_settings("em_rl_sequence", steps=steps, learning_rate=1e-12)
    shared = {k: v for k, v in settings.items() if k != "reward_type"} | dict(
        beta=0.001, temperature=1.0, scale_rewards="none", logging_steps=1, seed=0
    )
    data = toy_prompt_dataset(steps * 8 + 8, seed=1)
    timings: dict[str, list[float]] = {"grpo_constant_reward": [], "em_rl": []}
    with tempfile.TemporaryDirectory() as scratch:
        # Interleaved rounds, minimum step time: robust to other load on a shared machine.
        for name in ("grpo_constant_reward", "em_rl") * 3:
            tokenizer = AutoTokenizer.from_pretrained(source)
            if name.startswith("grpo"):
                trainer = GRPOTrainer(
                    str(source),
                    reward_funcs=constant_reward,
                    train_dataset=data,
                    args=GRPOConfig(output_dir=f"{scratch}/{name}", **shared),
                    processing_class=tokenizer,
                )
            else:
                trainer = EMRLTrainer(
                    str(source),
                    train_dataset=data,
                    processing_class=tokenizer,
                    args=EMRLConfig(output_dir=f"{scratch}/{name}", **shared),
                )
            with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the one JSON object
                trainer.train()
            step_times = [h["step_time"] for h in trainer.state.log_history if "step_time" in h]
            timings[name].extend(step_times[1:])  # the first step includes warm-up
    best = {name: min(times) for name, times in timings.items()}
    return {"model": model, "min_step_s": best, "time_ratio": best["em_rl"] / best["grpo_constant_reward"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer repeats and steps")
    parser.add_argument("--measure", nargs=6, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved EM-FT/SFT rounds")
    parser.add_argument("--shapes", nargs="+", default=["toy_vocab128", "vocab32k"], choices=sorted(SHAPES))
    parser.add_argument(
        "--em-rl-models", nargs="*", default=["toy"], choices=["toy", "qwen_format"], help="none: skip EM-RL"
    )
    options = parser.parse_args()
    if options.measure:
        variant, model_dir, batch, prompt, completion, repeats = options.measure
        print(
            json.dumps(
                _measure_one(variant, model_dir, int(batch), int(prompt), int(completion), int(repeats))
            )
        )
        return
    torch.set_num_threads(1)
    repeats = 3 if options.quick else 7
    load_before = os.getloadavg()
    report = {
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "em_ft_vs_sft": {
            name: em_ft_vs_sft(name, *EM_FT_BATCHES[name], repeats=repeats, rounds=options.rounds)
            for name in options.shapes
        },
        "em_rl_vs_grpo_constant_reward": {
            model: em_rl_vs_grpo(steps=4 if options.quick else 8, model=model)
            for model in options.em_rl_models
        },
        "load_average_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "goals": {"em_ft_time_ratio": 1.10, "em_ft_memory_ratio": 1.0, "em_rl_time_ratio": 1.05},
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
