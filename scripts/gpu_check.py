"""One prepared GPU check of the paths only a CUDA machine exercises; writes one JSON report.

    bash scripts/gpu_check.sh [--output gpu_check.json] [--model DIR]     # on a CUDA machine with vLLM
    bash scripts/gpu_check.sh --dry-run                                   # on any machine (CPU)

Steps (each one try/except'd and timed; the report is rewritten atomically after every step, so a kill
leaves the steps done so far; the whole run stays under ``--time-limit`` seconds, 570 by default):

  environment      versions, GPU, Triton (vLLM 0.32 picks Model Runner V2 by default when Triton is there)
  prepare          model folder (default: the Qwen2.5-format fixture when emreason provides it, else the
                   toy model), chat-rendered prompts of held-out toy problems
  hf_twin          transformers greedy decoding, float32, without / with EM-INF (the transformers twin
                   ``emreason.integrations.transformers.EMInfLogitsProcessor``), first-step processed logprobs
  vllm_default     offline ``vllm.LLM`` in a fresh process with vLLM's own runner choice (V2 on CUDA+Triton)
  vllm_classic     the same with ``VLLM_USE_V2_MODEL_RUNNER=0`` (the classic GPU model runner)
  vllm_serve       ``python -m vllm.entrypoints.openai.api_server`` (what ``vllm serve`` runs), EM-INF
                   through the ``em_inf`` entry point and per-request ``vllm_xargs``; invalid options -> 400;
                   the eval harness's server backend (start-up probe) against it
  processor_timing EM-INF cost per decode step at V = 151,936, B = 1 and 64, in softmax-equivalents: the
                   core (``minimize_entropy``: eager, fused Triton, fused torch.compile) and the vLLM
                   processor's ``apply`` (classic interface)
  emft_memory      EM-FT chunked-entropy step vs a plain SFT step at V = 151,936: peak CUDA memory and time
  compare          the cross-checks: V2 vs classic, vLLM vs the transformers twin, server vs offline
  trl_colocate     EM-RL (sequence reward) with ``use_vllm=True``, TRL colocate mode, 3 steps on the GPU:
                   vLLM's rollout log-probs vs the trainer's model recomputed (float64), weights reach vLLM
  trl_server       the same in TRL server mode: a ``vllm serve`` process built as ``trl vllm-serve`` builds
                   it (NCCL weight-transfer engine) on GPU 1, the trainer on GPU 0; needs two GPUs (NCCL
                   cannot put both ranks on one device), skipped with that reason on one

Status per step: ``ok`` (ran, checks passed), ``fail`` (ran, a check failed), ``error`` (raised),
``skipped`` (a requirement missing, or no time left), ``planned`` (``--dry-run``). Exit code 0 when no
step is ``fail`` or ``error``.

``--dry-run`` does everything that needs no CUDA: imports, arguments, model folder and tokenizer, prompt
rendering, the worker and server command lines, the report writer, and the plan with its time budgets.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
REPORT_VERSION = 1
VOCAB = 151_936  # Qwen2.5's logit count
DEFAULT_TIME_LIMIT_S = 570.0
MODES = {  # request name -> vllm_xargs (None: EM-INF off); the HF twin uses the same settings
    "off": None,
    "em_inf": {"em_inf": 1},
    "em_inf_custom": {"em_inf": 1, "em_inf_steps": 10, "em_inf_threshold": 0.1},
}
TOP_LOGPROBS = 5
# Pass criteria (float32 everywhere). Greedy decodes may legitimately part at a near-tie, hence < 1.
LIMITS = {
    "runner_token_agreement": 0.95,  # V2 vs classic: identical completions
    "twin_token_agreement": 0.90,  # vLLM vs transformers twin: identical completions
    "first_logprob_gap": 5e-3,  # nats, first generated position, on the twin's top tokens
    "server_text_agreement": 0.95,  # server vs offline (same default runner)
    "emft_memory_ratio": 1.0,  # EM-FT peak / SFT peak
    "trl_token_gap": 1e-3,  # nats: vLLM rollout log-prob vs the trainer's model, per token (max)
    "trl_sequence_reward_gap": 1e-3,  # nats: sequence reward from vLLM log-probs vs recomputed (max)
    "trl_moved_from_initial": 1e-2,  # nats: after an update, vLLM's log-probs vs the initial model's (min)
}
TRL_RUN = REPO / "scripts" / "trl_vllm_run.py"
TRL_STEPS = 3


# ----------------------------------------------------------------------------------------------------
# report plumbing
# ----------------------------------------------------------------------------------------------------
def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as stream:
            json.dump(data, stream, indent=2, sort_keys=True, default=str)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check(value: float, limit: float, higher_is_better: bool) -> dict[str, Any]:
    passed = value >= limit if higher_is_better else value <= limit
    return {"value": value, "limit": limit, "passed": bool(passed) and not math.isnan(value)}


@dataclass
class Context:
    args: argparse.Namespace
    workdir: Path
    deadline: float
    available: dict[str, bool] = field(default_factory=dict)
    results: dict[str, dict] = field(default_factory=dict)
    model: Path | None = None
    device: str = "cuda"
    max_model_len: int | None = None  # --max-model-len capped at the model's max_position_embeddings

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


@dataclass
class Step:
    name: str
    budget_s: float
    needs: tuple[str, ...]
    run: Callable[[Context, float], dict]
    describe: str
    dry: Callable[[Context], dict] | None = None  # what --dry-run checks for this step


def run_plan(steps: list[Step], ctx: Context, report: dict, output: Path, dry_run: bool) -> dict:
    """Run (or, dry, plan) every step in order, recording each; the report is rewritten after each."""
    for step in steps:
        entry: dict[str, Any] = {"name": step.name, "budget_s": step.budget_s, "describe": step.describe}
        report["steps"].append(entry)
        began = time.monotonic()
        missing = [need for need in step.needs if not ctx.available.get(need, False)]
        try:
            if dry_run:
                entry["status"] = "planned"
                entry["would_skip_for"] = missing
                if step.dry is not None:
                    entry["dry_run"] = step.dry(ctx)
            elif missing:
                entry.update(status="skipped", reason=f"needs {', '.join(missing)}")
            elif ctx.remaining() < min(20.0, step.budget_s):
                entry.update(status="skipped", reason=f"time limit: {ctx.remaining():.0f} s left")
            else:
                budget = min(step.budget_s, ctx.remaining())
                result = step.run(ctx, budget)
                ctx.results[step.name] = result
                checks = result.get("checks", {})
                entry["status"] = "fail" if any(not c["passed"] for c in checks.values()) else "ok"
                entry["result"] = result
        except Exception as error:  # recorded, and the next step still runs
            entry.update(status="error", error=f"{type(error).__name__}: {error}")
            entry["traceback"] = traceback.format_exc()[-4000:]
        entry["seconds"] = round(time.monotonic() - began, 2)
        write_json_atomic(output, report)
    statuses = [s["status"] for s in report["steps"]]
    report["summary"] = {status: statuses.count(status) for status in sorted(set(statuses))}
    report["passed"] = not any(s in ("fail", "error") for s in statuses)
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_json_atomic(output, report)
    return report


# ----------------------------------------------------------------------------------------------------
# subprocess workers (fresh engines per runner; the main process never starts vLLM itself)
# ----------------------------------------------------------------------------------------------------
def worker_command(name: str, payload: dict) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--payload", json.dumps(payload)]


def run_worker(name: str, payload: dict, budget: float, env: dict | None = None, log: Path | None = None):
    """Run a worker in its own process group; its last stdout line is its JSON result."""
    log = log or Path(payload["workdir"]) / f"{name}.log"
    return run_json_process(worker_command(name, payload), f"worker {name}", log, budget, env)


def run_json_process(command: list[str], name: str, log: Path, budget: float, env: dict | None = None):
    """Run ``command`` in its own process group (stderr to ``log``, killed past ``budget`` seconds); its
    last stdout line is its JSON result."""
    with open(log, "w") as stream:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=stream,
            text=True,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        try:
            out, _ = process.communicate(timeout=budget)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            raise TimeoutError(f"{name} ran past its {budget:.0f} s budget; log: {log}") from None
    if process.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{name} exited with {process.returncode}; log {log}:\n{tail}")
    return json.loads(out.strip().splitlines()[-1])


def _kill_group(process: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=20)
            return
        except subprocess.TimeoutExpired:
            continue


def _prompts(workdir: Path) -> dict:
    return json.loads((workdir / "prompts.json").read_text())


def worker_vllm_offline(payload: dict) -> dict:
    """Greedy decodes of every prompt in every mode, with first-position processed top logprobs."""
    from vllm import LLM, SamplingParams

    from emreason.integrations.vllm import EMInfLogitsProcessor

    prompts = _prompts(Path(payload["workdir"]))
    began = time.monotonic()
    llm = LLM(
        model=payload["model"], dtype="float32", seed=0, enforce_eager=payload["enforce_eager"],
        gpu_memory_utilization=payload["gpu_memory_utilization"], max_model_len=payload["max_model_len"],
        logprobs_mode="processed_logprobs", logits_processors=[EMInfLogitsProcessor],
    )  # fmt: skip
    startup_s = time.monotonic() - began
    use_v2 = bool(llm.llm_engine.vllm_config.use_v2_model_runner)
    out: dict[str, Any] = {"startup_s": round(startup_s, 2), "use_v2_model_runner": use_v2, "modes": {}}
    inputs = [{"prompt_token_ids": ids} for ids in prompts["token_ids"]]
    for mode, xargs in MODES.items():
        params = SamplingParams(
            temperature=0.0, max_tokens=payload["max_new_tokens"], logprobs=TOP_LOGPROBS, extra_args=xargs
        )
        began = time.monotonic()
        results = llm.generate(inputs, params, use_tqdm=False)
        seconds = time.monotonic() - began
        out["modes"][mode] = {
            "seconds": round(seconds, 3),
            "token_ids": [list(r.outputs[0].token_ids) for r in results],
            "text": [r.outputs[0].text for r in results],
            "first_logprobs": [
                {str(t): lp.logprob for t, lp in (r.outputs[0].logprobs or [{}])[0].items()} for r in results
            ],
        }
    sampled = SamplingParams(temperature=1.0, max_tokens=payload["max_new_tokens"], seed=0, n=4,
                             extra_args={"em_inf": 1})  # fmt: skip
    out["sampled_em_inf_completions"] = sum(len(r.outputs) for r in llm.generate(inputs[:4], sampled))
    try:
        llm.generate(inputs[:1], SamplingParams(max_tokens=1, extra_args={"em_inf": 1, "em_inf_lr": -1}))
        out["invalid_request_rejected"] = False
    except Exception as error:  # vLLM 0.32: VLLMValidationError
        out["invalid_request_rejected"] = "em_inf_lr" in str(error)
    return out


def worker_emft_memory(payload: dict) -> dict:
    """One variant's (``sft`` | ``em_ft``) peak CUDA memory and median step time at V = 151,936."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from emreason.entropy import entropy_from_hidden

    shape = payload["shape"]
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB, hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
        num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"], tie_word_embeddings=True,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config).cuda().train()
    batch, prompt, completion = shape["batch"], shape["prompt"], shape["completion"]
    ids = torch.randint(0, VOCAB, (batch, prompt + completion), device="cuda")

    def step() -> None:
        if payload["variant"] == "sft":
            labels = ids.clone()
            labels[:, :prompt] = -100
            loss = model(input_ids=ids, labels=labels).loss
        else:  # what EMFTTrainer._compute_loss does: hidden states, chunked entropy, token mean
            outputs = model(input_ids=ids, output_hidden_states=True, logits_to_keep=1, use_cache=False)
            hidden = outputs.hidden_states[-1][:, prompt - 1 : -1]
            weight = model.get_output_embeddings().weight
            loss = entropy_from_hidden(hidden, weight, chunk_size=payload["chunk_size"]).mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    times = []
    for _ in range(payload["repeats"]):
        began = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
    return {"peak_bytes": int(peak), "step_s": statistics.median(times)}


