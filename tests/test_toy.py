"""The toy task generator, grader, pretraining recipe and the shipped checkpoint."""

import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from emreason import toy
from emreason.toy.evaluate import evaluate_toy, wilson_interval
from emreason.toy.task import ToyProblem, random_problem

REPO = Path(__file__).resolve().parents[1]


def test_expression_answer_and_clean_solution_are_consistent():
    rng = random.Random(0)
    for _ in range(500):
        problem = random_problem(rng, rng.choice([1, 2, 3]))
        assert eval(problem.expression) == problem.answer  # independent evaluation by Python
        solution = problem.solution()
        assert toy.grade(solution, problem.answer)
        # every step of a clean solution is a true equation
        for step in solution.split(". ")[:-1]:
            left, right = step.rstrip(".").split("=")
            assert eval(left) == int(right)


def test_corrupted_solutions_change_one_step_and_propagate():
    rng = random.Random(1)
    problems = [random_problem(rng, 2) for _ in range(4000)]
    corrupt_rng = random.Random(2)
    wrong = 0
    for problem in problems:
        solution = problem.solution(corrupt_rng, corruption_rate=0.25)
        steps = [s.rstrip(".") for s in solution.split(" ")[:-1]]
        false_steps = [s for s in steps if eval(s.split("=")[0]) != int(s.split("=")[1])]
        assert len(false_steps) <= 1
        # the chain is consistent: each step starts from the previous step's (possibly wrong) result
        assert steps[1].startswith(steps[0].split("=")[1])
        wrong += not toy.grade(solution, problem.answer)
    assert 0.22 < wrong / len(problems) < 0.28


def test_splits_are_disjoint_and_deterministic():
    train = toy.make_problems("train", 2000, seed=3)
    heldout = toy.make_problems("heldout", 500, seed=3)
    assert {p.expression for p in train}.isdisjoint({p.expression for p in heldout})
    assert len({p.expression for p in heldout}) == 500
    assert [p.expression for p in toy.make_problems("heldout", 500, seed=3)] == [
        p.expression for p in heldout
    ]
    assert {p.level for p in heldout} == {1, 2}
    with pytest.raises(ValueError, match="'test'"):
        toy.make_problems("test", 3)
    with pytest.raises(ValueError, match="level"):
        random_problem(random.Random(0), 0)


def test_grader():
    p = ToyProblem((47, 8, 3), ("+", "-"))
    assert p.prompt == "Compute 47+8-3." and p.answer == 52
    assert toy.grade("47+8=55. 55-3=52. \\boxed{52}", 52)
    assert not toy.grade("\\boxed{52} then \\boxed{53}", 52)
    assert not toy.grade("52", 52)
    assert toy.extract_answer("x \\boxed{-7}") == -7


def test_wilson_interval_against_closed_form():
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_pretrain_recipe_runs_and_checkpoint_loads(tmp_path):
    out = tmp_path / "toy"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "recipes" / "pretrain_toy.py"),
            "--steps",
            "3",
            "--batch_size",
            "8",
            "--output_dir",
            str(out),
            "--num_layers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    model, tokenizer = toy.load_model(out)
    assert model.config.model_type == "qwen2" and model.config.head_dim >= 32
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    # round trip of text through the saved tokenizer
    text = "47+8=55. \\boxed{55}"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    res = evaluate_toy(model, tokenizer, toy.make_problems("heldout", 4), max_new_tokens=4)
    assert res.n == 4 and 0 <= res.accuracy <= 1 and res.mean_entropy > 0


def test_load_model_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        toy.load_model(tmp_path / "nope")
    with pytest.raises(ValueError, match="int8"):
        toy.load_model(tmp_path, dtype="int8")


def test_shipped_checkpoint_is_competent_and_in_the_em_regime():
    """The embedded default: greedy is good, T=1.0 sampling wanders (checked on 200 problems)."""
    model, tokenizer = toy.load_model()
    assert sum(p.numel() for p in model.parameters()) < 6_000_000
    problems = toy.make_problems("heldout", 200, seed=11)
    torch.set_num_threads(2)
    greedy = evaluate_toy(model, tokenizer, problems)
    sampled = evaluate_toy(model, tokenizer, problems, temperature=1.0, seed=0)
    assert greedy.accuracy >= 0.6
    assert sampled.accuracy >= 0.4
    assert sampled.mean_entropy > greedy.mean_entropy * 0.5


def test_generate_toy_counts_tokens_up_to_the_first_eos():
    from emreason.toy.evaluate import generate_toy

    model, tokenizer = toy.load_model()
    prompts = [p.prompt for p in toy.make_problems("heldout", 6, seed=5)]
    result = generate_toy(model, tokenizer, prompts, temperature=1.0, seed=3, max_new_tokens=64)
    assert len(result.completions) == len(result.mean_entropies) == len(result.token_counts) == 6
    # An independent count from the raw ids: re-run the same seeded generate and find the first EOS.
    tokenizer.padding_side = "left"
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(3)
    out = model.generate(
        **batch, max_new_tokens=64, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    expected = []
    for row in out[:, batch["input_ids"].shape[1] :].tolist():
        expected.append(row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row))
    assert result.token_counts == expected
    assert all(1 <= c <= 64 for c in result.token_counts)
    assert min(result.token_counts) < 64  # some rows stop at EOS, so the count is not just the budget
