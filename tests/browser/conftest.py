"""Browser fixtures: Debian's chromium driven by playwright, against a real stack.

The stack is the one the other tests use (tests/conftest.py): a real redis-server, gunicorn
serving the app, and real worker processes for smollm2-135m and echo. No browser is ever
downloaded: playwright launches the system's chromium by path.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shared.config import Settings

BROWSER_HELP = (
    "no chromium found for the browser tests: install Debian's package with "
    "`apt-get install chromium` (`make install` does it where apt-get is available), or "
    "point CONVEYOR_CHROMIUM at a Chromium or Chrome binary"
)
LOCAL = "http://127.0.0.1:"  # the servers the tests start; anything else is outside
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """Return the path of a Chromium binary: CONVEYOR_CHROMIUM, else one on PATH."""
    chosen = os.environ.get("CONVEYOR_CHROMIUM")
    if chosen:
        return chosen if Path(chosen).is_file() else None
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="package")
def browser() -> Iterator:
    """One headless chromium for the browser tests; fails (never skips) without one.

    Package scope, not session: playwright's sync API runs an event loop in the main thread
    while it is open, and tests after these (asyncio.run in the held-streams test) need none.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: `make install` (the dev extra) installs it")
    path = find_chromium()
    if path is None:
        pytest.fail(BROWSER_HELP)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, headless=True)
        yield browser
        browser.close()


@dataclass
class Stack:
    """A live server with workers, and the settings they share."""

    url: str
    settings: Settings


@pytest.fixture(scope="module")
def stack(make_settings, start_server, start_worker) -> Stack:
    """gunicorn, Redis and real workers for smollm2-135m and echo."""
    settings = make_settings()
    server = start_server(settings)
    start_worker(settings, "smollm2-135m", timeout=180)
    start_worker(settings, "echo")
    return Stack(server.url, settings)


@dataclass
class PageErrors:
    """JavaScript errors a page reported: uncaught exceptions and console errors."""

    errors: list[str] = field(default_factory=list)
    allowed: tuple[str, ...] = ()  # substrings of console errors a test expects

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(a in e for a in self.allowed)]


@pytest.fixture
def page_errors() -> PageErrors:
    return PageErrors()


@pytest.fixture
def page(browser, page_errors) -> Iterator:
    """A fresh page at laptop width whose JavaScript errors fail the test, and that may not
    load anything from outside the server (no CDN: the page works offline)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    outside: list[str] = []

    def only_local(route):
        if route.request.url.startswith(LOCAL):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_local)
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.on("pageerror", lambda exc: page_errors.errors.append(f"pageerror: {exc}"))
    page.on(
        "console",
        lambda msg: msg.type == "error" and page_errors.errors.append(f"console: {msg.text}"),
    )
    yield page
    context.close()
    assert not outside, f"the page asked for files outside the server: {outside}"
    assert not page_errors.unexpected(), f"JavaScript errors on the page: {page_errors.errors}"
