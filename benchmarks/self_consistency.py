"""Self-consistency (maj@k) against EM-INF and greedy at matched compute, on the bundled toy regimes.

Per regime, on the same held-out problems:

- **maj@k**, k = 1, 2, 4, 8, 16: majority vote over k samples at T = 1.0 (``evals.metrics.maj_at_k``:
  integer answers, ties to the answer seen first, unanswered samples abstain; disjoint blocks of the
  ``k_max`` samples drawn per problem);
- **EM-INF** with the authors' evaluation settings (3 Adam steps, lr 0.1, threshold 0.3, KL weight 0.05),
  then sampling at T = 1.0 and, as the authors evaluated it, at T = 0.1; plain T = 0.1 sampling beside it;
- **greedy** decoding.

Compute is counted per problem as generated tokens (up to and including EOS) and as model forward passes
(one prefill per sample plus one per generated token after the first; with a KV cache each costs about one
token's forward). EM-INF's own overhead is a few Adam steps on the ``[V]`` logits per token (V = 128
here), not a model forward; it is reported as measured wall time. The *compute ratio* is maj@k's tokens
divided by EM-INF's at the smallest k whose maj@k reaches EM-INF's accuracy (and, log-linearly
interpolated between the k on either side, the crossing point).

    OMP_NUM_THREADS=1 python benchmarks/self_consistency.py [--n-problems 250] [--regimes default,shortcut]
        [--plot docs/self_consistency.png] [--output results.json]

Prints one JSON object (also written to ``--output``); the figure shows one panel per regime.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from emreason.evals.metrics import bootstrap_ci, maj_at_k, pass_at_k
from transformers import LogitsProcessorList

from emreason.atomic_io import write_json_atomic
from emreason.em_inf import EMInfConfig
from emreason.integrations.transformers import EMInfLogitsProcessor
from emreason.toy.evaluate import generate_toy, wilson_interval
from emreason.toy.routes import route_fractions
from emreason.toy.task import ToyProblem, extract_answer

AUTHORS_EM_INF = EMInfConfig(steps=3, lr=0.1, threshold=0.3, kl_weight=0.05)
# Elementwise operations per vocabulary entry in one EM-INF Adam step (log-softmax, exp, p log p, its sum,
# the gradient, both moments, the update): an upper bound that counts every step as taken.
EM_INF_OPS_PER_ENTRY_STEP = 20


def flops_per_token(model, em_inf: EMInfConfig | None) -> float:
    """Approximate FLOPs per generated token: 2 x parameters for the model (attention over these short
    contexts is negligible), plus EM-INF's logit optimisation when it is on."""
    model_flops = 2.0 * sum(p.numel() for p in model.parameters())
    if em_inf is None:
        return model_flops
    return model_flops + em_inf.steps * EM_INF_OPS_PER_ENTRY_STEP * model.config.vocab_size


def regime_names() -> list[str]:
    """The toy regimes this checkout ships (`emreason.toy.REGIME_NAMES`)."""
    from emreason.toy import REGIME_NAMES

    return list(REGIME_NAMES)


def load_regime(name: str) -> tuple[Any, Any, tuple[int, ...]]:
    """``(model, tokenizer, held-out levels)`` of toy regime ``name`` (ValueError naming the valid ones)."""
    from emreason import toy

    spec = toy.get_regime(name)
    model, tokenizer = toy.load_model(regime=spec.name)
    return model, tokenizer, tuple(spec.levels)


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    temperature: float,
    seed: int,
    max_new_tokens: int,
    batch_size: int,
    em_inf: EMInfConfig | None = None,
) -> tuple[list[str], list[int]]:
    """Completions and their generated-token counts (up to and including the first EOS).

    ``temperature`` 0 is greedy. Seeded once per call, so a fixed (prompts, batch_size, seed) reproduces.
    """
    processors = LogitsProcessorList([EMInfLogitsProcessor(em_inf)]) if em_inf is not None else None
    result = generate_toy(
        model,
        tokenizer,
        prompts,
        temperature=temperature,
        seed=seed,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        logits_processor=processors,
    )
    return result.completions, result.token_counts


