"""End to end: CLI on a tiny model, resume, shards, the report, the toy model (server: test_openai_backend)"""

from __future__ import annotations

import json

import pytest
import torch
from emreason.evals.backends import GenerationConfig
from emreason.evals.cli import main
from emreason.evals.runner import parse_shard, read_samples, run_task
from emreason.evals.tasks import get_task


class ScriptedBackend:
    """Answers toy problems correctly for even sample indices; counts calls (to observe resume)."""

    name = "scripted"

    def __init__(self):
        self.calls = 0

    def generate(self, conversations, n=1):
        from emreason.toy.task import make_problems

        answers = {p.prompt: p.answer for p in make_problems("heldout", 50)}
        self.calls += len(conversations)
        out = []
        for conversation in conversations:
            answer = answers[conversation[-1]["content"]]
            out.append([f"\\boxed{{{answer if i % 2 == 0 else answer + 1}}}" for i in range(n)])
        return out


def test_runner_scores_resumes_and_shards(tmp_path):
    backend = ScriptedBackend()
    task = get_task("toy", toy_size=50)
    metrics = run_task(task, backend, tmp_path, n_samples=4, limit=10, progress=False)
    assert metrics["scores"]["pass@1"]["mean"] == pytest.approx(0.5)
    assert metrics["scores"]["pass@4"]["mean"] == pytest.approx(1.0)
    assert metrics["complete"] and metrics["data"]["sha256"]
    assert backend.calls == 10
    # Simulate a crash that tore the last line, then resume: only the lost sample is regenerated.
    path = tmp_path / "toy" / "samples.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][:20])
    again = run_task(get_task("toy", toy_size=50), backend, tmp_path, n_samples=4, limit=10, progress=False)
    assert backend.calls == 11 and again["complete"]
    assert len(read_samples(tmp_path / "toy")) == 40
    # Two shards into a fresh folder together cover the problems once.
    other = tmp_path / "sharded"
    for index in range(2):
        run_task(
            get_task("toy", toy_size=50), ScriptedBackend(), other, limit=10, shard=(index, 2), progress=False
        )
    records = read_samples(other / "toy")
    assert sorted(r["id"] for r in records) == sorted({r["id"] for r in records}) and len(records) == 10


def test_parse_shard_rejects_bad_values():
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "x", "1/0"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


def test_generation_config_validates():
    with pytest.raises(ValueError, match="temperature"):
        GenerationConfig(temperature=-1)


def test_cli_end_to_end_on_tiny_model_and_report(tiny_model_dir, tmp_path, shared_data):
    out = tmp_path / "run"
    args = [
        "--task",
        "math500,humaneval,toy",
        "--model",
        str(tiny_model_dir),
        "--backend",
        "hf",
        "--limit",
        "2",
    ]
    args += ["--max-new-tokens", "8", "--output", str(out), "--quiet", "--batch-size", "2"]
    assert main(args) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert set(summary["tasks"]) == {"math500", "humaneval", "toy"}
    record = json.loads((out / "math500" / "samples.jsonl").read_text().splitlines()[0])
    assert record["prompt"][0]["content"].startswith("Please reason step by step")
    assert {"completion", "extracted", "correct", "timing"} <= set(record)
    assert main(args) == 0  # resume: nothing left to do, same files
    assert len((out / "humaneval" / "samples.jsonl").read_text().splitlines()) == 2
    assert main(["report", str(out), str(out), "--markdown", str(tmp_path / "t.md")]) == 0
    assert (out / "comparison.png").stat().st_size > 1000
    assert "| math500 |" in (tmp_path / "t.md").read_text()


def test_cli_rejects_unknown_task(tmp_path):
    with pytest.raises(SystemExit):
        main(["--task", "nope", "--model", "x", "--output", str(tmp_path)])


def test_bundled_toy_model_on_toy_task_and_math500(tmp_path, shared_data):
    from emreason import toy

    checkpoint = toy.model_path()
    if not (checkpoint / "model.safetensors").is_file():
        pytest.skip("the toy checkpoint has not been built yet (recipes/pretrain_toy.py)")
    out = tmp_path / "toy_run"
    args = ["--model", str(checkpoint), "--backend", "hf", "--output", str(out), "--quiet", "--workers", "2"]
    assert main(["--task", "toy", "--toy-size", "64", *args]) == 0
    toy_score = json.loads((out / "toy" / "metrics.json").read_text())["scores"]["pass@1"]["mean"]
    assert toy_score > 0.3  # a trained toy model solves most held-out sums; a random one ~never
    assert main(["--task", "math500", "--limit", "4", "--max-new-tokens", "48", *args]) == 0


def test_hf_backend_with_em_inf_processor(tiny_model_dir):
    pytest.importorskip("emreason.integrations.transformers", reason="EM-INF integration not built yet")
    from emreason.evals.backends.hf import HFBackend

    conversations = [
        [{"role": "user", "content": "Compute 1+2."}],
        [{"role": "user", "content": "Compute 30-4."}],
    ]
    plain = HFBackend(str(tiny_model_dir), GenerationConfig(max_new_tokens=6, batch_size=2))
    em_inf = HFBackend(str(tiny_model_dir), GenerationConfig(max_new_tokens=6, batch_size=2, em_inf=True))
    mask = torch.ones(2, 3, dtype=torch.long)
    # The penalty is always explicit (default 1.0, off), whatever the model's generation_config says,
    # so every backend decodes alike (Qwen2.5-Instruct's config asks for 1.05).
    em_inf.model.generation_config.repetition_penalty = 1.05
    assert plain._processor_kwargs(mask) == {"repetition_penalty": 1.0}
    kwargs = em_inf._processor_kwargs(mask)
    assert kwargs["repetition_penalty"] == 1.0
    assert [type(p).__name__ for p in kwargs["logits_processor"]] == ["EMInfLogitsProcessor"]
    # A penalty asked for: EM-INF runs first, then the penalty (the authors' order); generate's own is off.
    penalised = HFBackend(
        str(tiny_model_dir),
        GenerationConfig(max_new_tokens=6, batch_size=2, em_inf=True, repetition_penalty=1.05),
    )
    kwargs = penalised._processor_kwargs(mask)
    assert kwargs["repetition_penalty"] == 1.0
    assert [type(p).__name__ for p in kwargs["logits_processor"]] == [
        "EMInfLogitsProcessor",
        "RepetitionPenaltyLogitsProcessor",
    ]
    out = em_inf.generate(conversations, n=1)
    assert len(out) == 2 and all(len(texts) == 1 and isinstance(texts[0], str) for texts in out)
    # Batched (left-padded) greedy decoding equals one-by-one decoding.
    batched = plain.generate(conversations)
    single = [plain.generate([c])[0] for c in conversations]
    assert batched == single
