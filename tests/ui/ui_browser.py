"""Headless Chromium (Debian's package) driven by Playwright, for the dashboard's browser tests.

Also a script: ``python tests/ui/ui_browser.py URL OUT_DIR NAME=PATH...`` writes a screenshot of each
page (how docs/screenshots/ is made from the quickstart's workspace).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


@contextmanager
def browser_page(width: int = 1280, height: int = 900) -> Iterator[tuple[Any, list[str]]]:
    """A fresh page (a new temporary profile each launch) and the list its console errors go to."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda m: errors.append(f"{m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            yield page, errors
        finally:
            browser.close()


def screenshot(page: Any, url: str, out: Path, *, full_page: bool = True) -> Path:
    page.goto(url, wait_until="networkidle")
    out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out), full_page=full_page)
    return out


if __name__ == "__main__":
    base, out_dir, *paths = sys.argv[1:]
    with browser_page() as (pg, errs):
        for path in paths:
            name, _, rel = path.partition("=")
            print(screenshot(pg, base.rstrip("/") + rel, Path(out_dir) / f"{name}.png"))
    if errs:
        print("console errors:", *errs, sep="\n", file=sys.stderr)
        sys.exit(1)