WORKERS = {"vllm_offline": worker_vllm_offline, "emft_memory": worker_emft_memory}


# ----------------------------------------------------------------------------------------------------
# steps
# ----------------------------------------------------------------------------------------------------
def _version(module: str) -> str | None:
    try:
        return getattr(importlib.import_module(module), "__version__", "?")
    except Exception:
        return None


def probe_available() -> dict[str, bool]:
    """What this machine has: cuda, vllm, openai, trl (imports only; no CUDA context is created)."""
    import torch

    return {
        "cuda": bool(torch.cuda.is_available()),
        "vllm": importlib.util.find_spec("vllm") is not None,
        "openai": importlib.util.find_spec("openai") is not None,
        "transformers": importlib.util.find_spec("transformers") is not None,
        "trl": importlib.util.find_spec("trl") is not None,
        "device": bool(torch.cuda.is_available()),  # what hf_twin / vLLM steps run on (cuda, or --cpu-smoke)
        # TRL server mode: the server's NCCL rank needs a GPU of its own.
        "two_gpus": torch.cuda.is_available() and torch.cuda.device_count() >= 2,
    }


def triton_usable(has_vllm: bool) -> bool:
    """Triton as vLLM sees it (vLLM 0.32 picks Model Runner V2 by default exactly when this is true)."""
    if has_vllm:
        try:
            from vllm.triton_utils import HAS_TRITON

            return bool(HAS_TRITON)
        except Exception:
            pass
    return importlib.util.find_spec("triton") is not None


