"""Schemathesis over the server's own OpenAPI document (bounded for CI; see benchmarks/ for longer runs).

Every listed route of a served tiny Llama, schema-valid and schema-violating requests: no 5xx, every
response on its documented schema, status and content type. With a key configured, every route
the document marks as protected answers 401 without the key and is fuzzed with it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).parent))
from api_fuzz import fuzz_app

from shoestring.serve import ServeConfig, create_app, load_for_serving

pytestmark = pytest.mark.slow


def _app(model: Path, keys: list[str]) -> object:
    cfg = ServeConfig(model=str(model), model_name="tiny", engine="torch", default_max_tokens=8,
                      request_timeout_s=20, api_key=keys)  # fmt: skip
    return create_app(cfg, load_for_serving(cfg))


def _report_lines(report: object) -> str:
    return "\n".join(f"{k}: {v[:3]}" for k, v in report.failures.items())  # type: ignore[attr-defined]


def test_fuzzed_requests_never_get_a_5xx_and_match_the_schema(tiny_llama: Path) -> None:
    report = fuzz_app(_app(tiny_llama, []), max_examples=20, seed=1)
    assert sum(report.requests.values()) >= 60, dict(report.requests)
    assert {"POST /v1/chat/completions", "POST /v1/completions"} <= set(report.requests)
    assert not report.server_errors, dict(report.server_errors)
    assert not report.failures, _report_lines(report)


def test_every_protected_route_needs_the_key(tiny_llama: Path) -> None:
    key = "k-" + "7" * 30
    app = _app(tiny_llama, [key])
    with TestClient(app) as client:
        doc = client.get("/openapi.json", headers={"Authorization": f"Bearer {key}"}).json()
        protected = [(path, method) for path, ops in doc["paths"].items() for method, op in ops.items()
                     if op.get("security")]  # fmt: skip
        assert any(p == "/v1/chat/completions" for p, _ in protected), protected
        for path, method in protected:
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                r = client.request(method.upper(), path, headers=headers, json={})
                assert r.status_code == 401, (path, method, headers, r.status_code, r.text[:200])
    report = fuzz_app(_app(tiny_llama, [key]), max_examples=8, token=key, seed=2)  # a fresh app: the client above shut its engine down
    assert not report.server_errors, dict(report.server_errors)
    assert not report.failures, _report_lines(report)
