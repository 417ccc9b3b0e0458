"""``emreason eval``: run benchmarks (``--task ... --model ... --backend hf|vllm``) or ``report DIR...``.

Also runnable as ``python -m emreason.evals.cli``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emreason.evals.backends import BackendError
from emreason.evals.tasks import TASK_NAMES


def _parse_option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emreason eval",
        description="Evaluate a model on math/code/SciCode benchmarks (pass@k, resumable). "
        "Use `emreason eval report DIR [DIR...]` to compare finished runs and "
        "`emreason eval verify-code` to grade the code benchmarks' reference solutions.",
    )
    parser.add_argument("--task", required=True, help=f"comma-separated task names: {', '.join(TASK_NAMES)}")
    parser.add_argument("--model", required=True, help="local checkpoint dir, hub id, or (vllm) server URL")
    parser.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    parser.add_argument("--output", required=True, help="output folder (resumed when it exists)")
    parser.add_argument(
        "--em-inf", action="store_true", help="decode with EM-INF (entropy-minimizing logits)"
    )
    parser.add_argument(
        "--em-inf-option",
        action="append",
        default=[],
        type=_parse_option,
        metavar="KEY=VALUE",
        help="EMInfConfig override, e.g. steps=5 (repeatable)",
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="0 = off (default, whatever the model's config)")
    parser.add_argument(
        "--repetition-penalty", type=float, default=1.0, help="1.0 = off (default, as Qwen2.5-Math's eval)"
    )
    parser.add_argument(
        "--n-samples", type=int, default=1, help="samples per problem (pass@k and maj@k up to this)"
    )
    parser.add_argument("--limit", type=int, default=None, help="first N problems of each task")
    parser.add_argument("--shard", default="0/1", help="I/N: this process handles every N-th problem")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: 4096 (toy: 64)")
    parser.add_argument(
        "--prompt-format",
        choices=("chat", "raw"),
        default="chat",
        help="chat: the model's chat template (default, as Qwen2.5-Math's qwen25-math-cot); raw: plain "
        "text for base models, the question then the system prompt on a new line, no special tokens",
    )
    parser.add_argument(
        "--system-prompt",
        default=None,
        help="replace each task's system prompt (math: 'Please reason step by step, and put your final "
        "answer within \\boxed{}.'); '' drops it",
    )
    parser.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="extra stop string (repeatable); <|im_end|>, <|endoftext|>, <|im_start|> and EOS always stop",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="grading processes / sandbox threads")
    parser.add_argument("--data-path", default=None, help="benchmark file (only with a single task)")
    parser.add_argument("--hub", action="store_true", help="load benchmarks from the Hugging Face hub")
    parser.add_argument("--device", default=None, help="hf backend device (default: cuda if available)")
    parser.add_argument(
        "--dtype",
        default="auto",
        help="model dtype for hf and offline vllm: auto, bfloat16, float32... "
        "(vllm's auto runs float32 checkpoints in bfloat16)",
    )
    parser.add_argument("--served-model", default=None, help="model name on an OpenAI-compatible server")
    parser.add_argument("--tensor-parallel-size", type=int, default=None, help="vllm offline option")
    parser.add_argument(
        "--vllm-option",
        action="append",
        default=[],
        type=_parse_option,
        metavar="KEY=VALUE",
        help="more vllm.LLM arguments, e.g. enforce_eager=true max_model_len=4096 (repeatable)",
    )
    parser.add_argument("--scicode-h5", default=None, help="official SciCode test_data.h5 (test split)")
    parser.add_argument("--lcb-trust-pickle", action="store_true", help="decode pickled LiveCodeBench tests")
    parser.add_argument("--lcb-public-only", action="store_true", help="LiveCodeBench: public tests only")
    parser.add_argument("--toy-size", type=int, default=200, help="number of held-out toy problems")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _score_line(metrics: dict[str, Any]) -> str:
    """pass@1, and with several samples pass@k and maj@k at the largest k, each with its 95% CI."""
    scores = metrics["scores"]
    ks = sorted(int(key.split("@")[1]) for key in scores if key.startswith("pass@"))
    wanted = ["pass@1"]
    if ks and ks[-1] > 1:
        wanted += [f"pass@{ks[-1]}", f"maj@{ks[-1]}"]
    parts = []
    for key in wanted:
        if key in scores:
            low, high = scores[key].get("ci95", [float("nan")] * 2)
            parts.append(f"{key} = {scores[key]['mean']:.4f} [{low:.4f}, {high:.4f}]")
    return ", ".join(parts or ["no scores"]) + (
        f" ({metrics['n_problems_complete']}/{metrics['n_problems']} problems)"
    )


def run_from_args(args: argparse.Namespace) -> int:
    from emreason.evals.backends import GenerationConfig, make_backend
    from emreason.evals.prompts import PromptFormat
    from emreason.evals.runner import check_prompt_format, parse_shard, read_samples, run_eval
    from emreason.evals.tasks import get_task

    names = [n.strip() for n in args.task.split(",") if n.strip()]
    unknown = [n for n in names if n not in TASK_NAMES]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; known: {', '.join(TASK_NAMES)}")
    if args.data_path and len(names) != 1:
        raise ValueError("--data-path needs exactly one --task")
    shard = parse_shard(args.shard)
    task_options = {
        "scicode_h5": args.scicode_h5,
        "lcb_trust_pickle": args.lcb_trust_pickle,
        "lcb_public_only": args.lcb_public_only,
        "toy_size": args.toy_size,
    }
    max_new = args.max_new_tokens or max(get_task(n, **task_options).max_new_tokens for n in names)
    config = GenerationConfig(
        max_new_tokens=max_new,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        batch_size=args.batch_size,
        em_inf=args.em_inf,
        em_inf_options=dict(args.em_inf_option),
        stop=tuple(args.stop),
    )
    prompt_format = PromptFormat(args.prompt_format, args.system_prompt)
    for name in names:  # a resume with other prompt settings fails here, before any model loads
        check_prompt_format(Path(args.output) / name, read_samples(Path(args.output) / name), prompt_format)
    options: dict[str, Any] = {}
    if args.backend == "hf":
        options = {"device": args.device, "dtype": args.dtype}
    elif args.model.startswith(("http://", "https://")):
        if args.vllm_option or args.tensor_parallel_size:
            raise ValueError("--vllm-option/--tensor-parallel-size apply to offline vllm, not a server URL")
        options = {"served_model": args.served_model}
    else:
        options = {"dtype": args.dtype, **dict(args.vllm_option)}
        if args.tensor_parallel_size:
            options["tensor_parallel_size"] = args.tensor_parallel_size
    backend = make_backend(args.backend, args.model, config, **options)
    run_config = {
        "model": args.model,
        "backend": args.backend,
        "em_inf": args.em_inf,
        "em_inf_options": dict(args.em_inf_option),
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "repetition_penalty": args.repetition_penalty,
        "dtype": args.dtype,
        "max_new_tokens": max_new,
        "seed": args.seed,
        "n_samples": args.n_samples,
        "stop": config.stop_strings,
    }
    summary = run_eval(
        names,
        backend,
        args.output,
        task_options=task_options,
        n_samples=args.n_samples,
        limit=args.limit,
        shard=shard,
        data_path=args.data_path,
        hub=args.hub,
        workers=args.workers,
        run_config=run_config,
        progress=not args.quiet,
        prompt_format=prompt_format,
    )
    for name, metrics in summary["tasks"].items():
        if name in names:
            print(f"{name}: {_score_line(metrics)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``emreason eval``; ``argv`` excludes the word ``eval``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "report":
        from emreason.evals.report import main as report_main

        return report_main(argv[1:])
    if argv and argv[0] == "verify-code":
        from emreason.evals.verify import main as verify_main

        return verify_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run_from_args(args)
    except (ValueError, FileNotFoundError, BackendError) as exc:
        parser.error(str(exc))
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