def step_environment(ctx: Context, budget: float) -> dict:
    import torch

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "transformers": _version("transformers"),
        "vllm": _version("vllm"),
        "trl": _version("trl"),
        "emreason": _version("emreason"),
        "triton": _version("triton"),
        "VLLM_USE_V2_MODEL_RUNNER": os.environ.get("VLLM_USE_V2_MODEL_RUNNER"),
        "available": ctx.available,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                       "count": torch.cuda.device_count()}  # fmt: skip
    return info


def resolve_model(requested: str | None) -> Path:
    """``--model``, else the Qwen2.5-format fixture (when emreason has it), else the toy model."""
    from emreason import toy

    if requested:
        path = Path(requested)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"--model {path} has no config.json")
        return path
    builder = getattr(toy, "qwen_format_path", None)
    if builder is not None:
        return Path(builder())
    return toy.model_path()


def step_prepare(ctx: Context, budget: float) -> dict:
    from transformers import AutoConfig, AutoTokenizer

    from emreason.toy.task import make_problems

    ctx.model = resolve_model(ctx.args.model)
    tokenizer = AutoTokenizer.from_pretrained(ctx.model)
    config = AutoConfig.from_pretrained(ctx.model)
    problems = make_problems("heldout", ctx.args.prompts)
    conversations = [[{"role": "user", "content": p.prompt}] for p in problems]
    token_ids = [
        list(tokenizer.apply_chat_template(c, tokenize=True, add_generation_prompt=True, return_dict=False))
        for c in conversations
    ]
    write_json_atomic(ctx.workdir / "prompts.json", {"conversations": conversations, "token_ids": token_ids})
    limit = getattr(config, "max_position_embeddings", None) or ctx.args.max_model_len
    ctx.max_model_len = min(ctx.args.max_model_len, int(limit))
    longest = max(map(len, token_ids)) + ctx.args.max_new_tokens
    if longest > ctx.max_model_len:
        raise ValueError(
            f"prompt + max_new_tokens needs {longest} positions; max_model_len {ctx.max_model_len}"
        )
    return {
        "model": str(ctx.model),
        "vocab_size": config.vocab_size,
        "architectures": config.architectures,
        "eos_token": tokenizer.eos_token,
        "prompts": len(token_ids),
        "max_model_len": ctx.max_model_len,
        "prompt_tokens_mean": round(sum(map(len, token_ids)) / len(token_ids), 1),
        "example": tokenizer.decode(token_ids[0]),
    }


