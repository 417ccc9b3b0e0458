"""toy_runs.train_on_toy (the `emreason demo` hook) and the recipes' no-model toy mode."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM

from emreason.trainers import EMFTConfig, EMFTTrainer, EMRLConfig, EMRLTrainer
from emreason.trainers.recipe import main as recipe_main
from emreason.trainers.toy_runs import METHODS, toy_config, toy_prompt_dataset, train_on_toy


@pytest.mark.parametrize("method", METHODS)
def test_train_on_toy_saves_a_loadable_model(tiny_model_dir, tmp_path, method):
    out = train_on_toy(
        method,
        tmp_path / "model",
        model_path=tiny_model_dir,
        steps=1,
        learning_rate=1e-3,
        per_device_train_batch_size=4,
        max_completion_length=8,
    )
    assert out == tmp_path / "model"
    trained = AutoModelForCausalLM.from_pretrained(out)
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    changed = any((a - b).abs().max() > 0 for a, b in zip(trained.parameters(), initial.parameters()))
    assert changed
    assert not list(tmp_path.glob(f"{method}-*")), "scratch directory left behind"


def test_toy_config_and_dataset_validation(tmp_path):
    assert toy_config("em_rl_token", tmp_path, steps=2, learning_rate=1e-5).reward_type == "token"
    assert toy_config("em_ft", tmp_path, steps=2, learning_rate=1e-5).num_generations == 1
    with pytest.raises(ValueError, match="method must be one of"):
        toy_config("em_inf", tmp_path, steps=2, learning_rate=1e-5)
    with pytest.raises(ValueError, match="steps"):
        toy_config("em_ft", tmp_path, steps=0, learning_rate=1e-5)
    with pytest.raises(ValueError, match="learning_rate"):
        toy_config("em_ft", tmp_path, steps=1, learning_rate=0.0)
    data = toy_prompt_dataset(5)
    assert data.column_names == ["prompt"] and len(data) == 5
    assert "boxed" not in json.dumps(data.to_list()), "prompts must carry no answers"


@pytest.mark.parametrize(
    "method, config_class, trainer_class",
    [("em_rl", EMRLConfig, EMRLTrainer), ("em_ft", EMFTConfig, EMFTTrainer)],
)
def test_recipe_toy_mode_reports_before_and_after(tmp_path, method, config_class, trainer_class):
    try:
        from emreason.toy import model_path

        model_path()
    except FileNotFoundError as missing:
        pytest.skip(f"bundled toy checkpoint not built: {missing}")
    argv = [
        "--output_dir",
        str(tmp_path),
        "--max_steps",
        "1",
        "--toy_eval_problems",
        "8",
        "--per_device_train_batch_size",
        "4",
        "--max_completion_length",
        "40",
    ]
    if method == "em_rl":
        argv += ["--num_generations", "2"]
    report = recipe_main(method, config_class, trainer_class, argv=argv)
    saved = json.loads((tmp_path / "toy_eval.json").read_text())
    assert saved == json.loads(json.dumps(report))
    for when in ("before", "after"):
        for key in ("greedy", "temperature_1"):
            assert saved[when][key]["n"] == 8 and 0.0 <= saved[when][key]["accuracy"] <= 1.0
