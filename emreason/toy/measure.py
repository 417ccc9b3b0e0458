"""What a toy checkpoint does under each decoding: accuracy with 95% Wilson intervals and routes.

`measure_model` reports, on held-out problems:

* ``greedy`` and ``T=1.0`` accuracy, with the fraction of outputs taking each route
  (`emreason.toy.routes`) and the accuracy within each route;
* ``pass@k`` (k samples at T = 1.0 per problem, right if any is right);
* ``forced step-by-step greedy`` (the ceiling): greedy with the shortcut's first token banned.

Used by `recipes/measure_toy.py`, `recipes/sweep_toy_em.py` and the regime-2 tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import LogitsProcessorList

from emreason.toy.evaluate import ToyEvalResult, evaluate_toy, generate_completions, wilson_interval
from emreason.toy.routes import ROUTES, ForceStepByStep, route_of
from emreason.toy.task import ToyProblem, grade


def accuracy_row(correct: Sequence[bool]) -> dict[str, Any]:
    """``{"accuracy", "ci_low", "ci_high", "n"}`` of a list of per-problem outcomes (fractions 0..1)."""
    n, hits = len(correct), sum(bool(c) for c in correct)
    low, high = wilson_interval(hits, n)
    return {"accuracy": hits / n if n else 0.0, "ci_low": low, "ci_high": high, "n": n}


def route_breakdown(completions: Sequence[str], correct: Sequence[bool]) -> dict[str, dict[str, Any]]:
    """Per route: fraction of completions on it and accuracy within it (None when it is empty)."""
    if len(completions) != len(correct):
        raise ValueError(f"{len(completions)} completions but {len(correct)} outcomes")
    routes = [route_of(c) for c in completions]
    out = {}
    for route in ROUTES:
        on_route = [ok for r, ok in zip(routes, correct) if r == route]
        out[route] = {
            "fraction": len(on_route) / len(routes) if routes else 0.0,
            "accuracy": sum(on_route) / len(on_route) if on_route else None,
            "n": len(on_route),
        }
    return out


def describe(result: ToyEvalResult) -> dict[str, Any]:
    """Accuracy row + mean token entropy + route breakdown of one `evaluate_toy` result."""
    return {
        **accuracy_row(result.correct),
        "mean_token_entropy": result.mean_entropy,
        "routes": route_breakdown(result.completions, result.correct),
    }


def pass_at_k(
    model, tokenizer, problems: Sequence[ToyProblem], k: int = 8, *, seed: int = 0, batch_size: int = 512
) -> dict[str, Any]:
    """pass@k with ``k`` samples at T = 1.0 per problem (the empirical any-correct rate), plus the
    per-sample accuracy and route breakdown of all ``k * len(problems)`` samples."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    prompts = [p.prompt for p in problems for _ in range(k)]
    completions, _ = generate_completions(
        model, tokenizer, prompts, temperature=1.0, seed=seed, batch_size=batch_size
    )
    answers = [p.answer for p in problems for _ in range(k)]
    correct = [grade(c, a) for c, a in zip(completions, answers)]
    any_correct = [any(correct[i * k : (i + 1) * k]) for i in range(len(problems))]
    return {
        **accuracy_row(any_correct),
        "k": k,
        "per_sample": accuracy_row(correct),
        "routes": route_breakdown(completions, correct),
    }


def measure_model(
    model,
    tokenizer,
    problems: Sequence[ToyProblem],
    *,
    seed: int = 0,
    k: int = 8,
    forced: bool = True,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Greedy / T=1.0 / pass@k / forced-step-by-step greedy figures of ``model`` on ``problems``.

    Returns ``{"greedy": ..., "T=1.0": ..., "pass@k": ..., "forced_step_by_step_greedy": ...}``;
    each value holds ``accuracy``, ``ci_low``, ``ci_high`` (95% Wilson, fractions) and ``n``.
    ``k = 0`` skips pass@k; ``forced=False`` skips the ceiling.
    """
    if not problems:
        raise ValueError("problems is empty")
    out: dict[str, Any] = {}
    greedy = evaluate_toy(model, tokenizer, problems, temperature=0.0, batch_size=batch_size)
    out["greedy"] = describe(greedy)
    sampled = evaluate_toy(model, tokenizer, problems, temperature=1.0, seed=seed, batch_size=batch_size)
    out["T=1.0"] = describe(sampled)
    if k:
        out[f"pass@{k}"] = pass_at_k(model, tokenizer, problems, k, seed=seed + 1, batch_size=2 * batch_size)
    if forced:
        processor = LogitsProcessorList([ForceStepByStep(tokenizer)])
        ceiling = evaluate_toy(
            model, tokenizer, problems, temperature=0.0, batch_size=batch_size, logits_processor=processor
        )
        out["forced_step_by_step_greedy"] = describe(ceiling)
    return out


def format_figures(figures: dict[str, Any]) -> str:
    """One line per decoding: accuracy [95% CI] and route fractions, in percent."""
    lines = []
    for name, row in figures.items():
        if not isinstance(row, dict) or "accuracy" not in row:
            continue
        low, high = 100 * row["ci_low"], 100 * row["ci_high"]
        text = f"{name:>28}: {100 * row['accuracy']:5.1f}% [{low:.1f}, {high:.1f}]"
        if "routes" in row:
            text += "  routes " + ", ".join(
                f"{route} {100 * r['fraction']:.1f}%"
                + (f" (acc {100 * r['accuracy']:.1f}%)" if r["accuracy"] is not None else "")
                for route, r in row["routes"].items()
                if r["n"]
            )
        lines.append(text)
    return "\n".join(lines)