def step_hf_twin(ctx: Context, budget: float) -> dict:
    """Greedy transformers decodes (one prompt at a time: no padding effects), float32 on CUDA."""
    import torch
    from transformers import AutoModelForCausalLM, LogitsProcessorList

    from emreason.integrations.transformers import EMInfLogitsProcessor

    deadline = time.monotonic() + budget
    device = ctx.device
    model = AutoModelForCausalLM.from_pretrained(ctx.model, dtype=torch.float32).to(device).eval()
    eos = model.generation_config.eos_token_id
    prompts = _prompts(ctx.workdir)["token_ids"]
    out: dict[str, Any] = {"modes": {}}
    for mode, xargs in MODES.items():
        options = {k.removeprefix("em_inf_"): v for k, v in (xargs or {}).items() if k != "em_inf"}
        processors = LogitsProcessorList([EMInfLogitsProcessor(**options)] if xargs else [])
        tokens, first = [], []
        began = time.monotonic()
        for ids in prompts:
            if time.monotonic() > deadline:
                raise TimeoutError(f"hf_twin ran past its {budget:.0f} s budget in mode {mode}")
            with torch.no_grad():
                generated = model.generate(
                    torch.tensor([ids], device=device), attention_mask=torch.ones(1, len(ids), device=device),
                    max_new_tokens=ctx.args.max_new_tokens, do_sample=False, temperature=None, top_p=None,
                    top_k=None, repetition_penalty=1.0, logits_processor=processors, output_scores=True,
                    return_dict_in_generate=True, eos_token_id=eos,
                )  # fmt: skip
            new = generated.sequences[0, len(ids) :].tolist()
            tokens.append(new)
            logp = torch.log_softmax(generated.scores[0][0].float(), -1)
            top = torch.topk(logp, TOP_LOGPROBS)
            first.append({str(int(t)): float(v) for t, v in zip(top.indices, top.values)})
        out["modes"][mode] = {"seconds": round(time.monotonic() - began, 3), "token_ids": tokens,
                              "first_logprobs": first}  # fmt: skip
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def _offline_payload(ctx: Context) -> dict:
    return {
        "workdir": str(ctx.workdir),
        "model": str(ctx.model),
        "max_new_tokens": ctx.args.max_new_tokens,
        "gpu_memory_utilization": ctx.args.gpu_memory_utilization,
        "max_model_len": ctx.max_model_len or ctx.args.max_model_len,
        "enforce_eager": not ctx.args.cuda_graphs,
    }


def step_vllm(runner_env: str | None) -> Callable[[Context, float], dict]:
    def run(ctx: Context, budget: float) -> dict:
        env = {"VLLM_USE_V2_MODEL_RUNNER": runner_env} if runner_env is not None else {}
        if runner_env is None:
            os.environ.pop("VLLM_USE_V2_MODEL_RUNNER", None)  # vLLM's own choice
        name = "vllm_default" if runner_env is None else "vllm_classic"
        result = run_worker("vllm_offline", _offline_payload(ctx), budget, env=env,
                            log=ctx.workdir / f"{name}.log")  # fmt: skip
        expected_v2 = runner_env is None and ctx.available.get("triton", False)
        result["checks"] = {
            "invalid_request_rejected": {"value": result["invalid_request_rejected"], "limit": True,
                                         "passed": bool(result["invalid_request_rejected"])},
            "runner": {"value": result["use_v2_model_runner"], "limit": expected_v2,
                       "passed": result["use_v2_model_runner"] == expected_v2},
        }  # fmt: skip
        return result

    return run


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(ctx: Context, port: int) -> list[str]:
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(ctx.model),
        "--served-model-name", "model", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
        "--gpu-memory-utilization", str(ctx.args.gpu_memory_utilization),
        "--max-model-len", str(ctx.max_model_len or ctx.args.max_model_len),
        "--logprobs-mode", "processed_logprobs", "--seed", "0",
    ]  # fmt: skip
    return command + ([] if ctx.args.cuda_graphs else ["--enforce-eager"])


