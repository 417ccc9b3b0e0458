"""Labelled RL baselines (TRL's GRPO and RLOO, rewarded by the gold answer) beside label-free EM-RL.

The paper's claim 2: EM-RL with no labels is comparable to GRPO and RLOO trained with labels. Every run
here starts from the same toy checkpoint, trains on the same train-split prompts with the shared toy-run
settings of `emreason.trainers.toy_runs` (8 prompts x 4 rollouts per optimizer step, T = 1.0, at most 40
new tokens, constant lr, AdamW, KL coefficient 0.001, float32 on CPU) and the same number of optimizer
steps, and is evaluated on the same held-out problems, greedy and at T = 1.0, with Wilson 95% intervals.

- ``grpo``: `trl.GRPOTrainer` with TRL's GRPO defaults (group-mean baseline, per-group std scaling) and a
  correctness reward that reads the gold answer (1 if the final ``\\boxed{}`` equals it, else 0);
- ``rloo``: `trl.RLOOTrainer` (leave-one-out baseline, TRL's defaults) with the same reward;
- ``em_rl_sequence``, ``em_rl_token``: `EMRLTrainer` via `toy_runs.train_on_toy`, negative-entropy
  reward with per-token mean aggregation; these never see an answer.

These labelled runs are the only ones in the project that see labels.

    OMP_NUM_THREADS=1 python benchmarks/labelled_baselines.py [--regime shortcut] [--steps 40]
        [--labelled-lrs 3e-5,1e-4,3e-4] [--em-lr 1e-4] [--methods grpo,rloo,em_rl_sequence,em_rl_token]
        [--n-eval 300] [--output results.json]

GRPO and RLOO are swept over ``--labelled-lrs`` (the labelled baselines get the benefit of tuning); EM-RL
uses the regime's chosen settings (`toy_runs.toy_defaults`: learning rate, mean aggregation) unless
``--em-lr`` is given. Differences are taken between each method's best run by greedy accuracy.

Prints one JSON object: per run its settings, train seconds, greedy and T=1.0 accuracy with CIs, route
fractions and per-route accuracy; the best run per method; and EM-RL minus GRPO / RLOO in points.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emreason.atomic_io import write_json_atomic
from emreason.toy.measure import describe

LABELLED = ("grpo", "rloo")
LABEL_FREE = ("em_rl_sequence", "em_rl_token")
ALL_METHODS = LABELLED + LABEL_FREE


def correctness_reward(completions: list, answer: list[int], **_: Any) -> list[float]:
    """1.0 when a completion's final ``\\boxed{}`` integer equals the gold ``answer``, else 0.0.

    ``completions`` are chat message lists (conversational prompts) or plain strings; ``answer`` is the
    dataset column of the same name, which TRL passes through to reward functions.
    """
    from emreason.toy.task import grade

    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [1.0 if grade(text, int(gold)) else 0.0 for text, gold in zip(texts, answer)]


def regime_model_dir(regime: str) -> tuple[Path, tuple[int, ...]]:
    """Checkpoint directory and levels of toy ``regime`` (ValueError naming the valid regimes)."""
    from emreason import toy

    spec = toy.get_regime(regime)
    return Path(toy.model_path(spec.name)), tuple(spec.levels)


def labelled_dataset(n: int, seed: int, levels: tuple[int, ...]):
    """``n`` train-split chat prompts with their gold ``answer`` column (for the labelled runs only)."""
    from datasets import Dataset

    from emreason.toy.task import make_problems

    problems = make_problems("train", n, seed=seed, levels=levels)
    return Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": p.prompt}] for p in problems],
            "answer": [int(p.answer) for p in problems],
        }
    )


def shared_settings(steps: int, learning_rate: float) -> dict[str, Any]:
    """The toy runs' shared config fields (as EM-RL uses them), minus the EM-RL-only reward fields."""
    from emreason.trainers.toy_runs import toy_settings

    settings = toy_settings("em_rl_sequence", steps=steps, learning_rate=learning_rate)
    for key in ("reward_type", "reward_aggregation"):
        settings.pop(key, None)
    settings.update(temperature=1.0, beta=0.001)  # EMRLConfig's defaults: same sampling and KL for all
    return settings


