"""The shared body of `recipes/em_ft.py` and `recipes/em_rl.py`: parse (CLI flags + YAML via TRL's
`TrlParser`), load prompts, train, and on the toy model report held-out accuracy before and after."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset, load_dataset
from trl import ModelConfig, TrlParser, get_peft_config

from emreason.atomic_io import write_json_atomic
from emreason.trainers.toy_runs import toy_prompt_dataset, toy_settings

__all__ = ["ScriptArguments", "load_prompts", "main"]


@dataclass
class ScriptArguments:
    """Where the unlabeled prompts come from, and the toy evaluation."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset id or local path; omitted: unlabeled toy train prompts."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "Dataset split."})
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the prompt text."})
    system_prompt: str | None = field(
        default=None, metadata={"help": "Optional system message put before each prompt."}
    )
    max_prompts: int | None = field(default=None, metadata={"help": "Use at most this many prompts."})
    toy_eval_problems: int = field(
        default=300,
        metadata={"help": "Held-out toy problems for the before/after evaluation (toy model only)."},
    )


def load_prompts(script_args: ScriptArguments, default_count: int, seed: int) -> Dataset:
    """A dataset with a conversational ``prompt`` column."""
    if script_args.dataset_name is None:
        return toy_prompt_dataset(default_count, seed=seed + 1)
    data = load_dataset(script_args.dataset_name, script_args.dataset_config, split=script_args.dataset_split)
    if script_args.prompt_column not in data.column_names:
        raise ValueError(
            f"prompt_column {script_args.prompt_column!r} not in {script_args.dataset_name} (columns: "
            f"{data.column_names})"
        )
    if script_args.max_prompts is not None:
        data = data.select(range(min(script_args.max_prompts, len(data))))
    system = script_args.system_prompt

    def to_messages(text):
        if not isinstance(text, str):
            return text  # already a list of chat messages
        messages = [{"role": "system", "content": system}] if system else []
        return messages + [{"role": "user", "content": text}]

    prompts = [to_messages(text) for text in data[script_args.prompt_column]]
    return Dataset.from_dict({"prompt": prompts})


def _toy_evaluation(model, tokenizer, n: int) -> dict[str, Any]:
    from emreason.toy import make_problems
    from emreason.toy.evaluate import evaluate_toy

    problems = make_problems("heldout", n, seed=1234)
    return {
        "greedy": evaluate_toy(model, tokenizer, problems, temperature=0.0).summary(),
        "temperature_1": evaluate_toy(model, tokenizer, problems, temperature=1.0, seed=0).summary(),
    }


def _uses_toy_defaults(argv: list[str]) -> bool:
    return not any(a.startswith(("--model_name_or_path", "--config")) for a in argv)


def main(method: str, config_class, trainer_class, argv: list[str] | None = None) -> dict[str, Any] | None:
    """Run a recipe. ``method``: ``"em_ft"`` or ``"em_rl"``. Returns the toy evaluation (toy mode)."""
    from transformers import AutoTokenizer

    from emreason.toy import load_model, model_path

    argv = sys.argv[1:] if argv is None else argv
    parser = TrlParser((ScriptArguments, config_class, ModelConfig))
    toy = _uses_toy_defaults(argv)
    if toy:
        # No model given: the bundled toy model, unlabeled toy prompts and the toy settings; flags still win.
        reward_type = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--reward_type"), "sequence")
        toy_method = "em_ft" if method == "em_ft" else f"em_rl_{reward_type}"
        parser.set_defaults(output_dir=f"outputs/{toy_method}-toy", **toy_settings(toy_method))
    script_args, training_args, model_args = parser.parse_args_and_config(args=argv)
    source = model_args.model_name_or_path or str(model_path())
    tokenizer = AutoTokenizer.from_pretrained(source, revision=model_args.model_revision, padding_side="left")
    steps = max(training_args.max_steps, 1)
    prompts_needed = steps * training_args.generation_batch_size // training_args.num_generations
    dataset = load_prompts(script_args, default_count=max(prompts_needed, 64), seed=training_args.seed)

    is_main = training_args.process_index == 0
    toy_model = model_args.model_name_or_path is None
    before = None
    if toy_model and is_main:
        before = _toy_evaluation(*load_model(source), script_args.toy_eval_problems)
        print(json.dumps({"before": before}), flush=True)

    trainer = trainer_class(
        source,
        args=training_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if not (toy_model and is_main):
        return None
    model = trainer.accelerator.unwrap_model(trainer.model)
    after = _toy_evaluation(model, tokenizer, script_args.toy_eval_problems)
    report = {"method": method, "model": source, "before": before, "after": after}
    write_json_atomic(Path(training_args.output_dir) / "toy_eval.json", report)
    _print_table(report)
    return report


def _print_table(report: dict[str, Any]) -> None:
    print(f"\nHeld-out toy accuracy ({report['method']}; 95% Wilson CI)")
    for key, label in (("greedy", "greedy"), ("temperature_1", "T=1.0")):
        b, a = report["before"][key], report["after"][key]
        print(
            f"  {label:7s} before {b['accuracy']:.3f} [{b['ci95'][0]:.3f}, {b['ci95'][1]:.3f}]  "
            f"after {a['accuracy']:.3f} [{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}]  "
            f"entropy {b['mean_token_entropy']:.4f} -> {a['mean_token_entropy']:.4f}"
        )