def _wait_healthy(server: subprocess.Popen, port: int, deadline: float, log_path: Path) -> None:
    """Until the server on ``port`` answers /health; raise if it exits or the deadline passes."""
    while True:
        if server.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"server exited with {server.returncode}:\n{tail}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"server not ready within the step budget; log {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            time.sleep(1)


def step_vllm_serve(ctx: Context, budget: float) -> dict:
    import openai
    from emreason.evals.backends import GenerationConfig
    from emreason.evals.backends.openai_server import OpenAIServerBackend

    deadline = time.monotonic() + budget
    port = _free_port()
    log_path = ctx.workdir / "vllm_serve.log"
    env = {k: v for k, v in os.environ.items() if k != "VLLM_USE_V2_MODEL_RUNNER"}
    with open(log_path, "w") as log:
        server = subprocess.Popen(server_command(ctx, port), stdout=log, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)  # fmt: skip
    try:
        began = time.monotonic()
        _wait_healthy(server, port, deadline, log_path)
        out: dict[str, Any] = {"startup_s": round(time.monotonic() - began, 2), "modes": {}}
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        prompts = _prompts(ctx.workdir)
        for mode, xargs in MODES.items():
            texts, tokens = [], []
            for ids in prompts["token_ids"]:
                response = client.completions.create(
                    model="model", prompt=ids, max_tokens=ctx.args.max_new_tokens, temperature=0.0,
                    extra_body={"vllm_xargs": xargs, "return_token_ids": True} if xargs
                    else {"return_token_ids": True},
                )  # fmt: skip
                choice = response.choices[0]
                texts.append(choice.text)
                tokens.append(list(getattr(choice, "token_ids", None) or []))
            out["modes"][mode] = {"text": texts, "token_ids": tokens}
        try:
            bad = {"vllm_xargs": {"em_inf": 1, "em_inf_steps": -3}}
            client.completions.create(
                model="model", prompt=prompts["token_ids"][0], max_tokens=1, extra_body=bad
            )
            rejected = False
        except openai.BadRequestError as error:
            rejected = error.status_code == 400 and "em_inf_steps" in str(error)
        # The eval harness's server backend: start-up checks (model, EM-INF probe) and chat requests.
        backend = OpenAIServerBackend(
            f"http://127.0.0.1:{port}", GenerationConfig(max_new_tokens=ctx.args.max_new_tokens, em_inf=True)
        )
        chats = backend.generate(prompts["conversations"][:8])
        out["eval_backend_chat_texts"] = [c[0] for c in chats]
        out["checks"] = {"invalid_request_400": {"value": rejected, "limit": True, "passed": rejected}}
        log_text = log_path.read_text(errors="replace")
        out["runner_log_lines"] = [line[-200:] for line in log_text.splitlines() if "Model Runner" in line][
            :5
        ]
        return out
    finally:
        _kill_group(server)


def _median_cuda_ms(fn: Callable[[], Any], repeats: int) -> float:
    import torch

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def step_processor_timing(ctx: Context, budget: float) -> dict:
    import torch

    from emreason.em_inf import EMInfConfig, EMInfWorkspace, minimize_entropy

    rows = []
    for batch in (1, 64):
        logits = (
            torch.randn(batch, VOCAB, device="cuda", generator=torch.Generator("cuda").manual_seed(batch)) * 3
        )
        workspace = EMInfWorkspace()
        with torch.inference_mode():
            softmax_ms = _median_cuda_ms(lambda x=logits: torch.softmax(x, -1), 50)
            row = {"batch": batch, "vocab": VOCAB, "softmax_ms": round(softmax_ms, 4)}
            for label, config in (
                ("worst_case_3_steps", EMInfConfig(threshold=0.0)),
                ("defaults", EMInfConfig()),
            ):
                # eager (the default), and the fused cores of emreason.em_inf_fused: Triton kernels and
                # torch.compile (inductor's CUDA code); the first call of each compiles, then warm-up.
                for fused in ("off", "triton", "compile"):
                    key = f"core_{label}" if fused == "off" else f"core_{label}_{fused}"
                    try:
                        ms = _median_cuda_ms(
                            lambda x=logits, c=config, w=workspace, f=fused: minimize_entropy(
                                x, c, workspace=w, fused=f, fused_fallback=False
                            ),
                            30,
                        )
                    except Exception as error:  # a backend missing here is recorded, not fatal
                        row[f"{key}_error"] = f"{type(error).__name__}: {error}"[:300]
                        continue
                    row[f"{key}_ms"] = round(ms, 4)
                    row[f"{key}_softmax_eq"] = round(ms / softmax_ms, 2)
            if ctx.available.get("vllm"):
                row.update(_vllm_processor_timing(logits, softmax_ms))
        rows.append(row)
    return {"rows": rows}


def _vllm_processor_timing(logits, softmax_ms: float) -> dict:
    """The vLLM processor's classic ``apply`` (slot table, per-row parameters, core) on hand-made slots."""
    from types import SimpleNamespace

    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate

    from emreason.integrations.vllm import EMInfLogitsProcessor

    batch = logits.shape[0]
    config = SimpleNamespace(scheduler_config=SimpleNamespace(max_num_seqs=max(batch, 8)), model_config=None)
    proc = EMInfLogitsProcessor(config, logits.device, False)
    added = [(i, SamplingParams(extra_args={"em_inf": 1}), [], []) for i in range(batch)]
    proc.update_state(BatchUpdate(batch, [], added, []))
    ms = _median_cuda_ms(lambda: proc.apply(logits.clone()), 30)
    clone_ms = _median_cuda_ms(lambda: logits.clone(), 30)
    return {
        "vllm_apply_ms": round(ms - clone_ms, 4),
        "vllm_apply_softmax_eq": round((ms - clone_ms) / softmax_ms, 2),
    }


EMFT_SHAPE = dict(
    hidden=896, intermediate=4864, layers=2, heads=14, kv_heads=2, batch=4, prompt=128, completion=512
)


def step_emft_memory(ctx: Context, budget: float) -> dict:
    """Qwen2.5-0.5B widths (2 layers) at V = 151,936; each variant in a fresh process."""
    out: dict[str, Any] = {"shape": EMFT_SHAPE | {"vocab": VOCAB}}
    deadline = time.monotonic() + budget
    for variant in ("sft", "em_ft"):
        payload = {"workdir": str(ctx.workdir), "variant": variant, "shape": EMFT_SHAPE, "chunk_size": 1024,
                   "repeats": 3}  # fmt: skip
        out[variant] = run_worker("emft_memory", payload, max(deadline - time.monotonic(), 1.0),
                                  log=ctx.workdir / f"emft_{variant}.log")  # fmt: skip
    out["memory_ratio"] = out["em_ft"]["peak_bytes"] / max(out["sft"]["peak_bytes"], 1)
    out["time_ratio"] = out["em_ft"]["step_s"] / out["sft"]["step_s"]
    out["checks"] = {"memory_ratio": check(out["memory_ratio"], LIMITS["emft_memory_ratio"], False)}
    return out


# ----------------------------------------------------------------------------------------------------
# TRL with vLLM generation (use_vllm=True): colocate on one GPU, server mode on two
# ----------------------------------------------------------------------------------------------------
def trl_run_command(ctx: Context, out: Path, mode: str, server_url: str | None = None) -> list[str]:
    """``scripts/trl_vllm_run.py`` (EM-RL, sequence reward) on CUDA, as the vLLM CPU suite runs it."""
    command = [
        sys.executable, str(TRL_RUN), "em_rl_sequence", str(out), "--model-dir", str(ctx.model),
        "--steps", str(TRL_STEPS), "--learning-rate", "3e-4", "--max-completion-length", "48",
        "--device", "cuda", "--vllm-mode", mode, "--vllm-dtype", "float32",
        "--vllm-gpu-memory-utilization", str(ctx.args.gpu_memory_utilization),
    ]  # fmt: skip
    return command + (["--server-url", server_url] if server_url else [])


def trl_server_command(ctx: Context, port: int) -> list[str]:
    """The server ``trl vllm-serve`` starts (TRL's own builder: NCCL weight transfer, processed logprobs)."""
    from trl.scripts.vllm_serve import ScriptArguments, build_command

    script_args = ScriptArguments(
        model=str(ctx.model), host="127.0.0.1", port=port, dtype="float32",
        gpu_memory_utilization=ctx.args.gpu_memory_utilization,
        max_model_len=ctx.max_model_len or ctx.args.max_model_len, enforce_eager=not ctx.args.cuda_graphs,
    )  # fmt: skip
    return build_command(script_args)


def trl_checks(run: dict) -> dict:
    """The pass criteria of a ``trl_vllm_run.py`` result (what the CPU suite asserts, in numbers)."""
    rollouts = run["rollouts"]
    token_gap = max(r["max_token_gap"] for r in rollouts)
    reward_gap = max(
        abs(a - b) for r in rollouts for a, b in zip(r["vllm_sequence_rewards"], r["hf_sequence_rewards"])
    )
    moved = min((r["max_token_gap_vs_initial"] for r in rollouts[1:]), default=0.0)
    return {
        "steps": {"value": len(run["losses"]), "limit": TRL_STEPS, "passed": len(run["losses"]) == TRL_STEPS},
        "token_gap": check(token_gap, LIMITS["trl_token_gap"], False),
        "sequence_reward_gap": check(reward_gap, LIMITS["trl_sequence_reward_gap"], False),
        "weights_reached_vllm": check(moved, LIMITS["trl_moved_from_initial"], True),
    }


def _run_trl(ctx: Context, command: list[str], env: dict, budget: float, name: str) -> dict:
    run = run_json_process(command, name, ctx.workdir / f"{name}.log", budget, env)
    summary = {k: run[k] for k in ("vllm_mode", "vllm_dtype", "losses", "weights_moved")}
    summary["rollouts"] = [
        {k: r[k] for k in ("step", "max_token_gap", "max_token_gap_vs_initial", "model_change", "lengths")}
        for r in run["rollouts"]
    ]
    return summary | {"checks": trl_checks(run)}


def step_trl_colocate(ctx: Context, budget: float) -> dict:
    out = ctx.workdir / "trl_colocate"
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "CUDA_VISIBLE_DEVICES": "0"}
    return _run_trl(ctx, trl_run_command(ctx, out, "colocate"), env, budget, "trl_colocate")