def _quiet(trainer) -> None:
    """Drop the per-log-step dict printing (disable_tqdm makes transformers print every log)."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def train_labelled(
    method: str,
    model_dir: Path,
    output: Path,
    *,
    steps: int,
    learning_rate: float,
    seed: int,
    levels: tuple[int, ...],
    verbose: bool,
) -> Path:
    """Train ``grpo`` or ``rloo`` with the correctness reward; the model is saved to ``output``."""
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    config_class, trainer_class = (GRPOConfig, GRPOTrainer) if method == "grpo" else (RLOOConfig, RLOOTrainer)
    scratch = Path(tempfile.mkdtemp(prefix=f"{method}-", dir=output.parent))
    try:
        settings = shared_settings(steps, learning_rate)
        config = config_class(output_dir=str(scratch / "run"), seed=seed, **settings)
        # The same prompt stream as toy_runs.train_on_toy draws for EM-RL (seed + 1, as many prompts).
        prompts_needed = steps * config.generation_batch_size // config.num_generations
        dataset = labelled_dataset(max(prompts_needed, 64), seed + 1, levels)
        trainer = trainer_class(
            str(model_dir),
            reward_funcs=correctness_reward,
            args=config,
            train_dataset=dataset,
            processing_class=AutoTokenizer.from_pretrained(model_dir),
        )
        if not verbose:
            _quiet(trainer)
        trainer.train()
        staged = scratch / "model"
        trainer.save_model(str(staged))
        trainer.processing_class.save_pretrained(str(staged))
        if output.exists():
            shutil.rmtree(output)
        os.replace(staged, output)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return output


def train_label_free(
    method: str,
    model_dir: Path,
    output: Path,
    *,
    steps: int,
    learning_rate: float,
    seed: int,
    regime: str,
    verbose: bool,
    extra: dict[str, Any],
) -> Path:
    """EM-RL through `toy_runs.train_on_toy` (its regime's prompts; ``extra``: e.g. reward_aggregation)."""
    from emreason.trainers import toy_runs

    return toy_runs.train_on_toy(
        method,
        output,
        model_path=model_dir,
        steps=steps,
        learning_rate=learning_rate,
        seed=seed,
        regime=regime,
        quiet=not verbose,
        **extra,
    )


def evaluate(model_dir: Path, n_eval: int, levels: tuple[int, ...], seed: int) -> dict[str, Any]:
    """Greedy and T=1.0 held-out accuracy (Wilson 95%), route fractions and per-route accuracy."""
    from emreason import toy
    from emreason.toy.evaluate import evaluate_toy

    model, tokenizer = toy.load_model(model_dir)
    problems = toy.make_problems("heldout", n_eval, levels=levels)
    out = {}
    for label, temperature in (("greedy", 0.0), ("T=1.0", 1.0)):
        result = evaluate_toy(model, tokenizer, problems, temperature=temperature, seed=seed)
        # accuracy + Wilson CI, mean token entropy, per-route fraction/accuracy (as the sweep reports)
        out[label] = describe(result)
    return out


def _lr_list(text: str) -> list[float]:
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values or any(not v > 0 for v in values):
        raise ValueError(f"learning rates must be positive numbers, got {text!r}")
    return values


def _best(runs: dict[str, Any], method: str) -> tuple[str, dict[str, Any]] | None:
    """The run of ``method`` with the highest greedy accuracy (ties: the smaller learning rate)."""
    mine = [(k, v) for k, v in runs.items() if v.get("method") == method]
    if not mine:
        return None
    return max(mine, key=lambda kv: (kv[1]["eval"]["greedy"]["accuracy"], -kv[1]["learning_rate"]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regime", default="shortcut", help="toy regime (default: shortcut = regime 2)")
    parser.add_argument("--methods", default=",".join(ALL_METHODS), help=f"subset of {ALL_METHODS}")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps, every method")
    parser.add_argument(
        "--labelled-lrs", default="3e-5,1e-4,3e-4", help="learning rates swept for GRPO and RLOO"
    )
    parser.add_argument(
        "--em-lr", default=None, help="EM-RL learning rates (default: toy_runs.toy_defaults of the regime)"
    )
    parser.add_argument("--n-eval", type=int, default=300, help="held-out problems")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--eval-seed", type=int, default=1234, help="T=1.0 evaluation sampling seed")
    parser.add_argument("--no-base", action="store_true", help="skip evaluating the starting checkpoint")
    parser.add_argument("--workdir", default=None, help="where trained models go (default: a temp dir)")
    parser.add_argument("--output", default=None, help="also write the JSON here")
    parser.add_argument("--verbose", action="store_true", help="trainer logs and library warnings")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(ALL_METHODS)}")
    if args.steps < 1 or args.n_eval < 1:
        parser.error("--steps and --n-eval must be >= 1")
    try:
        labelled_lrs = _lr_list(args.labelled_lrs)
        em_lrs = _lr_list(args.em_lr) if args.em_lr else None
        model_dir, levels = regime_model_dir(args.regime)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    if not args.verbose:
        warnings.filterwarnings("ignore")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    import torch
    from tqdm import tqdm

    from emreason.trainers.toy_runs import toy_defaults

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    plan: list[tuple[str, float, dict[str, Any]]] = []
    for method in methods:
        if method in LABELLED:
            plan += [(method, lr, {}) for lr in labelled_lrs]
        else:
            chosen = toy_defaults(method, args.regime)
            chosen.pop("steps", None)
            default_lr = chosen.pop("learning_rate")
            plan += [(method, lr, chosen) for lr in (em_lrs or [default_lr])]
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="labelled-baselines-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "benchmark": "labelled_baselines",
        "regime": args.regime,
        "levels": list(levels),
        "steps": args.steps,
        "seed": args.seed,
        "n_eval": args.n_eval,
        "eval_seed": args.eval_seed,
        "shared_settings": {
            k: v for k, v in shared_settings(args.steps, 1e-4).items() if k != "learning_rate"
        },
        "runs": {},
    }
    if not args.no_base:
        report["runs"]["base"] = {
            "method": "base",
            "eval": evaluate(model_dir, args.n_eval, levels, args.eval_seed),
        }
    for method, lr, extra in tqdm(plan, desc="training", unit="run", disable=args.verbose):
        began = time.perf_counter()
        output = workdir / f"{method}-lr{lr:g}"
        if method in LABELLED:
            trained = train_labelled(
                method,
                model_dir,
                output,
                steps=args.steps,
                learning_rate=lr,
                seed=args.seed,
                levels=levels,
                verbose=args.verbose,
            )
        else:
            trained = train_label_free(
                method,
                model_dir,
                output,
                steps=args.steps,
                learning_rate=lr,
                seed=args.seed,
                regime=args.regime,
                verbose=args.verbose,
                extra=extra,
            )
        seconds = time.perf_counter() - began
        report["runs"][f"{method}@lr={lr:g}"] = {
            "method": method,
            "labels": method in LABELLED,
            "learning_rate": lr,
            "config_extra": extra,
            "train_seconds": round(seconds, 1),
            "eval": evaluate(trained, args.n_eval, levels, args.eval_seed),
        }
        shutil.rmtree(trained, ignore_errors=True)
        if args.output:  # partial results survive a crash
            write_json_atomic(Path(args.output), report, sort_keys=True)
    best = {m: _best(report["runs"], m) for m in methods}
    report["best"] = {m: b[0] for m, b in best.items() if b is not None}
    differences = {}
    for em in LABEL_FREE:
        for labelled in LABELLED:
            if best.get(em) and best.get(labelled):
                for decoding in ("greedy", "T=1.0"):
                    a = best[em][1]["eval"][decoding]["accuracy"]
                    b = best[labelled][1]["eval"][decoding]["accuracy"]
                    differences[f"{em} - {labelled} ({decoding}), points"] = round(100 * (a - b), 2)
    report["differences_vs_best_lr"] = differences
    if args.output:
        write_json_atomic(Path(args.output), report, sort_keys=True)
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
