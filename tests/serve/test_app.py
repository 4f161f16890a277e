"""The HTTP layer in-process (FastAPI TestClient): OpenAI shapes, streaming, 4xx, auth, 429, metrics, drift."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shoestring.serve import ServeConfig, create_app, load_for_serving
from shoestring.serve.generation import GenRequest

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 12, "temperature": 0}


@pytest.fixture(scope="module", params=["torch", "llama.cpp"])
def loaded(tiny_llama: Path, request: pytest.FixtureRequest) -> Any:
    """The tiny Llama on each CPU engine: every HTTP test runs on both."""
    return load_for_serving(ServeConfig(model=str(tiny_llama), model_name="tiny", engine=request.param))


def _client(loaded: Any, **cfg: Any) -> TestClient:
    app = create_app(ServeConfig(model=loaded.name, model_name="tiny", engine=loaded.engine.info.name, **cfg), loaded)
    return TestClient(app)


@pytest.fixture
def client(loaded: Any) -> Iterator[TestClient]:
    with _client(loaded) as c:
        yield c


def _stream_text(c: TestClient, body: dict[str, Any], path: str = "/v1/chat/completions") -> tuple[str, list[dict]]:
    chunks = []
    with c.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    for ln in lines[:-1]:
        chunks.append(json.loads(ln.removeprefix("data: ")))
    key = "delta" if path.endswith("chat/completions") else None
    text = "".join((ch["choices"][0][key].get("content") or "") if key else ch["choices"][0]["text"] for ch in chunks if ch["choices"])
    return text, chunks


def test_chat_and_completion_shapes_and_streaming_agree(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "tiny"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 12 and body["usage"]["prompt_tokens"] > 5
    streamed, chunks = _stream_text(client, CHAT)
    assert streamed == choice["message"]["content"]  # greedy: the stream spells the same answer
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"

    comp = {"model": "tiny", "prompt": "The weather", "max_tokens": 6, "temperature": 0}
    r = client.post("/v1/completions", json=comp)
    assert r.status_code == 200 and r.json()["object"] == "text_completion"
    assert _stream_text(client, comp, "/v1/completions")[0] == r.json()["choices"][0]["text"]
    models = client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["tiny"]
    engine = models["data"][0]["engine"]
    assert engine["batched"] and engine["max_sequences"] == 8 and engine["name"] in ("torch", "llama.cpp")


def test_stop_string_cuts_the_answer(client: TestClient) -> None:
    full = client.post("/v1/completions", json={"model": "tiny", "prompt": "a b c", "max_tokens": 16, "temperature": 0})
    text = full.json()["choices"][0]["text"]
    stop = text.strip()[:2] if len(text.strip()) >= 2 else None
    if not stop:
        pytest.skip("the random tiny model produced only whitespace")
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "a b c", "max_tokens": 16, "temperature": 0, "stop": stop})
    cut = r.json()["choices"][0]
    assert cut["finish_reason"] == "stop" and stop not in cut["text"] and text.startswith(cut["text"])


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({**CHAT, "max_tokens": 400}, 400, "context of 256 tokens"),
        ({**CHAT, "messages": []}, 400, "messages"),
        ({**CHAT, "temperature": 5}, 400, "temperature"),
        ({**CHAT, "model": "gpt-4"}, 404, "not served here"),
        ({"model": "tiny", "input": "x"}, 400, "needs a embedding model"),
    ],
)
def test_bad_requests_get_clear_4xx(client: TestClient, body: dict[str, Any], status: int, needle: str) -> None:
    path = "/v1/embeddings" if "input" in body else "/v1/chat/completions"
    r = client.post(path, json=body)
    assert r.status_code == status
    err = r.json()["error"]
    assert needle in err["message"] and err["type"]


def test_body_limits_and_malformed_json(loaded: Any) -> None:
    with _client(loaded, max_body_bytes=2048) as c:
        r = c.post("/v1/chat/completions", content=b"{" + b" " * 5000 + b"}", headers={"content-type": "application/json"})
        assert r.status_code == 413 and "2048 bytes" in r.json()["error"]["message"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
            for _ in range(10):
                yield b" " * 1000

        r = c.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        r = c.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


def test_api_keys_from_flag_and_environment(loaded: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOESTRING_API_KEYS", "env-key, other")
    with _client(loaded, api_key=["flag-key"]) as c:
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 401
        bad = c.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
        for key in ("flag-key", "env-key", "other"):
            assert c.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert c.get("/metrics").status_code == 401
        assert c.get("/health").status_code == 200 and c.get("/ready").status_code == 200


def test_full_queue_answers_429_with_retry_after_and_draining_503(loaded: Any) -> None:
    # No `with`: the lifespan (and so the model thread) never starts, so queued requests stay queued.
    c = _client(loaded, max_queue=2, max_batch_size=1)
    state = c.app.state.shoestring  # type: ignore[attr-defined]
    ids = loaded.tokenizer("fill the queue")["input_ids"]
    for _ in range(2):
        state.scheduler.submit(GenRequest(prompt_ids=ids, max_new_tokens=20))
    r = c.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["type"] == "rate_limit_error"
    state.draining = True
    r = c.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 503 and "retry-after" in r.headers
    assert c.get("/ready").status_code == 503
    metrics = c.get("/metrics").text
    assert 'shoestring_requests_total{endpoint="/v1/chat/completions",status="429"} 1.0' in metrics
    assert 'shoestring_rejected_requests_total{reason="queue_full"} 1.0' in metrics
    assert "shoestring_queue_depth 2.0" in metrics


def test_metrics_report_tokens_batches_and_first_token_time(client: TestClient) -> None:
    for _ in range(2):
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    text = client.get("/metrics").text
    values = {ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in text.splitlines() if ln and not ln.startswith("#")}
    assert values["shoestring_generated_tokens_total"] >= 22  # 2 x 12, minus the first token (from prefill)
    assert values["shoestring_time_to_first_token_seconds_count"] == 2
    assert values["shoestring_batch_size_count"] >= 1 and values["shoestring_tokens_per_second"] > 0
    assert values['shoestring_requests_total{endpoint="/v1/chat/completions",status="200"}'] == 2
    assert "shoestring_queue_depth 0.0" in text and "shoestring_ready 1.0" in text


def test_drift_gauges_flag_a_shifted_input_distribution(loaded: Any, tmp_path: Path) -> None:
    # Reference: prompts were short (< 20 tokens) 90% of the time. We send only long ones.
    ref = {
        "version": 1,
        "features": {"input_tokens": {"kind": "numeric", "edges": [0, 20, 60, 256], "proportions": [0.9, 0.09, 0.01]}},
        "predictions": {"output_tokens": {"kind": "numeric", "edges": [0, 2, 256], "proportions": [0.5, 0.5]}},
    }
    (tmp_path / "reference.json").write_text(json.dumps(ref))
    with _client(loaded, reference=str(tmp_path), drift_min_samples=5, drift_window=50) as c:
        long_prompt = {"model": "tiny", "prompt": "word " * 30, "max_tokens": 1, "temperature": 0}
        for _ in range(5):
            assert c.post("/v1/completions", json=long_prompt).status_code == 200
        text = c.get("/metrics").text
    psi_line = next(ln for ln in text.splitlines() if ln.startswith('shoestring_drift_psi{feature="input_tokens"}'))
    assert float(psi_line.split()[-1]) > 0.25
    assert 'shoestring_drift_level{feature="input_tokens"} 2.0' in text
    assert "shoestring_drift_window_samples 5.0" in text