def step_trl_server(ctx: Context, budget: float) -> dict:
    deadline = time.monotonic() + budget
    port = _free_port()
    log_path = ctx.workdir / "trl_server.log"
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "CUDA_VISIBLE_DEVICES": "1"}
    with open(log_path, "w") as log:
        server = subprocess.Popen(trl_server_command(ctx, port), stdout=log, stderr=subprocess.STDOUT,
                                  env=env, start_new_session=True)  # fmt: skip
    try:
        began = time.monotonic()
        _wait_healthy(server, port, deadline, log_path)
        startup = round(time.monotonic() - began, 2)
        out = ctx.workdir / "trl_server_run"
        command = trl_run_command(ctx, out, "server", f"http://127.0.0.1:{port}")
        result = _run_trl(ctx, command, {"CUDA_VISIBLE_DEVICES": "0"}, max(deadline - time.monotonic(), 1.0),
                          "trl_server_trainer")  # fmt: skip
        return {"server_startup_s": startup, **result}
    finally:
        _kill_group(server)


def _agreement(a: list, b: list) -> float:
    return sum(x == y for x, y in zip(a, b)) / max(len(a), 1) if len(a) == len(b) else float("nan")


def _first_gap(vllm_first: list[dict], hf_first: list[dict]) -> float:
    """Largest |logprob difference| on tokens both report at the first generated position."""
    gap = 0.0
    for ours, theirs in zip(vllm_first, hf_first):
        shared = set(ours) & set(theirs)
        if not shared:
            return float("inf")
        gap = max(gap, max(abs(ours[t] - theirs[t]) for t in shared))
    return gap


