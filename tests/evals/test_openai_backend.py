"""The OpenAI-server backend's start-up checks and requests, against a scripted HTTP server.

The real ``vllm serve`` path is covered in the vLLM venv (tests/integrations/vllm_suite/test_vllm_eval.py).
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from emreason.evals.backends import BackendError, GenerationConfig, make_backend
from emreason.evals.cli import main


class FakeServer(BaseHTTPRequestHandler):
    """Serves ``models``; rejects ``em_inf`` values the way the processor does when ``has_em_inf``."""

    models = ["m"]
    has_em_inf = True
    requests: list = []  # generation requests (not /tokenize lookups)
    tokenize = True  # answer vLLM's /tokenize; False: 404, as a server without it
    specials = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 - http.server naming
        assert self.path == "/v1/models", self.path
        self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]})

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/tokenize":
            if not self.tokenize:
                return self._send(404, {"detail": "Not Found"})
            text = body["prompt"]
            tokens = [self.specials[text]] if text in self.specials else [ord(c) for c in text]
            return self._send(200, {"tokens": tokens, "count": len(tokens), "max_model_len": 512})
        type(self).requests.append(body)
        xargs = body.get("vllm_xargs") or {}
        if self.has_em_inf and (xargs.get("em_inf", 0) not in (0, 1) or xargs.get("em_inf_steps", 0) < 0):
            bad = "em_inf" if xargs.get("em_inf", 0) not in (0, 1) else "em_inf_steps"
            error = {"message": f"{bad} is invalid", "type": "BadRequestError", "code": 400}
            return self._send(400, {"error": error})
        if body["model"] not in self.models:
            return self._send(404, {"error": {"message": "model not found", "code": 404}})
        if self.path == "/v1/completions":  # raw text; a stop string the server let through is cut
            choices = [
                {"index": i, "text": f"\\boxed{{{i}}}<|im_start|>user"} for i in range(body.get("n", 1))
            ]
            reply = {"id": "x", "object": "text_completion", "created": 0, "model": body["model"]}
            return self._send(200, {**reply, "choices": choices})
        assert self.path == "/v1/chat/completions", self.path
        choices = [
            {"index": i, "message": {"role": "assistant", "content": f"\\boxed{{{i}}}"}}
            for i in reversed(range(body.get("n", 1)))  # out of order: the backend must sort by index
        ]
        reply = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"]}
        self._send(200, {**reply, "choices": choices})

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    FakeServer.models, FakeServer.has_em_inf, FakeServer.requests, FakeServer.tokenize = ["m"], True, [], True
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()


def test_sends_sampling_settings_and_em_inf_switch(server):
    config = GenerationConfig(max_new_tokens=7, em_inf=True, em_inf_options={"steps": 3})
    backend = make_backend("vllm", server, config)  # the only served model is picked
    assert backend.model == "m"
    out = backend.generate([[{"role": "user", "content": "hi"}]] * 3, n=2)
    assert out == [["\\boxed{0}", "\\boxed{1}"]] * 3
    probes, sent = FakeServer.requests[:2], FakeServer.requests[-1]
    assert probes[0]["vllm_xargs"] == {"em_inf": 2} and probes[1]["max_tokens"] == 1
    assert sent["vllm_xargs"] == {"em_inf": 1, "em_inf_steps": 3} and sent["max_tokens"] == 7
    # Explicit neutral settings: the server's generation_config defaults must not apply.
    assert sent["top_k"] == 0 and sent["repetition_penalty"] == 1.0 and sent["temperature"] == 0.0


def test_plain_run_sends_no_probe_or_xargs(server):
    backend = make_backend("vllm", server + "/v1/", GenerationConfig(max_new_tokens=3), served_model="m")
    backend.generate([[{"role": "user", "content": "hi"}]])
    assert len(FakeServer.requests) == 1 and "vllm_xargs" not in FakeServer.requests[0]


def test_raw_prompts_use_the_completions_endpoint_with_stops(server):
    backend = make_backend("vllm", server, GenerationConfig(max_new_tokens=5, stop=("\n\nQuestion:",)))
    assert backend.stop_ids == [0, 1, 2]  # the special stop strings, looked up on the server
    out = backend.generate(["Compute 1+2.\nPlease reason step by step.", "Compute 3+4."], n=2)
    assert out == [["\\boxed{0}", "\\boxed{1}"]] * 2  # cut at <|im_start|>
    sent = FakeServer.requests[-1]
    assert sent["prompt"] in ("Compute 1+2.\nPlease reason step by step.", "Compute 3+4.")
    assert "messages" not in sent and sent["max_tokens"] == 5
    assert sent["stop"] == ["<|im_end|>", "<|endoftext|>", "<|im_start|>", "\n\nQuestion:"]
    assert sent["stop_token_ids"] == [0, 1, 2]
    backend.generate([[{"role": "user", "content": "hi"}]])
    chat = FakeServer.requests[-1]
    assert chat["messages"] and chat["stop"] == sent["stop"] and chat["stop_token_ids"] == [0, 1, 2]
    with pytest.raises(ValueError, match="mixes raw-text and chat"):
        backend.generate(["a", [{"role": "user", "content": "b"}]])
    FakeServer.tokenize = False  # a server without /tokenize: stop strings only
    plain = make_backend("vllm", server, GenerationConfig())
    plain.generate(["x"])
    assert plain.stop_ids == [] and "stop_token_ids" not in FakeServer.requests[-1]


def test_unreachable_server_is_a_clear_error():
    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(BackendError, match=rf"cannot reach .*127\.0\.0\.1:{port}/v1.*vllm serve"):
        make_backend("vllm", f"http://127.0.0.1:{port}", GenerationConfig(), max_retries=0)


def test_unknown_model_names_the_served_ones(server):
    FakeServer.models = ["qwen", "toy"]
    with pytest.raises(BackendError, match=r"does not serve 'llama'.*\['qwen', 'toy'\]"):
        make_backend("vllm", server, GenerationConfig(), served_model="llama")


def test_server_without_the_processor_is_refused(server):
    FakeServer.has_em_inf = False  # accepts any vllm_xargs, as vLLM does without the processor
    with pytest.raises(BackendError, match="EM-INF logits processor is not loaded"):
        make_backend("vllm", server, GenerationConfig(em_inf=True))
    make_backend("vllm", server, GenerationConfig())  # without --em-inf the server is fine


def test_bad_em_inf_options_fail_before_any_request(server):
    for options, match in (({"steps": -1}, "steps must be >= 0"), ({"stpes": 3}, "stpes")):
        with pytest.raises(ValueError, match=match):
            make_backend("vllm", server, GenerationConfig(em_inf=True, em_inf_options=options))
    with pytest.raises(ValueError, match="without em_inf"):
        GenerationConfig(em_inf_options={"steps": 3})
    assert FakeServer.requests == []


def test_cli_reports_backend_errors_as_usage_errors(server, tmp_path, capsys):
    args = ["--task", "toy", "--backend", "vllm", "--output", str(tmp_path), "--quiet"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--model", server, "--served-model", "nope"])
    assert exit_info.value.code == 2 and "does not serve 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--model", server, "--em-inf", "--em-inf-option", "lr=-1"])
    assert "lr must be > 0" in capsys.readouterr().err
