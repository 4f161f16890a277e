"""Every page over a real (tiny) recipe run, in-process: what each shows equals what the artifacts say."""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient
from ui_helpers import TinyRun

from shoestring.ui.app import create_app
from shoestring.ui.config import UiConfig
from shoestring.ui.store import Store

HTML = {"accept": "text/html"}


@pytest.fixture(scope="module")
def client(tiny_run: TinyRun) -> TestClient:
    return TestClient(create_app(UiConfig(cwd=str(tiny_run.root))), base_url="http://127.0.0.1:8600")


@pytest.fixture(scope="module")
def arts(tiny_run: TinyRun) -> dict[str, object]:
    ws = Store([".shoestring"], base=tiny_run.root).workspace_of(tiny_run.ws)
    return {a.stage: a for a in reversed(ws.artifacts())}  # the newest of each stage


def _links(html: str) -> set[str]:
    return {h.replace("&amp;", "&") for h in re.findall(r'href="(/[^"#]*)"', html)}


def test_every_linked_page_renders(client: TestClient) -> None:
    seen: set[str] = set()
    todo = ["/", "/data", "/plans", "/models", "/assess", "/compare", "/launch"]
    while todo:
        url = todo.pop()
        if url in seen or url.startswith("/static") or len(seen) > 80:
            continue
        seen.add(url)
        r = client.get(url, headers=HTML)
        assert r.status_code == 200, (url, r.text[:500])
        if "/file/" not in url:
            assert "Content-Security-Policy" in r.headers and "<script>" not in r.text  # no inline script
            todo += sorted(_links(r.text) - seen)
    assert any("/runs/" in u for u in seen) and any("/rows/quarantine.jsonl" in u for u in seen)


def test_the_data_card_numbers_are_the_manifests(client: TestClient, arts: dict) -> None:
    ds = arts["curate"]
    page = client.get(ds.url).text
    shown = {k: int(v) for k, v in re.findall(r'id="acct-(\w+)" data-value="(\d+)"', page)}
    st = ds.stats
    assert shown == {k: st[k] for k in ("read", "kept", "dropped", "quarantined")}
    assert st["read"] == st["kept"] + st["dropped"] + st["quarantined"] and st["quarantined"] > 0
    assert f"read {st['read']:,} = kept {st['kept']:,}" in page and "✓" in page
    for reason, n in st["quarantine_reasons"].items():
        assert re.search(rf"<td>{re.escape(reason)}</td><td class=num>{n}</td>", page)
    rows = client.get(f"{ds.url}/rows/quarantine.jsonl?reason=bad_json").text
    assert f"{st['quarantine_reasons']['bad_json']} rows" in rows


def test_plan_and_model_pages_show_planned_beside_measured(client: TestClient, arts: dict) -> None:
    plan = json.loads((arts["plan"].path / "plan.json").read_text())
    page = client.get(arts["plan"].url).text
    assert page.count("<tr>", page.index('id="candidates"')) >= len(plan["candidates"])
    assert 'id="gpu-costs"' in page and "l4-24gb" in page  # cost per GPU type, from the assessment's what-if plans
    model = client.get(arts["train"].url).text
    steps = arts["train"].stats["steps"]
    assert 'id="plan-vs-measured-train"' in model and f'data-series="train loss" data-points="{steps}"' in model
    ev = client.get(arts["evaluate"].url).text
    assert 'id="eval-metrics"' in ev and "perplexity" in ev and 'id="comparison"' in ev


def test_the_assessment_page_shows_both_walls_and_their_best_change(client: TestClient, arts: dict) -> None:
    doc = json.loads((arts["assess"].path / "assessment.json").read_text())
    page = client.get(arts["assess"].url).text
    for key in ("data_barrier", "compute_bottleneck"):
        assert f'id="{key}"' in page
        assert f'data-score="{doc[key]["score"]:.2f}"' in page
    data = {c["key"]: c for c in doc["data_barrier"]["components"]}
    st = arts["curate"].stats
    assert data["malformed_share"]["value"] == pytest.approx(st["quarantined"] / st["read"])
    devices = {v["device"] for v in doc["what_if"]["variants"]}
    assert "l4-24gb" in devices


def test_compare_two_runs_shows_config_differences(client: TestClient, tiny_run: TinyRun) -> None:
    ws = Store([".shoestring"], base=tiny_run.root).workspace_of(tiny_run.ws)
    run = ws.runs()[-1]
    ref = f"run:{ws.id}:{run['run_id']}"
    page = client.get("/compare", params={"a": ref, "b": ref}).text
    assert 'id="compare-figures"' in page and 'id="compare-loss"' in page and "same artifact" in page