def step_compare(ctx: Context, budget: float) -> dict:
    res = ctx.results
    out: dict[str, Any] = {}
    checks: dict[str, dict] = {}
    default, classic, hf, serve = (
        res.get(k) for k in ("vllm_default", "vllm_classic", "hf_twin", "vllm_serve")
    )
    for mode in MODES:
        if default and classic:
            value = _agreement(default["modes"][mode]["token_ids"], classic["modes"][mode]["token_ids"])
            checks[f"v2_vs_classic_{mode}"] = check(value, LIMITS["runner_token_agreement"], True)
        for label, run in (("default", default), ("classic", classic)):
            if run and hf:
                value = _agreement(run["modes"][mode]["token_ids"], hf["modes"][mode]["token_ids"])
                checks[f"{label}_vs_hf_{mode}"] = check(value, LIMITS["twin_token_agreement"], True)
                gap = _first_gap(run["modes"][mode]["first_logprobs"], hf["modes"][mode]["first_logprobs"])
                checks[f"{label}_vs_hf_first_logprob_{mode}"] = check(gap, LIMITS["first_logprob_gap"], False)
        if serve and default:
            value = _agreement(serve["modes"][mode]["text"], default["modes"][mode]["text"])
            checks[f"server_vs_offline_{mode}"] = check(value, LIMITS["server_text_agreement"], True)
        if default:
            changed = _agreement(default["modes"][mode]["token_ids"], default["modes"]["off"]["token_ids"])
            out[f"share_unchanged_by_{mode}"] = (
                changed  # informative: how often EM-INF changes a greedy decode
            )
    if not checks:
        raise RuntimeError("nothing to compare: the vLLM / transformers steps did not produce results")
    out["checks"] = checks
    return out


