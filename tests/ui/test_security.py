"""Who may use the dashboard: API keys (the check serve uses), CSRF on every POST, loopback Host only."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from shoestring.core.errors import ShoestringError
from shoestring.ui.app import create_app
from shoestring.ui.config import UiConfig
from shoestring.ui.server import serve_ui

LOCAL = "http://127.0.0.1:8600"


def _client(tmp_path: Path, **cfg: object) -> TestClient:
    return TestClient(create_app(UiConfig(cwd=str(tmp_path), **cfg)), base_url=LOCAL, follow_redirects=False)


def test_keys_guard_every_page_but_health(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOESTRING_API_KEYS", "env-key")
    c = _client(tmp_path, api_key=["s3cret"])
    assert c.get("/health").status_code == 200
    assert c.get("/api/runs").status_code == 401
    r = c.get("/data", headers={"accept": "text/html"})
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/data"
    assert c.get("/api/runs", headers={"authorization": "Bearer s3cret"}).status_code == 200
    assert c.get("/api/runs", headers={"authorization": "Bearer env-key"}).status_code == 200
    assert c.get("/api/runs", headers={"authorization": "Bearer wrong"}).status_code == 401
    # The printed link carries the key once: it becomes a cookie and leaves the address bar.
    r = c.get("/data?key=s3cret&x=1")
    assert r.status_code == 303 and r.headers["location"] == "/data?x=1"
    assert "HttpOnly" in r.headers["set-cookie"] and "SameSite=Strict" in r.headers["set-cookie"]
    assert c.get("/data").status_code == 200  # the cookie now authenticates
    fresh = _client(tmp_path, api_key=["s3cret"])
    assert fresh.post("/login", content="key=nope&next=/", headers={
        "content-type": "application/x-www-form-urlencoded"}).status_code == 401
    r = fresh.post("/login", content="key=s3cret&next=//evil.example/", headers={
        "content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 303 and r.headers["location"] == "/"  # no open redirect


def test_posts_need_the_pages_csrf_token(tmp_path: Path) -> None:
    c = _client(tmp_path)
    form = {"content-type": "application/x-www-form-urlencoded", "accept": "text/html"}
    r = c.post("/launch", content="recipe=recipes/x.yaml", headers=form)
    assert r.status_code == 403 and "came from another site" in r.text
    page = c.get("/launch").text
    token = page.split("name='csrf-token' content='")[1].split("'")[0]
    r = c.post("/launch", content=f"recipe=nope.yaml&csrf={token}", headers=form)
    assert r.status_code == 400 and "file not found" in r.text  # a bad recipe is one line on the form


def test_only_loopback_host_names_are_answered(tmp_path: Path) -> None:
    c = _client(tmp_path)
    assert c.get("/health").status_code == 200
    assert c.get("/health", headers={"host": "evil.example:8600"}).status_code == 421  # DNS rebinding
    assert c.get("/health", headers={"host": "localhost:8600"}).status_code == 200


def test_a_public_bind_without_a_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOESTRING_API_KEYS", raising=False)
    with pytest.raises(ShoestringError, match="--api-key"):
        serve_ui(UiConfig(host="0.0.0.0"))
