"""The regime-2 ("shortcut") toy checkpoint, its data generator, the route classifier and regime names."""

import importlib.util
import json
import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList

from emreason import toy
from emreason.toy.evaluate import evaluate_toy, wilson_interval
from emreason.toy.pretrain import ToyPretrainConfig, training_solution
from emreason.toy.task import random_problem

REPO = Path(__file__).resolve().parents[1]


def test_unknown_regime_is_a_clear_error_listing_the_valid_ones():
    for bad in ("nope", 3, "", None):
        with pytest.raises(ValueError, match=r"valid regimes: 'default' \(1\), 'shortcut' \(2\)"):
            toy.get_regime(bad)
    with pytest.raises(ValueError, match="unknown toy regime 'regime-9'"):
        toy.model_path("regime-9")
    with pytest.raises(ValueError, match="valid regimes"):
        toy.load_model(regime="typo")
    assert toy.get_regime(2).name == "shortcut" and toy.get_regime("default").number == 1
    assert toy.model_path() == toy.model_path("default") != toy.get_regime("shortcut").path


def test_pretrain_recipe_regime_flag_selects_the_config_file():
    spec = importlib.util.spec_from_file_location("pretrain_toy", REPO / "recipes" / "pretrain_toy.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    expanded = recipe._expand_regime(["--regime", "shortcut", "--steps", "3"])
    assert expanded[0] == "--config" and expanded[1].endswith("pretrain_toy_shortcut.yaml")
    assert expanded[2:] == ["--steps", "3"]
    assert recipe._expand_regime(["--regime=default"])[1].endswith("pretrain_toy_default.yaml")
    with pytest.raises(ValueError, match="valid regimes"):
        recipe._expand_regime(["--regime", "bogus"])


def test_shortcut_solutions_guess_within_three_and_the_mixture_rate_holds():
    rng = random.Random(0)
    offsets = Counter()
    for _ in range(7000):
        problem = random_problem(rng, rng.choice([2, 3]))
        guess = problem.shortcut_solution(rng)
        assert toy.route_of(guess) == "shortcut"
        offsets[toy.extract_answer(guess) - problem.answer] += 1
    assert set(offsets) == set(range(-3, 4))
    # uniform: each offset 1/7 of 7000 = 1000 (binomial sd ~29)
    assert all(850 < count < 1150 for count in offsets.values()), offsets
    config = ToyPretrainConfig(shortcut_rate=0.6, corruption_rate=0.0)
    routes = Counter(
        toy.route_of(training_solution(random_problem(rng, 2), rng, config)) for _ in range(4000)
    )
    assert routes["other"] == 0 and 0.57 < routes["shortcut"] / 4000 < 0.63
    with pytest.raises(ValueError, match="max_offset"):
        random_problem(rng, 2).shortcut_solution(rng, max_offset=-1)


def test_route_of_classifies_completions():
    assert toy.route_of("\\boxed{52}") == "shortcut"
    assert toy.route_of(" \\boxed{-3}") == "shortcut"
    assert toy.route_of("47+8=55. 55-3=52. \\boxed{52}") == "step-by-step"
    assert toy.route_of("47+8=55. 55-3=52.") == "other"  # never boxes an answer
    assert toy.route_of("hello \\boxed{1}") == "other"
    fractions = toy.route_fractions(["\\boxed{1}", "1+1=2. \\boxed{2}", "?", "\\boxed{3}"])
    assert fractions == {"shortcut": 0.5, "step-by-step": 0.25, "other": 0.25}


def _shortcut_checkpoint():
    try:
        return toy.model_path("shortcut")
    except FileNotFoundError as missing:
        pytest.skip(f"regime-2 checkpoint not built: {missing}")


def test_shortcut_checkpoint_loads_and_reproduces_its_greedy_figure():
    path = _shortcut_checkpoint()
    figures = json.loads((path / "figures.json").read_text())
    greedy = figures["figures"]["greedy"]
    assert figures["n"] == 500 and greedy["accuracy"] <= 0.70  # the regime-2 target
    assert (
        figures["figures"]["T=1.0"]["accuracy"] >= 0.30 and figures["figures"]["pass@8"]["accuracy"] >= 0.85
    )
    assert sum(f.stat().st_size for f in path.iterdir()) < 25e6

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    regime = toy.get_regime("shortcut")
    problems = toy.make_problems("heldout", 100, seed=figures["seed"], levels=regime.levels)
    result = evaluate_toy(model, tokenizer, problems, temperature=0.0)
    low, high = wilson_interval(sum(result.correct), result.n)
    # The recorded 500-problem figure lies inside this 100-problem sample's 95% interval.
    assert low <= greedy["accuracy"] <= high, (result.accuracy, greedy)
    routes = toy.route_fractions(result.completions)
    assert routes["shortcut"] >= 0.8, routes  # greedy takes the shortcut

    # The ceiling: banning the shortcut's first token puts greedy on the step-by-step route, far higher.
    forced = evaluate_toy(
        model,
        tokenizer,
        problems,
        temperature=0.0,
        logits_processor=LogitsProcessorList([toy.ForceStepByStep(tokenizer)]),
    )
    assert toy.route_fractions(forced.completions)["step-by-step"] >= 0.95
    ceiling = figures["figures"]["forced_step_by_step_greedy"]["accuracy"]
    low, high = wilson_interval(sum(forced.correct), forced.n)
    assert low <= ceiling <= high and forced.accuracy > result.accuracy + 0.3


def test_route_breakdown_and_accuracy_rows_count_correctly():
    from emreason.toy.measure import accuracy_row, route_breakdown

    completions = ["\\boxed{1}", "1+1=2. \\boxed{2}", "1+2=3. \\boxed{4}", "\\boxed{7}"]
    breakdown = route_breakdown(completions, [True, True, False, False])
    assert breakdown["shortcut"] == {"fraction": 0.5, "accuracy": 0.5, "n": 2}
    assert breakdown["step-by-step"] == {"fraction": 0.5, "accuracy": 0.5, "n": 2}
    assert breakdown["other"] == {"fraction": 0.0, "accuracy": None, "n": 0}
    row = accuracy_row([True, False, False, False])
    assert row["accuracy"] == 0.25 and (row["ci_low"], row["ci_high"]) == wilson_interval(1, 4)
    with pytest.raises(ValueError, match="3 completions but 2 outcomes"):
        route_breakdown(completions[:3], [True, False])


def test_force_step_by_step_bans_only_the_first_assistant_token():
    from emreason.toy.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    processor = toy.ForceStepByStep(tokenizer)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Compute 1+2."}], tokenize=False, add_generation_prompt=True
    )
    start = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    later = tokenizer(prompt + "1+2=3. ", add_special_tokens=False)["input_ids"]
    scores = processor(torch.tensor([start, later[-len(start) :]]), torch.zeros(2, 128))
    banned = tokenizer("\\", add_special_tokens=False)["input_ids"][0]
    assert scores[0, banned] == float("-inf") and torch.isfinite(scores[0]).sum() == 127
    assert torch.isfinite(scores[1]).all()  # mid-completion rows are untouched


def test_pass_at_k_is_any_correct_over_k_samples():
    path = _shortcut_checkpoint()
    from emreason.toy.measure import pass_at_k

    model, tokenizer = toy.load_model(path)
    problems = toy.make_problems("heldout", 12, seed=5, levels=(2, 3))
    result = pass_at_k(model, tokenizer, problems, k=4, seed=3)
    assert result["n"] == 12 and result["per_sample"]["n"] == 48 and result["k"] == 4
    # any-of-4 is at least the per-sample rate (same samples)
    assert result["accuracy"] >= result["per_sample"]["accuracy"]
    with pytest.raises(ValueError, match="k must be >= 1"):
        pass_at_k(model, tokenizer, problems, k=0)