def build_plan() -> list[Step]:
    def dry_prepare(ctx: Context) -> dict:
        info = step_prepare(ctx, 60.0)  # CPU-only: tokenizer, config, prompts
        info["server_command"] = server_command(ctx, 8000)
        info["worker_command"] = worker_command("vllm_offline", _offline_payload(ctx))
        return info

    def dry_imports(ctx: Context) -> dict:
        modules = ["emreason.em_inf", "emreason.entropy", "emreason.integrations.transformers",
                   "emreason.evals.backends.openai_server"]  # fmt: skip
        if ctx.available.get("vllm"):
            modules.append("emreason.integrations.vllm")
        for module in modules:
            importlib.import_module(module)
        return {"imported": modules}

    def dry_trl(mode: str) -> Callable[[Context], dict]:
        def plan(ctx: Context) -> dict:
            if ctx.model is None:
                ctx.model = resolve_model(ctx.args.model)
            url = "http://127.0.0.1:8000" if mode == "server" else None
            info: dict[str, Any] = {"trainer_command": trl_run_command(ctx, ctx.workdir / mode, mode, url)}
            if not TRL_RUN.is_file():
                raise FileNotFoundError(TRL_RUN)
            if mode == "server" and ctx.available.get("trl"):
                info["server_command"] = trl_server_command(ctx, 8000)
            return info

        return plan

    return [
        Step("environment", 15, (), step_environment, "versions, GPU, Triton",
             dry=lambda c: step_environment(c, 15)),
        Step("prepare", 45, (), step_prepare, "model folder and chat-rendered prompts", dry=dry_prepare),
        Step("hf_twin", 45, ("device",), step_hf_twin, "transformers greedy, with/without EM-INF",
             dry=dry_imports),
        Step("vllm_default", 80, ("device", "vllm"), step_vllm(None),
             "offline LLM, vLLM's own runner choice (V2 with Triton)"),
        Step("vllm_classic", 75, ("device", "vllm"), step_vllm("0"),
             "offline LLM, VLLM_USE_V2_MODEL_RUNNER=0 (classic runner)"),
        Step("vllm_serve", 85, ("device", "vllm", "openai"), step_vllm_serve,
             "api_server (= vllm serve) + vllm_xargs + the eval server backend"),
        Step("processor_timing", 50, ("cuda",), step_processor_timing,
             "EM-INF per decode step at V=151,936, B=1/64, softmax-equivalents"),
        Step("emft_memory", 45, ("cuda",), step_emft_memory, "EM-FT vs SFT peak memory at V=151,936"),
        Step("compare", 5, (), step_compare, "V2 vs classic, vLLM vs twin, server vs offline"),
        Step("trl_colocate", 60, ("cuda", "vllm", "trl"), step_trl_colocate,
             "EM-RL use_vllm colocate, 3 steps: rollout log-probs vs HF, weight sync",
             dry=dry_trl("colocate")),
        Step("trl_server", 65, ("two_gpus", "vllm", "trl"), step_trl_server,
             "EM-RL use_vllm server (trl vllm-serve on GPU 1, NCCL sync), 3 steps",
             dry=dry_trl("server")),
    ]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="gpu_check.json", help="the JSON report")
    parser.add_argument("--dry-run", action="store_true", help="CPU-only checks and the plan; no CUDA needed")
    parser.add_argument("--model", default=None, help="model folder (default: Qwen2.5-format fixture or toy)")
    parser.add_argument("--workdir", default=None, help="logs and intermediate files (default: a temp dir)")
    parser.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT_S, help="seconds, whole run")
    parser.add_argument("--prompts", type=int, default=32, help="held-out toy problems to decode")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    parser.add_argument(
        "--cuda-graphs", action="store_true", help="let vLLM capture CUDA graphs (slower start)"
    )
    parser.add_argument("--steps", default=None, help="comma-separated subset of steps to run")
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="run the device-agnostic steps on CPU (tests this script)"
    )
    parser.add_argument(
        "--budget-scale", type=float, default=None, help="multiply step budgets (default 1; --cpu-smoke: 6)"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--payload", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is None:
        if args.time_limit <= 0:
            parser.error(f"--time-limit must be > 0, got {args.time_limit}")
        if args.prompts < 1 or args.max_new_tokens < 1:
            parser.error("--prompts and --max-new-tokens must be >= 1")
        if args.budget_scale is None:
            args.budget_scale = 6.0 if args.cpu_smoke else 1.0
        if args.budget_scale <= 0:
            parser.error(f"--budget-scale must be > 0, got {args.budget_scale}")
        if not 0 < args.gpu_memory_utilization <= 1:
            parser.error(f"--gpu-memory-utilization must be in (0, 1], got {args.gpu_memory_utilization}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:  # a subprocess of a step: print the result as the last stdout line
        print(json.dumps(WORKERS[args.worker](json.loads(args.payload))), flush=True)
        return 0
    started = time.monotonic()
    plan = build_plan()
    for step in plan:
        step.budget_s *= args.budget_scale
    if args.steps:
        wanted = [s.strip() for s in args.steps.split(",") if s.strip()]
        unknown = sorted(set(wanted) - {s.name for s in plan})
        if unknown:
            raise SystemExit(f"unknown step(s) {unknown}; known: {[s.name for s in plan]}")
        plan = [s for s in plan if s.name in wanted]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="emreason-gpu-check-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(args=args, workdir=workdir, deadline=started + args.time_limit)
    ctx.available = probe_available()
    ctx.available["triton"] = triton_usable(ctx.available["vllm"])
    if args.cpu_smoke:  # the device-agnostic steps on CPU (hf_twin, vLLM, server), to test this script
        ctx.device = "cpu"
        ctx.available["device"] = True
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    output = Path(args.output)
    report = {
        "report_version": REPORT_VERSION,
        "dry_run": args.dry_run,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "time_limit_s": args.time_limit,
        "planned_budget_s": sum(s.budget_s for s in plan),
        "workdir": str(workdir),
        "limits": LIMITS,
        "arguments": {k: v for k, v in vars(args).items() if k not in ("worker", "payload")},
        "steps": [],
    }
    report = run_plan(plan, ctx, report, output, args.dry_run)
    report["seconds"] = round(time.monotonic() - started, 1)
    write_json_atomic(output, report)
    print(json.dumps({"output": str(output), "passed": report["passed"], "summary": report["summary"]}))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
