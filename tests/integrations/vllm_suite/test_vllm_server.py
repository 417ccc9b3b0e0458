"""End to end: real vLLM OpenAI servers with the toy model: with the EM-INF processor, plain, speculative.

Runs inside ``.venv-vllm`` (driven by ``tests/integrations/test_vllm.py``). The three servers start once
per module, concurrently, on free ports of 127.0.0.1 and are always stopped. The plain server has the
``em_inf`` entry point hidden (by a sitecustomize filter on ``importlib.metadata.entry_points``), so it
really has no processor; the speculative one (n-gram drafts, classic runner) has only the entry point.
Besides sampling checks, every out-of-range value from issue 17 must get HTTP 400 naming its key.
"""

from __future__ import annotations

import json
import math
import os
import textwrap
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import torch
from server_process import START_TIMEOUT_S, ServerProcess

from emreason.em_inf import EMInfConfig, minimize_entropy

pytestmark = pytest.mark.slow

MAX_TOKENS = 12
HIDE_ENTRY_POINT = textwrap.dedent(
    """
    import importlib.metadata as _md
    _entry_points = _md.entry_points
    def _without_em_inf(**kwargs):
        found = _entry_points(**kwargs)
        if kwargs.get("group") == "vllm.logits_processors":
            return _md.EntryPoints([ep for ep in found if not ep.value.startswith("emreason.")])
        return found
    _md.entry_points = _without_em_inf
    """
)


def toy_model_dir(tmp: Path) -> Path:
    """The bundled toy checkpoint, or (before it exists) a randomly initialised model of the same shape."""
    from emreason import toy

    try:
        return toy.model_path()
    except FileNotFoundError:
        from emreason.toy.pretrain import ToyPretrainConfig, build_model
        from emreason.toy.tokenizer import build_tokenizer

        torch.manual_seed(0)
        tokenizer = build_tokenizer()
        build_model(ToyPretrainConfig(), tokenizer).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        return tmp


class Server(ServerProcess):
    """One of the module's servers, with an OpenAI client: with ``--logits-processors``, or with only the
    entry point (``site_dir`` hides it: no processor at all), plus ``extra`` arguments."""

    def __init__(
        self, model: Path, log: Path, *, with_processor: bool, site_dir: Path | None, extra: tuple = ()
    ) -> None:
        args = [
            "--model", str(model),
            "--dtype", "float32", "--enforce-eager", "--max-model-len", "256", "--max-num-seqs", "16",
            "--logprobs-mode", "processed_logprobs", "--max-logprobs", "-1", "--seed", "0", *extra,
        ]  # fmt: skip
        env = {}
        if with_processor:
            args += ["--logits-processors", "emreason.integrations.vllm:EMInfLogitsProcessor"]
        elif site_dir is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(site_dir), os.environ.get("PYTHONPATH", "")])
        super().__init__(args, log, env)
        self.client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vllm_e2e")
    model = toy_model_dir(tmp / "model")
    site_dir = tmp / "site"
    site_dir.mkdir()
    (site_dir / "sitecustomize.py").write_text(HIDE_ENTRY_POINT)
    started = []
    try:
        for name, with_processor in (("em", True), ("plain", False)):
            started.append(
                Server(model, tmp / f"{name}.log", with_processor=with_processor, site_dir=site_dir)
            )
        # Speculative decoding (n-gram drafts) on the classic runner with only the entry point installed:
        # vLLM drops custom processors there, so EM-INF requests must be refused, not silently served.
        started.append(Server(model, tmp / "spec.log", with_processor=False, site_dir=None, extra=SPEC_ARGS))
        deadline = time.monotonic() + START_TIMEOUT_S
        for server in started:
            server.wait_ready(deadline)
        vocab = json.loads((model / "config.json").read_text())["vocab_size"]
        yield {"em": started[0], "plain": started[1], "spec": started[2], "model": str(model), "vocab": vocab}
    finally:
        for server in started:
            server.stop()


