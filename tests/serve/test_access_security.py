"""Security of the HTTP servers: no bind beyond loopback without a key (real CLI, `serve` and `ui`),
a request's `model` field never loads anything, and API keys never reach the server's output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from shoestring.core.auth import is_loopback
from shoestring.serve import ServeConfig, create_app, load_for_serving

# --- the audit hook: every file or folder the process opens while `_OPENED` is a list ------------------
_OPENED: list[str] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _OPENED is not None and event in ("open", "os.listdir", "os.scandir") and args:
        _OPENED.append(os.fsdecode(args[0]) if isinstance(args[0], (str, bytes, os.PathLike)) else str(args[0]))


sys.addaudithook(_audit)  # process-wide and permanent; a no-op unless a test is recording


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "SHOESTRING_API_KEYS"}
    cmd = [sys.executable, "-m", "shoestring.cli", *args]
    return subprocess.run(cmd, env={**base, **(env or {})}, capture_output=True, text=True, timeout=120)


def _errors(run: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in run.stderr.strip().splitlines() if line.startswith("error:")]


@pytest.mark.parametrize(
    ("verb", "host"),
    [("serve", "0.0.0.0"), ("serve", "::"), ("serve", "example.com"), ("ui", "0.0.0.0")],
)
def test_a_public_bind_without_a_key_is_refused_by_the_cli(verb: str, host: str, tmp_path: Path) -> None:
    model = [str(tmp_path / "no-such-model")] if verb == "serve" else []
    run = _cli(verb, *model, "--host", host, "--port", "0")
    assert run.returncode == 2, run.stderr[-2000:]
    err = _errors(run)
    assert len(err) == 1 and "Traceback" not in run.stderr, run.stderr
    assert f"--host {host} " in err[0] and "--api-key" in err[0] and "$SHOESTRING_API_KEYS" in err[0]
    assert "--host 127.0.0.1" in err[0]  # the third way out: bind loopback


@pytest.mark.parametrize(
    ("host", "env"),
    [("0.0.0.0", {"SHOESTRING_API_KEYS": "env-key-abc"}), ("127.0.0.2", {})],  # localhost, ::1: is_loopback below
)
def test_a_key_or_a_loopback_host_gets_past_the_check(host: str, env: dict[str, str], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from shoestring.core.errors import ShoestringError
    from shoestring.serve.server import serve

    monkeypatch.delenv("SHOESTRING_API_KEYS", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    # In-process (the refusals above go through the CLI): a missing model is the next error, so the
    # host check passed and the socket was bound.
    with pytest.raises(ShoestringError) as err:
        serve(ServeConfig(model=str(tmp_path / "no-such-model"), host=host, port=0))
    assert "--host" not in str(err.value) and "no-such-model" in str(err.value)


def test_loopback_means_127_slash_8_localhost_and_ipv6_loopback_only() -> None:
    for host in ("127.0.0.1", "127.5.6.7", "::1", "[::1]", "localhost", "LOCALHOST", "::ffff:127.0.0.1"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "", "::", "10.0.0.1", "192.168.1.5", "example.com", "127.0.0.1.evil.example", "::ffff:10.0.0.1"):
        assert not is_loopback(host), host


def test_the_dashboard_on_another_loopback_address_still_refuses_foreign_host_headers(tmp_path: Path) -> None:
    from shoestring.ui.app import create_app as create_ui
    from shoestring.ui.config import UiConfig

    c = TestClient(create_ui(UiConfig(cwd=str(tmp_path), host="127.0.0.2")), base_url="http://127.0.0.2:8600")
    assert c.get("/health").status_code == 200
    assert c.get("/health", headers={"host": "[::1]:8600"}).status_code == 200
    assert c.get("/health", headers={"host": "evil.example:8600"}).status_code == 421  # DNS rebinding


# --- the `model` field of a request -----------------------------------------------------------------
@pytest.fixture(scope="module")
def client(tiny_llama: Path) -> Iterator[TestClient]:
    loaded = load_for_serving(ServeConfig(model=str(tiny_llama), model_name="tiny", engine="torch"))
    with TestClient(create_app(ServeConfig(model=str(tiny_llama), model_name="tiny", engine="torch"), loaded)) as c:
        yield c


def test_a_model_field_naming_a_path_is_refused_and_never_opened(client: TestClient, tmp_path: Path,
                                                                 tiny_llama: Path) -> None:  # fmt: skip
    global _OPENED
    other = tmp_path / "other-model"  # a real-looking model folder: loading it would open config.json
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "llama"}')
    names = ["/etc/passwd", "../other-model", str(other), str(tiny_llama / ".." / "other-model"),
             str(tiny_llama.parent / "x" / ".." / tiny_llama.name), "file:///etc/passwd", "tiny/../../etc/passwd"]  # fmt: skip
    bodies = {
        "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        "/v1/completions": {"prompt": "hi", "max_tokens": 2},
        "/v1/embeddings": {"input": "hi"},
    }
    _OPENED = []
    try:
        for name in names:
            for path, body in bodies.items():
                r = client.post(path, json={**body, "model": name})
                assert r.status_code in (400, 404), (name, path, r.status_code, r.text)
                err = r.json()["error"]  # the OpenAI envelope
                assert set(err) >= {"message", "type", "code"} and "\n" not in err["message"]
                if r.status_code == 404:
                    assert err["code"] == "model_not_found"
        assert client.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2}).status_code == 200
        opened = list(_OPENED)
        (other / "config.json").read_text()  # the control: the hook does see an open
        assert str(other / "config.json") in _OPENED[len(opened):]
    finally:
        _OPENED = None
    touched = [p for p in opened if "passwd" in p or "other-model" in p or str(other) in p]
    assert not touched, touched


# --- secrets never reach what the server prints -----------------------------------------------------
def test_api_keys_never_appear_in_the_servers_output(tiny_llama: Path, tmp_path: Path) -> None:
    flag_key, env_key = "flag-key-" + "a1b2c3" * 4, "env-key-" + "d4e5f6" * 4
    env = {**os.environ, "SHOESTRING_API_KEYS": f"{env_key}", "PYTHONUNBUFFERED": "1",
           "SHOESTRING_CACHE": str(tmp_path / "cache")}  # fmt: skip
    cmd = [sys.executable, "-m", "shoestring.cli", "serve", str(tiny_llama), "--port", "0", "--host", "0.0.0.0",
           "--api-key", flag_key, "--model-name", "tiny", "--engine", "torch", "--drain-timeout-s", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    out: list[str] = []
    err: list[str] = []
    threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True).start()  # type: ignore[arg-type]
    threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()  # type: ignore[arg-type]
    try:
        deadline, url = time.monotonic() + 90, None
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            m = re.search(r"on http://[^:]+:(\d+)/v1", "".join(err))
            url = f"http://127.0.0.1:{m.group(1)}" if m else None
            time.sleep(0.1)
        assert url is not None, "".join(err)
        for auth in ("Bearer wrong-" + flag_key, "Bearer " + flag_key[:-1], flag_key, None):
            r = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2},
                           headers={"Authorization": auth} if auth else {}, timeout=30)  # fmt: skip
            assert r.status_code == 401 and flag_key not in r.text and env_key not in r.text
        for key in (flag_key, env_key):
            r = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2},
                           headers={"Authorization": f"Bearer {key}"}, timeout=30)  # fmt: skip
            assert r.status_code == 200, r.text
            metrics = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=30).text
            assert flag_key not in metrics and env_key not in metrics
    finally:
        proc.terminate()
        proc.wait(30)
    time.sleep(0.2)  # the reader threads drain the last lines
    printed = "".join(out) + "".join(err)
    assert "serving tiny" in printed and flag_key not in printed and env_key not in printed
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    leaked = [str(p) for p in written if flag_key.encode() in p.read_bytes() or env_key.encode() in p.read_bytes()]
    assert not leaked, leaked