def _single_sample_point(
    name: str,
    problems: list[ToyProblem],
    texts: list[str],
    counts: list[int],
    seconds: float,
    samples: int,
    flops: float,
) -> dict[str, Any]:
    """Accuracy of one-sample decoding, from ``samples`` independent draws per problem (problem-major)."""
    n = len(problems)
    correct = np.array(
        [extract_answer(t) == problems[i // samples].answer for i, t in enumerate(texts)], dtype=float
    ).reshape(n, samples)
    per_problem = correct.mean(1)
    if samples == 1:
        low, high = wilson_interval(int(correct.sum()), n)
    else:
        low, high = bootstrap_ci(per_problem)
    tokens = float(np.mean(counts))
    return {
        "method": name,
        "accuracy": float(per_problem.mean()),
        "ci95": [low, high],
        "ci_method": "wilson" if samples == 1 else "bootstrap over problems",
        "n_problems": n,
        "samples_per_problem": samples,
        "tokens_per_problem": tokens,
        "forward_passes_per_problem": tokens,  # one sample: 1 prefill + (tokens - 1) decode steps
        "flops_per_problem": tokens * flops,
        "seconds_per_answer": seconds / (n * samples),
        "routes": route_fractions(texts),
    }


def _crossing(curve: list[dict[str, Any]], reference: dict[str, Any]) -> dict[str, Any]:
    """The smallest k whose maj@k reaches ``reference``'s accuracy, the token and FLOP ratios there, and
    the token ratio at the log-linearly interpolated crossing."""
    target, tokens = reference["accuracy"], reference["tokens_per_problem"]
    previous = None
    for point in curve:
        if point["accuracy"] >= target:
            ratio = point["tokens_per_problem"] / tokens
            interpolated = ratio
            if previous is not None and point["accuracy"] > previous["accuracy"]:
                # Log-linear in tokens between the k just below and the k that reaches the target.
                fraction = (target - previous["accuracy"]) / (point["accuracy"] - previous["accuracy"])
                log_t = math.log(previous["tokens_per_problem"]) + fraction * (
                    math.log(point["tokens_per_problem"]) - math.log(previous["tokens_per_problem"])
                )
                interpolated = math.exp(log_t) / tokens
            return {
                "first_k": point["k"],
                "token_ratio": ratio,
                "flop_ratio": point["flops_per_problem"] / reference["flops_per_problem"],
                "interpolated_token_ratio": interpolated,
            }
        previous = point
    last = curve[-1]
    return {
        "first_k": None,
        "token_ratio": None,
        "note": f"maj@{last['k']} ({last['accuracy']:.4f}) stays below {target:.4f}: ratio > "
        f"{last['tokens_per_problem'] / tokens:.2f}",
    }


def run_regime(
    name: str,
    *,
    n_problems: int,
    k_max: int,
    em_samples: int,
    seed: int,
    max_new_tokens: int,
    batch_size: int,
    levels: tuple[int, ...] | None,
    progress: bool,
) -> dict[str, Any]:
    from tqdm import tqdm

    from emreason.toy.task import make_problems

    model, tokenizer, regime_levels = load_regime(name)
    problems = make_problems("heldout", n_problems, levels=levels or regime_levels)
    prompts = [p.prompt for p in problems]
    options = dict(max_new_tokens=max_new_tokens, batch_size=batch_size)
    phases = ["greedy", f"T=1.0 x{k_max}", "T=0.1", "EM-INF T=1.0", "EM-INF T=0.1 (authors)"]
    bar = tqdm(total=len(phases), desc=f"{name}: decoding", unit="run", disable=not progress)
    points = []

    began = time.perf_counter()
    texts, counts = generate(model, tokenizer, prompts, temperature=0.0, seed=seed, **options)
    seconds = time.perf_counter() - began
    points.append(
        _single_sample_point("greedy", problems, texts, counts, seconds, 1, flops_per_token(model, None))
    )
    bar.update()

    repeated = [p for p in prompts for _ in range(k_max)]  # problem-major: sample j of problem i at i*k+j
    began = time.perf_counter()
    texts, counts = generate(model, tokenizer, repeated, temperature=1.0, seed=seed + 1, **options)
    sample_seconds = time.perf_counter() - began
    bar.update()
    answers = [extract_answer(t) for t in texts]
    verdicts = [a == problems[i // k_max].answer for i, a in enumerate(answers)]
    counts_array = np.array(counts, dtype=float).reshape(len(problems), k_max)
    curve = []
    k = 1
    while k <= k_max:
        per_problem = [
            maj_at_k(answers[i * k_max : (i + 1) * k_max], verdicts[i * k_max : (i + 1) * k_max], k)
            for i in range(len(problems))
        ]
        pass_k = [
            pass_at_k(k_max, sum(verdicts[i * k_max : (i + 1) * k_max]), k) for i in range(len(problems))
        ]
        low, high = bootstrap_ci(per_problem)
        tokens = float(counts_array.mean() * k)
        curve.append(
            {
                "k": k,
                "accuracy": float(np.mean(per_problem)),
                "ci95": [low, high],
                "pass_at_k": float(np.mean(pass_k)),
                "tokens_per_problem": tokens,
                "forward_passes_per_problem": tokens,  # k prefills + k * (tokens - 1) decode steps
                "flops_per_problem": tokens * flops_per_token(model, None),
                "seconds_per_problem": sample_seconds / len(problems) * k / k_max,
            }
        )
        k *= 2
    sampled_routes = route_fractions(texts)

    for label, temperature, config in (
        ("T=0.1", 0.1, None),
        ("EM-INF T=1.0", 1.0, AUTHORS_EM_INF),
        ("EM-INF T=0.1 (authors)", 0.1, AUTHORS_EM_INF),
    ):
        repeated = [p for p in prompts for _ in range(em_samples)]
        began = time.perf_counter()
        texts, counts = generate(
            model, tokenizer, repeated, temperature=temperature, seed=seed + 2, em_inf=config, **options
        )
        points.append(
            _single_sample_point(
                label,
                problems,
                texts,
                counts,
                time.perf_counter() - began,
                em_samples,
                flops_per_token(model, config),
            )
        )
        bar.update()
    bar.close()

    crossings = {}
    for point in points:
        if point["method"].startswith("EM-INF") or point["method"] == "greedy":
            within = next((p for p in curve if p["ci95"][1] >= point["accuracy"]), None)
            crossings[point["method"]] = {
                "accuracy": point["accuracy"],
                **_crossing(curve, point),
                # A looser reading of "matches": the target lies inside maj@k's 95% interval.
                "first_k_within_ci": None if within is None else within["k"],
                "token_ratio_within_ci": None
                if within is None
                else within["tokens_per_problem"] / point["tokens_per_problem"],
            }
    return {
        "regime": name,
        "levels": list(levels or regime_levels),
        "n_problems": len(problems),
        "maj_at_k": curve,
        "sampled_routes": sampled_routes,
        "single_answer": points,
        "maj_matches": crossings,
    }


def plot(results: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """One panel per regime: accuracy (%) against generated tokens per problem (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 3.9), squeeze=False)
    markers = {"greedy": "s", "T=0.1": "v", "EM-INF T=1.0": "D", "EM-INF T=0.1 (authors)": "*"}
    for axis, result in zip(axes[0], results):
        curve = result["maj_at_k"]
        x = [p["tokens_per_problem"] for p in curve]
        y = [100 * p["accuracy"] for p in curve]
        err = [
            [100 * (p["accuracy"] - p["ci95"][0]) for p in curve],
            [100 * (p["ci95"][1] - p["accuracy"]) for p in curve],
        ]
        axis.errorbar(x, y, yerr=err, marker="o", capsize=3, label="maj@k (T=1.0)")
        for p, xi, yi in zip(curve, x, y):
            axis.annotate(f"k={p['k']}", (xi, yi), textcoords="offset points", xytext=(4, -11), fontsize=7)
        for point in result["single_answer"]:
            low, high = point["ci95"]
            axis.errorbar(
                [point["tokens_per_problem"]],
                [100 * point["accuracy"]],
                yerr=[[100 * (point["accuracy"] - low)], [100 * (high - point["accuracy"])]],
                marker=markers.get(point["method"], "x"),
                markersize=9 if point["method"].endswith("(authors)") else 6,
                capsize=3,
                linestyle="none",
                label=point["method"],
            )
        axis.set_xscale("log", base=2)
        axis.set_xlabel("generated tokens per problem (= forward passes)")
        axis.set_ylabel("accuracy (%)")
        axis.set_title(
            f"toy regime '{result['regime']}' ({result['n_problems']} held-out problems)", fontsize=9
        )
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(scratch, dpi=120)
    os.replace(scratch, path)  # atomic: never a half-written figure
    plt.close(figure)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regimes", default=None, help="comma-separated toy regimes (default: all shipped)")
    parser.add_argument("--n-problems", type=int, default=250, help="held-out problems per regime")
    parser.add_argument("--k-max", type=int, default=16, help="samples per problem for maj@k (power of 2)")
    parser.add_argument("--em-samples", type=int, default=4, help="draws per problem for one-sample methods")
    parser.add_argument("--levels", default=None, help="override the regime's held-out levels, e.g. 2,3")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default="docs/self_consistency.png", help="PNG path")
    parser.add_argument("--output", default=None, help="also write the JSON here")
    parser.add_argument(
        "--reuse", default=None, help="JSON of an earlier run: its regimes are kept, not rerun (same options)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--verbose", action="store_true", help="keep library warnings")
    args = parser.parse_args(argv)
    if args.n_problems < 1:
        parser.error(f"--n-problems must be >= 1, got {args.n_problems}")
    if args.k_max < 1 or args.k_max & (args.k_max - 1):
        parser.error(f"--k-max must be a power of 2, got {args.k_max}")
    if args.em_samples < 1:
        parser.error(f"--em-samples must be >= 1, got {args.em_samples}")
    names = [n.strip() for n in args.regimes.split(",")] if args.regimes else regime_names()
    levels = tuple(int(v) for v in args.levels.split(",")) if args.levels else None
    if not args.verbose:
        warnings.filterwarnings("ignore")
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    earlier = json.loads(Path(args.reuse).read_text())["regimes"] if args.reuse else {}
    results = []
    for name in names:
        if name in earlier:
            results.append(earlier[name])
            continue
        try:
            results.append(
                run_regime(
                    name,
                    n_problems=args.n_problems,
                    k_max=args.k_max,
                    em_samples=args.em_samples,
                    seed=args.seed,
                    max_new_tokens=args.max_new_tokens,
                    batch_size=args.batch_size,
                    levels=levels,
                    progress=not args.quiet,
                )
            )
        except (ValueError, FileNotFoundError) as exc:
            parser.error(str(exc))
    report = {
        "benchmark": "self_consistency",
        "em_inf_config": {"steps": 3, "lr": 0.1, "threshold": 0.3, "kl_weight": 0.05},
        "seed": args.seed,
        "regimes": {r["regime"]: r for r in results},
        "plot": str(plot(results, args.plot)),
    }
    if args.output:
        write_json_atomic(Path(args.output), report, sort_keys=True)
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