PROMPTS = ["Q: 3+4*2=?", "Q: (7-2)*3=?", "Q: 9-4+1=?"]
SPEC_ARGS = (
    "--speculative-config",
    json.dumps({"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 2}),
)


def complete(server: Server, model: str, vocab: int, prompt: str, seed: int, xargs: dict | None):
    """One sampled completion (T=1) with the full processed distribution at every generated position."""
    response = server.client.completions.create(
        model=model,
        prompt=f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n",
        max_tokens=MAX_TOKENS,
        temperature=1.0,
        seed=seed,
        logprobs=vocab,
        extra_body={"vllm_xargs": xargs, "return_tokens_as_token_ids": True}
        if xargs
        else {"return_tokens_as_token_ids": True},
    )
    choice = response.choices[0]
    distributions = []
    for top in choice.logprobs.top_logprobs:
        logp = torch.full((vocab,), -math.inf, dtype=torch.float64)
        for token, value in top.items():
            logp[int(token.removeprefix("token_id:"))] = max(value, -1e30)
        distributions.append(logp)
    return choice.text, torch.stack(distributions)


def entropy(logp: torch.Tensor) -> torch.Tensor:
    p = logp.exp()
    return -(p * torch.where(p > 0, logp, 0)).sum(-1)


def test_server_end_to_end(servers):
    em, plain, model, vocab = servers["em"], servers["plain"], servers["model"], servers["vocab"]
    custom = {"em_inf": 1, "em_inf_steps": 10, "em_inf_threshold": 0.1}
    jobs = []
    for i, prompt in enumerate(PROMPTS):
        for label, server, xargs in (
            ("off", em, None),
            ("off0", em, {"em_inf": 0}),
            ("on", em, {"em_inf": 1}),
            ("custom", em, custom),
            ("plain_off", plain, None),
            ("plain_on", plain, {"em_inf": 1}),
        ):
            jobs.append(((label, i), (server, model, vocab, prompt, 1000 + i, xargs)))
    invalid = [{"em_inf": 2}, {"em_inf": 1, "em_inf_steps": -3}, {"em_inf": 1, "em_inf_lr": "fast"}]
    with ThreadPoolExecutor(max_workers=len(jobs) + len(invalid)) as pool:
        futures = {key: pool.submit(complete, *args) for key, args in jobs}
        bad = [pool.submit(complete, em, model, vocab, PROMPTS[0], 1, xargs) for xargs in invalid]
        results = {key: future.result() for key, future in futures.items()}
        for future, xargs in zip(bad, invalid):
            with pytest.raises(openai.BadRequestError) as error:
                future.result()
            assert error.value.status_code == 400
            assert any(key in str(error.value) for key in xargs), str(error.value)

    sharpened = []
    for i in range(len(PROMPTS)):
        off_text, off_logp = results[("off", i)]
        plain_text, plain_logp = results[("plain_off", i)]
        # Requests without EM-INF are unaffected: same output as a server without the processor.
        assert off_text == plain_text
        torch.testing.assert_close(off_logp, plain_logp, rtol=0, atol=1e-4)
        assert results[("off0", i)][0] == off_text
        # The plain server really has no processor: em_inf there changes nothing.
        assert results[("plain_on", i)][0] == plain_text
        for label, config in (("on", EMInfConfig()), ("custom", EMInfConfig(steps=10, threshold=0.1))):
            _, on_logp = results[(label, i)]
            # First position: same context as the plain run, so the processed distribution must be EM-INF
            # applied to the plain server's raw distribution (EM-INF is invariant to a shift of the logits).
            # Compared as distributions: Adam moves a negligible-probability token by a full +-lr on the sign
            # of a tiny gradient, so its logit may differ while the distribution does not.
            expected = torch.softmax(minimize_entropy(plain_logp[:1].float(), config).double(), -1)[0]
            assert 0.5 * (on_logp[0].exp() - expected).abs().sum() < 1e-3, label
            # Lower entropy in the processed logprobs wherever the raw entropy was above the threshold (later
            # positions follow different sampled contexts, so only position 0 has a like-for-like baseline).
            raw_h, on_h = entropy(plain_logp[0]), entropy(on_logp[0])
            if raw_h >= config.threshold:
                assert on_h < raw_h - 1e-3, (label, i, float(on_h), float(raw_h))
                sharpened.append((label, i))
            else:
                assert abs(on_h - raw_h) < 1e-4, (label, i, float(on_h), float(raw_h))

    assert {label for label, _ in sharpened} == {"on", "custom"}, f"no prompt exercised EM-INF: {sharpened}"

    # The server keeps serving after the rejected requests.
    text, _ = complete(em, model, vocab, PROMPTS[1], 5, {"em_inf": 1})
    assert isinstance(text, str) and em.process.poll() is None


# What issue 17 found to crash (values that became inf or overflowed int64 in the worker) or to stall the
# engine (unbounded steps): each must be a 400 naming its key, and the server must keep serving.
OUT_OF_RANGE = [
    ({"em_inf": 1, "em_inf_steps": 2**63}, "em_inf_steps"),
    ({"em_inf": 1, "em_inf_steps": 2**64 - 1}, "em_inf_steps"),
    ({"em_inf": 1, "em_inf_steps": 1e19}, "em_inf_steps"),
    ({"em_inf": 1, "em_inf_steps": "1e30"}, "em_inf_steps"),
    ({"em_inf": 1, "em_inf_steps": 10**12, "em_inf_threshold": 0}, "em_inf_steps"),
    ({"em_inf": 1, "em_inf_steps": 101}, "em_inf_steps"),
    ({"em_inf": 1, "em_inf_lr": 1e39}, "em_inf_lr"),
    ({"em_inf": 1, "em_inf_threshold": 1e39}, "em_inf_threshold"),
    ({"em_inf": 1, "em_inf_kl_weight": 1e39}, "em_inf_kl_weight"),
    ({"em_inf": 1, "em_inf_kl_weight": "1e39"}, "em_inf_kl_weight"),
    ({"adaptive_temperature": 1, "adaptive_temperature_delta": 1e39}, "adaptive_temperature_delta"),
    ({"adaptive_temperature": 1, "adaptive_temperature_alpha": "nan"}, "adaptive_temperature_alpha"),
]


def post_completion(server: Server, model: str, xargs: dict) -> tuple[int, str]:
    """POST /v1/completions with raw JSON (so integers beyond 64 bits and strings go through as sent)."""
    body = {"model": model, "prompt": PROMPTS[0], "max_tokens": 4, "temperature": 1.0, "vllm_xargs": xargs}
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_server_rejects_out_of_range_values_and_keeps_serving(servers):
    em, model = servers["em"], servers["model"]
    with ThreadPoolExecutor(max_workers=len(OUT_OF_RANGE)) as pool:
        answers = list(pool.map(lambda case: post_completion(em, model, case[0]), OUT_OF_RANGE))
    for (xargs, key), (status, text) in zip(OUT_OF_RANGE, answers):
        assert status == 400, (xargs, status, text)
        assert key in text, (xargs, text)
    assert em.process.poll() is None, em.log_tail()
    status, text = post_completion(em, model, {"em_inf": 1, "em_inf_steps": 100, "em_inf_threshold": 0})
    assert status == 200 and json.loads(text)["choices"][0]["text"] is not None, text


def test_speculative_decoding_on_the_classic_runner_refuses_em_inf(servers):
    spec, model = servers["spec"], servers["model"]
    for xargs, key in (({"em_inf": 1}, "em_inf=1"), ({"adaptive_temperature": 1}, "adaptive_temperature=1")):
        status, text = post_completion(spec, model, xargs)
        assert status == 400 and key in text and "speculative decoding" in text, (status, text)
    for xargs in ({"em_inf": 0}, {}):
        status, text = post_completion(spec, model, xargs)
        assert status == 200, text
