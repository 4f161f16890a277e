"""The dashboard in headless Chromium (Debian's package, driven by Playwright), against `shoestring ui`
serving a real tiny recipe run: launch from the page, watch it, cancel one, see a failure, read the
pages; no console errors; screenshots of the main pages written to the test's folder."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ui_browser import browser_page, screenshot
from ui_helpers import Server, TinyRun

from shoestring.ui.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not shutil.which("chromium"), reason="make browser installs chromium")]

RUN_TIMEOUT_MS = 300_000


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def browser(ui_server: Server) -> Iterator[tuple[Any, list[str]]]:
    with browser_page() as (page, errors):
        yield page, errors


def _launch(page: Any, url: str, recipe: str, overrides: str) -> None:
    page.goto(f"{url}/launch")
    page.select_option("#recipe", recipe)
    page.fill("#overrides", overrides)
    page.click("#launch-button")
    page.wait_for_url("**/launches/*")


def _wait_end(page: Any) -> str:
    """Wait for the stream's end (the process exited), then for the panel's final status."""
    # null-safe: the predicate also runs while a form's redirect is loading the next document (no body yet), and
    # a throw there is reported as the page's own error
    page.wait_for_function("() => document.body && (document.body.dataset.ended || !document.body.dataset.stream) && "
                           "document.querySelector('.run-status:not([data-status=running])')", timeout=RUN_TIMEOUT_MS)
    return str(page.get_attribute(".run-status", "data-status"))


def test_a_run_launched_from_the_page_completes_and_its_curves_render(browser: Any, ui_server: Server,
                                                                      tiny_run: TinyRun, shots: Path) -> None:
    page, _ = browser
    _launch(page, ui_server.url, "recipes/tiny.yaml", "train.max_steps=4\n# comments are skipped")
    assert _wait_end(page) == "done"
    assert page.get_attribute('#loss-train path[data-series="train loss"]', "data-points") == "4"
    assert page.locator("#plan-vs-measured-train").is_visible()
    assert page.locator('#stages .badge[data-status="cached"]').count() >= 2  # data and budget were reused
    assert "5 stages" in page.inner_text("#log")  # the CLI's own summary, streamed
    assert page.inner_text("#launch-status") == "done" and page.locator("#cancel").count() == 0
    page.screenshot(path=str(shots / "launch.png"), full_page=True)
    page.click("#run-link a")
    assert page.locator("#stages").is_visible() and page.locator("svg.dag").is_visible()
    screenshot(page, page.url, shots / "run.png")


def test_a_failed_stage_shows_its_one_line_error(browser: Any, ui_server: Server, tiny_run: TinyRun,
                                                 shots: Path) -> None:
    page, _ = browser
    (tiny_run.root / "recipes" / "broken.yaml").write_text(
        f"name: broken\ndescription: a plan with no data (test recipe)\nworkspace: {tiny_run.root / '.shoestring/broken'}\n"
        f"stages:\n  budget: {{stage: plan, model: {tiny_run.model}, task: sft, calibrate: false}}\n")
    _launch(page, ui_server.url, "recipes/broken.yaml", "")
    assert _wait_end(page) == "failed"
    err = page.inner_text('.stage-error[data-stage="budget"]')
    assert "plan needs the amount of data" in err and "\n" not in err.strip()
    assert "Traceback" not in page.inner_text("#log")
    page.screenshot(path=str(shots / "failed.png"), full_page=True)


def test_a_run_is_cancelled_from_the_page_while_its_curves_grow(browser: Any, ui_server: Server,
                                                                tiny_run: TinyRun) -> None:
    page, _ = browser
    _launch(page, ui_server.url, "recipes/tiny.yaml", "train.max_steps=5000\ntrain.epochs=100\ntrain.checkpoint_every=1000")
    page.wait_for_selector('#loss-train path[data-series="train loss"]', timeout=RUN_TIMEOUT_MS)  # live rows arrived
    first = int(page.get_attribute('#loss-train path[data-series="train loss"]', "data-points") or 0)
    page.wait_for_function(f"() => +(document.querySelector('#loss-train path.line')?.dataset.points ?? 0) > {first}",
                           timeout=60_000)  # and keep arriving without a reload
    assert "ETA" in page.inner_text("#train-train")
    with page.expect_navigation():  # the form posts, then redirects back to the launch page
        page.click("#cancel")
    assert _wait_end(page) == "cancelled"
    assert page.locator('#stages .badge[data-status="cancelled"]').count() == 1
    launch = httpx.get(f"{ui_server.url}/api/launches/{page.url.rsplit('/', 1)[-1]}").json()
    assert launch["returncode"] == 130 and launch["status"] == "cancelled"  # stopped like Ctrl-C, not killed
    assert "interrupted; re-run the same command to resume" in page.inner_text("#log")


def test_main_pages_show_the_artifacts_without_console_errors(browser: Any, ui_server: Server, tiny_run: TinyRun,
                                                              shots: Path) -> None:
    page, errors = browser
    ws = Store([".shoestring"], base=tiny_run.root).workspace_of(tiny_run.ws)
    arts = {a.stage: a for a in reversed(ws.artifacts())}  # the newest of each stage: the launched run
    ds = arts["curate"]
    page.goto(ui_server.url + ds.url)
    for key in ("read", "kept", "dropped", "quarantined"):
        assert int(page.get_attribute(f"#acct-{key}", "data-value") or -1) == ds.stats[key]
        assert page.inner_text(f"#acct-{key}") == f"{ds.stats[key]:,}"
    screenshot(page, page.url, shots / "data.png")
    for name, url in (("overview", "/"), ("plan", arts["plan"].url), ("model", arts["train"].url),
                      ("evaluation", arts["evaluate"].url), ("assess", "/assess")):
        screenshot(page, ui_server.url + url, shots / f"{name}.png")
    assert page.locator("#data_barrier .wall-score").inner_text() != ""
    runs = [r for r in ws.runs() if r["status"] == "done"]
    a, b = (f"run:{ws.id}:{r['run_id']}" for r in (runs[-1], runs[0]))
    page.goto(f"{ui_server.url}/compare?a={a}&b={b}")
    assert page.locator("#compare-loss path.line").count() == 2  # the 6-step and 4-step curves overlaid
    assert "max_steps" in page.inner_text("#config-diff")
    screenshot(page, page.url, shots / "compare.png")
    assert not errors, errors
    for png in shots.glob("*.png"):
        assert png.stat().st_size > 10_000, png
    assert json.loads((tiny_run.ws / "run.json").read_text())["status"] in ("done", "cancelled", "failed")
