"""A real `shoestring serve` process on 127.0.0.1: the official openai client, streaming,
auth, 429, cancellation on disconnect, SIGTERM drain, and one-line CLI errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

KEY = "test-key-123"
# Tokens a long request asks for: seconds of generation even at thousands of tokens/s.
LONG = 8000


class Server:
    def __init__(self, proc: subprocess.Popen[str], url: str) -> None:
        self.proc, self.url = proc, url

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        raise KeyError(name)


def start_server(model: Path, *flags: str) -> Server:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "shoestring.cli", "serve", str(model), "--port", "0", "--model-name", "tiny", *flags]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"on (http://127\.0\.0\.1:\d+)/v1", line)
        if m:
            # Keep draining stderr so the server never blocks on a full pipe.
            threading.Thread(target=lambda: [lines.append(x) for x in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
            return Server(proc, m.group(1))
    proc.kill()
    raise AssertionError("server did not start:\n" + "".join(lines))


@pytest.fixture(scope="module", params=["torch", "llama.cpp"])
def server(tiny_llama_long: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    """A real server process per CPU engine; every test below runs against both. The model's
    8,192-token context lets a request outlive the client actions the tests time."""
    s = start_server(tiny_llama_long, "--api-key", KEY, "--max-queue", "3", "--max-batch-size", "2", "--engine", request.param)
    yield s
    if s.proc.poll() is None:
        s.proc.terminate()
        s.proc.wait(30)


def _client(server: Server, key: str = KEY) -> Any:
    import openai

    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)


def test_official_openai_client_chat_stream_completions_models(server: Server) -> None:
    client = _client(server)
    assert [m.id for m in client.models.list()] == ["tiny"]
    msgs = [{"role": "user", "content": "Hello there"}]
    resp = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0)  # type: ignore[arg-type]
    assert resp.choices[0].finish_reason == "length" and resp.usage is not None and resp.usage.completion_tokens == 10
    stream = client.chat.completions.create(
        model="tiny", messages=msgs, max_tokens=10, temperature=0, stream=True, stream_options={"include_usage": True}  # type: ignore[arg-type]
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == resp.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10
    comp = client.completions.create(model="tiny", prompt="Once upon", max_tokens=5, temperature=0)
    assert comp.choices[0].finish_reason == "length" and comp.usage is not None and comp.usage.completion_tokens == 5


def test_openai_client_sees_auth_validation_and_rate_limit_errors(server: Server) -> None:
    import openai

    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.AuthenticationError):
        _client(server, key="wrong").models.list()
    with pytest.raises(openai.BadRequestError, match="context"):
        _client(server).chat.completions.create(model="tiny", messages=msgs, max_tokens=100_000)  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        _client(server).chat.completions.create(model="nope", messages=msgs, max_tokens=2)  # type: ignore[arg-type]
    # Fill the queue (3) with long streams, then one more request must get 429 + Retry-After.
    body = {"model": "tiny", "prompt": "x", "max_tokens": LONG, "stream": True}
    hdrs = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(timeout=60) as h:
        streams = [h.stream("POST", f"{server.url}/v1/completions", json=body, headers=hdrs) for _ in range(3)]
        opened = [s.__enter__() for s in streams]
        try:
            assert all(r.status_code == 200 for r in opened)
            r = h.post(f"{server.url}/v1/completions", json={**body, "stream": False}, headers=hdrs)
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
            with pytest.raises(openai.RateLimitError):
                _client(server).completions.create(model="tiny", prompt="x", max_tokens=2)
        finally:
            for s in streams:  # disconnect mid-stream: the server must cancel these generations
                s.__exit__(None, None, None)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and server.metric("shoestring_running_requests") > 0:
        time.sleep(0.1)
    assert server.metric("shoestring_running_requests") == 0
    assert server.metric("shoestring_queue_depth") == 0
    # 3 x LONG tokens were asked for; far fewer were made because the clients left.
    assert server.metric("shoestring_generated_tokens_total") < 3 * LONG


def test_non_streaming_client_timeout_cancels_generation(server: Server) -> None:
    before = server.metric("shoestring_generated_tokens_total")
    body = {"model": "tiny", "prompt": "x", "max_tokens": LONG, "temperature": 0}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{server.url}/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=0.2)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and server.metric("shoestring_running_requests") > 0:
        time.sleep(0.05)
    assert server.metric("shoestring_running_requests") == 0
    assert server.metric("shoestring_generated_tokens_total") - before < LONG


def test_cli_errors_are_one_line(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from shoestring.cli import main

    cfg = tmp_path / "serve.yaml"
    cfg.write_text(json.dumps({"model": str(tiny_llama), "max_batch_size": 0}))
    for argv, needle in (
        (["serve", str(tmp_path / "missing")], "model folder not found"),
        (["serve", "--config", str(cfg)], "max_batch_size"),
        (["serve"], "pass the MODEL"),
        (["serve", str(tiny_llama), "--engine", "vllm"], "needs a CUDA GPU"),
        (["serve", str(tiny_llama), "--engine", "mlx"], "engine"),
    ):
        monkeypatch.setattr(sys, "argv", ["shoestring", *argv])
        with pytest.raises(SystemExit) as exit_info:
            main()
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and needle in err and "Traceback" not in err


def test_sigterm_drains_in_flight_requests_then_exits(server: Server) -> None:
    """Runs last: it stops the module's server."""
    results: list[Any] = []
    hdrs = {"Authorization": f"Bearer {KEY}"}

    def call(n: int) -> None:
        body = {"model": "tiny", "prompt": "drain", "max_tokens": n, "temperature": 0}
        results.append(httpx.post(f"{server.url}/v1/completions", json=body, headers=hdrs, timeout=120))

    threads = [threading.Thread(target=call, args=(n,)) for n in (40, 20)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and server.metric("shoestring_running_requests") < 2:
        time.sleep(0.02)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(httpx.HTTPError):  # the listening socket is closed once draining starts
        r = httpx.get(f"{server.url}/ready", timeout=5)
        if r.status_code == 503:
            raise httpx.HTTPError("draining")
    for t in threads:
        t.join(120)
    assert server.proc.wait(60) == 0  # a finished drain is a clean exit
    assert sorted(r.status_code for r in results) == [200, 200]
    assert sorted(r.json()["usage"]["completion_tokens"] for r in results) == [20, 40]
