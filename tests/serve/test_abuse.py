"""Hand-written abuse of a real `shoestring serve` process (torch engine, tiny Llama, 256-token
context): slow-loris bodies, megabyte and chunked bodies, absurd sampling fields, a prompt far
past the context, invalid UTF-8, JSON nested past any parser's depth. Every answer must be a 4xx
in the OpenAI error envelope (never a 5xx, never a hang), and the server must keep answering
well-behaved clients while it is being abused."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from test_server import Server, start_server

pytestmark = pytest.mark.slow

BODY_TIMEOUT_S = 2.0
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[Server]:
    s = start_server(tiny_llama, "--engine", "torch", "--body-timeout-s", str(BODY_TIMEOUT_S), "--max-body-bytes",
                     "100000", "--max-batch-size", "2")  # fmt: skip
    yield s
    s.proc.terminate()
    s.proc.wait(30)


def _post_raw(server: Server, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", content=body, timeout=60,
                      headers={"Content-Type": "application/json", **(headers or {})})  # fmt: skip


def _is_envelope(r: httpx.Response, status: int) -> bool:
    body = r.json()
    return r.status_code == status and isinstance(body.get("error", {}).get("message"), str)


def test_slow_loris_bodies_are_cut_with_408_while_others_are_served(server: Server) -> None:
    u = urlparse(server.url)
    socks, answers = [], {}

    def slow(i: int) -> None:
        s = socket.create_connection((u.hostname, u.port), timeout=30)
        socks.append(s)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 200\r\n\r\n{\"model\": ")  # fmt: skip
        data = b""
        while chunk := s.recv(4096):  # the server answers, then closes the connection
            data += chunk
        answers[i] = data

    threads = [threading.Thread(target=slow, args=(i,), daemon=True) for i in range(8)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(0.3)
    ok = httpx.post(f"{server.url}/v1/chat/completions", json=CHAT, timeout=30)  # served meanwhile
    assert ok.status_code == 200 and time.monotonic() - t0 < BODY_TIMEOUT_S + 5
    for t in threads:
        t.join(30)
    assert len(answers) == 8, "a slow client's connection was never answered and closed"
    for data in answers.values():
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), head
        assert "--body-timeout-s" in json.loads(body)["error"]["message"]
    assert time.monotonic() - t0 < BODY_TIMEOUT_S + 15
    for s in socks:
        s.close()


def test_oversized_bodies_get_413_with_or_without_content_length(server: Server) -> None:
    big = json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * 2_000_000}]}).encode()
    assert _is_envelope(_post_raw(server, big), 413)

    def chunks() -> Iterator[bytes]:  # chunked: the size is only known while it arrives
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    r = httpx.post(f"{server.url}/v1/chat/completions", content=chunks(), timeout=60,
                   headers={"Content-Type": "application/json"})  # fmt: skip
    assert _is_envelope(r, 413)


@pytest.mark.parametrize(
    "fields",
    [
        {"max_tokens": 10**9},
        {"max_tokens": 2**70},
        {"max_tokens": -1},
        {"n": 5},
        {"temperature": -1},
        {"temperature": 1e308},
        {"top_p": 7},
        {"stop": ["x"] * 10_000},
        {"logit_bias": {"1": 1e9}},
        {"frequency_penalty": 1.5},
        {"logprobs": True},
        {"messages": [{"role": "user", "content": "word " * 15_000}]},  # ~75 KB: under the body limit, past the context
        {"messages": []},
        {"messages": [{"role": "wizard", "content": "hi"}]},
    ],
    ids=lambda f: next(iter(f)) + "=" + str(next(iter(f.values())))[:20],
)
def test_absurd_fields_get_a_4xx_envelope(server: Server, fields: dict[str, object]) -> None:
    r = httpx.post(f"{server.url}/v1/chat/completions", json={**CHAT, **fields}, timeout=60)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert isinstance(r.json()["error"]["message"], str)


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({**CHAT, "temperature": "NaN"}).encode().replace(b'"NaN"', b"NaN"),
        json.dumps({**CHAT, "temperature": "Infinity"}).encode().replace(b'"Infinity"', b"Infinity"),
        b'{"model": "tiny", "messages": [{"role": "user", "content": "\xff\xfe caf\xe9"}]}',
        b'{"model": "tiny", "messages": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
        b"\x00" * 1000,
        b"",
    ],
    ids=["nan", "infinity", "invalid-utf8", "nested-20k", "nul-bytes", "empty"],
)
def test_malformed_bodies_get_400(server: Server, body: bytes) -> None:
    assert _is_envelope(_post_raw(server, body), 400)


def test_after_the_abuse_no_5xx_was_counted_and_the_server_is_healthy(server: Server) -> None:
    assert server.proc.poll() is None
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    assert httpx.post(f"{server.url}/v1/chat/completions", json=CHAT, timeout=30).status_code == 200
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    fives = [line for line in text.splitlines() if line.startswith("shoestring_requests_total") and 'status="5' in line]
    assert all(float(line.split()[-1]) == 0 for line in fives), fives
