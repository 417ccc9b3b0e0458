"""EM-INF speed: processor cost per decode step in softmax-equivalents, and vLLM server overhead.

    python benchmarks/em_inf.py                    # CPU, B in {1, 8, 64}, V = 151,936, plus the server part
    python benchmarks/em_inf.py --device cuda --no-server
    python benchmarks/em_inf.py --output benchmarks/results/em_inf.json
    .venv-vllm/bin/python benchmarks/em_inf.py --no-core --no-server --vllm-processor   # vLLM section

    OMP_NUM_THREADS=1 python benchmarks/em_inf.py --no-server --fused compile   # + the fused core

Prints one JSON object. ``processor``: per batch size, the median time (CPU time on CPU, synchronized
wall time on GPUs) of one ``minimize_entropy`` call with every row doing all ``steps`` Adam steps
(threshold 0: the worst case), eager and with each ``--fused`` backend, and of one softmax over the same
``[B, V]`` float32 tensor, measured interleaved round by round, and their ratios, overall and per Adam
step (goal: <= 5 softmax-equivalents per step at B = 1, <= 3 at B >= 8; fused keys are suffixed with
the backend). ``server``: generated tokens/s of a vLLM server (``.venv-vllm``, toy model) for the same
concurrent requests without and with ``em_inf``, and the slowdown. ``vllm_processor`` (only with
``--vllm-processor``, inside ``.venv-vllm``): the vLLM processor's ``apply`` per decode step on both runner
interfaces (hand-made classic batch / V2 context) for a mixed batch (off, EM-INF defaults, adaptive
temperature, EM-INF 10 steps, in turn) and an all-EM-INF batch, wall and CPU-time medians.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from emreason import em_inf_fused
from emreason.em_inf import EMInfConfig, EMInfWorkspace, minimize_entropy

REPO = Path(__file__).resolve().parents[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device: torch.device, repeats: int, warmup: int = 2, clock=None) -> float:
    """Median time of ``fn()``: CPU time of this process on CPU (robust to a shared, busy machine), wall
    time with synchronization on GPUs (or ``clock`` when given)."""
    return interleaved_medians({"fn": fn}, device, repeats, warmup, clock)["fn"]


def interleaved_medians(fns: dict, device: torch.device, repeats: int, warmup: int = 2, clock=None) -> dict:
    """Median time of each ``fns[name]()``, measured in turn within every round (so drifting load on a
    shared machine hits them alike): CPU time of this process on CPU, synchronized wall time on GPUs."""
    if clock is None:
        clock = time.process_time if device.type == "cpu" else time.perf_counter
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            _sync(device)
            times[name].append(clock() - start)
    return {name: sorted(values)[len(values) // 2] for name, values in times.items()}


def bench_processor(
    batch_sizes: list[int],
    vocab: int,
    device: torch.device,
    repeats: int,
    steps: int,
    fused: tuple[str, ...] = (),
) -> list[dict]:
    """Softmax, the eager core and each fused backend in ``fused``, interleaved per batch size."""
    config = EMInfConfig(steps=steps, threshold=0.0)
    workspace = EMInfWorkspace()  # reused across calls, as the integrations do
    compile_s = {}
    for backend in fused:  # compile before timing; report how long the first calls took
        start = time.perf_counter()
        em_inf_fused.warmup(backend, device, vocab=vocab)
        compile_s[backend] = round(time.perf_counter() - start, 1)
    rows = []
    for batch in batch_sizes:
        gen = torch.Generator(device="cpu").manual_seed(batch)
        logits = (torch.randn(batch, vocab, generator=gen) * 3).to(device)
        fns = {
            "softmax": lambda x=logits: torch.softmax(x, dim=-1),
            "eager": lambda x=logits: minimize_entropy(x, config, workspace=workspace, fused="off"),
        }
        for backend in fused:
            fns[backend] = lambda x=logits, b=backend: minimize_entropy(
                x, config, workspace=workspace, fused=b, fused_fallback=False
            )
        with torch.inference_mode():
            seconds = interleaved_medians(fns, device, repeats)
        softmax_s = seconds.pop("softmax")
        row = {"batch": batch, "vocab": vocab, "steps": steps, "softmax_ms": round(softmax_s * 1e3, 4)}
        for name, value in seconds.items():
            suffix = "" if name == "eager" else f"_{name}"  # eager keeps the earlier key names
            row[f"em_inf{suffix}_ms"] = round(value * 1e3, 4)
            row[f"softmax_equivalents{suffix}"] = round(value / softmax_s, 2)
            row[f"softmax_equivalents_per_adam_step{suffix}"] = round(value / softmax_s / steps, 2)
        if compile_s:
            row["first_call_compile_s"] = compile_s
        rows.append(row)
    return rows


def _vllm_requests(kind: str, batch: int):
    from vllm import SamplingParams

    cycle = {
        "mixed": [None, {"em_inf": 1}, {"adaptive_temperature": 1}, {"em_inf": 1, "em_inf_steps": 10}],
        "all_em_inf": [{"em_inf": 1}],
    }[kind]
    return [SamplingParams(temperature=1.0, extra_args=cycle[i % len(cycle)]) for i in range(batch)]


def bench_vllm_processor(batch_sizes: list[int], vocab: int, device: torch.device, repeats: int) -> list:
    """Per-decode-step time of ``EMInfLogitsProcessor.apply`` on both runner interfaces."""
    from types import SimpleNamespace

    import numpy as np
    from vllm.v1.sample.logits_processor import BatchUpdate
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcRequestState

    from emreason.integrations.vllm import EMInfLogitsProcessor

    rows = []
    for batch in batch_sizes:

        def engine_config(batch=batch):  # one per processor: a second one per engine stands the first down
            scheduler = SimpleNamespace(max_num_seqs=batch)
            return SimpleNamespace(scheduler_config=scheduler, model_config=None, speculative_config=None)

        gen = torch.Generator(device="cpu").manual_seed(batch)
        logits = (torch.randn(batch, vocab, generator=gen) * 3).to(device)
        for kind in ("mixed", "all_em_inf"):
            requests = _vllm_requests(kind, batch)
            classic = EMInfLogitsProcessor(engine_config(), device, False)
            classic.update_state(BatchUpdate(batch, [], [(i, r, [], []) for i, r in enumerate(requests)], []))
            state = LogitsProcRequestState(
                device=device, max_num_reqs=batch, vocab_size=vocab, all_token_ids=None,
                prompt_len=None, prefill_len=None, total_len=None,
            )  # fmt: skip
            v2 = EMInfLogitsProcessor(engine_config(), state)
            for i, r in enumerate(requests):
                v2.add_request(i, r)
            slots = np.arange(batch, dtype=np.int32)
            ctx = LogitsContext(
                expanded_idx_mapping=torch.from_numpy(slots).to(device),
                idx_mapping=torch.from_numpy(slots).to(device),
                idx_mapping_np=slots,
                expanded_local_pos=torch.zeros(batch, dtype=torch.int32, device=device),
                input_ids=torch.zeros(batch, dtype=torch.int32, device=device),
                pos=torch.zeros(batch, dtype=torch.int64, device=device),
                seq_lens_upper_bound_np=np.full(batch, 1 << 20, dtype=np.int32),
            )
            for runner, call in (
                ("classic", lambda p=classic, x=logits: p.apply(x.clone())),
                ("v2", lambda p=v2, x=logits, c=ctx: p.apply(x.clone(), c)),
            ):
                with torch.inference_mode():
                    cpu_s = median_seconds(call, device, repeats)
                    wall_s = median_seconds(call, device, repeats, clock=time.perf_counter)
                rows.append(
                    {
                        "runner": runner, "batch": batch, "vocab": vocab, "requests": kind,
                        "repeats": repeats, "median_ms": round(wall_s * 1e3, 2),
                        "median_cpu_ms": round(cpu_s * 1e3, 2),
                    }
                )  # fmt: skip
    return rows


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_server(
    venv_python: Path, model: Path, requests: int, max_tokens: int, start_timeout: float, rounds: int
) -> dict:
    import openai

    port = _free_port()
    log = tempfile.NamedTemporaryFile("w", suffix=".log", delete=False)  # noqa: SIM115 (closed below)
    args = [
        str(venv_python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
        "--max-model-len", "256", "--max-num-seqs", str(max(requests, 1)), "--seed", "0",
        "--logits-processors", "emreason.integrations.vllm:EMInfLogitsProcessor",
    ]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    server = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vLLM server did not start; see {log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                time.sleep(1)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")

        def one(i: int, xargs: dict | None) -> int:
            body = {"ignore_eos": True, **({"vllm_xargs": xargs} if xargs else {})}
            response = client.completions.create(
                model=str(model), prompt=f"Q: {i}+{i}*2=?", max_tokens=max_tokens, temperature=1.0, seed=i,
                extra_body=body,
            )  # fmt: skip
            return response.usage.completion_tokens

        def tokens_per_second(xargs: dict | None) -> float:
            with ThreadPoolExecutor(max_workers=requests) as pool:
                list(pool.map(lambda i: one(i, xargs), range(2)))  # warm-up
                start = time.perf_counter()
                tokens = sum(pool.map(lambda i: one(i, xargs), range(requests)))
            return tokens / (time.perf_counter() - start)

        tokens_per_second(None)  # warm-up round
        # Alternating rounds, medians: the machine may be shared and drift.
        plain, with_em = [], []
        for _ in range(rounds):
            plain.append(tokens_per_second(None))
            with_em.append(tokens_per_second({"em_inf": 1}))
        plain_med, em_med = sorted(plain)[rounds // 2], sorted(with_em)[rounds // 2]
        return {
            "model": str(model),
            "concurrent_requests": requests,
            "max_tokens": max_tokens,
            "rounds": rounds,
            "tokens_per_s_without": round(plain_med, 2),
            "tokens_per_s_with_em_inf": round(em_med, 2),
            "all_rounds_without": [round(x, 1) for x in plain],
            "all_rounds_with": [round(x, 1) for x in with_em],
            "slowdown": round(plain_med / em_med, 3),
        }
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        log.close()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--steps", type=int, default=EMInfConfig().steps)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--core", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--fused", nargs="*", default=[], choices=["compile", "triton"],
        help="also time these fused backends (compiled before timing), interleaved with eager",
    )  # fmt: skip
    parser.add_argument("--vllm-processor", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--server", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--venv", type=Path, default=REPO / ".venv-vllm")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--start-timeout", type=float, default=900)
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here (atomically)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.vocab < 2 or args.repeats < 1 or min(args.batch_sizes) < 1:
        raise ValueError(f"need steps >= 1, vocab >= 2, repeats >= 1, batch sizes >= 1; got {vars(args)}")

    device = torch.device(args.device)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
    }
    if args.core:
        result["processor"] = bench_processor(
            args.batch_sizes, args.vocab, device, args.repeats, args.steps, tuple(args.fused)
        )
    if args.vllm_processor:
        result["vllm_processor"] = bench_vllm_processor(args.batch_sizes, args.vocab, device, args.repeats)
    if args.server:
        venv_python = args.venv / "bin" / "python"
        if not venv_python.is_file():
            result["server"] = {"skipped": f"{venv_python} missing; run bash scripts/setup_vllm_venv.sh"}
        else:
            from emreason import toy

            result["server"] = bench_server(
                venv_python, toy.model_path(), args.requests, args.max_tokens, args.start_timeout, args.rounds
            )
    text = json.dumps(result)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.output.with_suffix(args.output.suffix + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, args.output)
    print(text)
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
