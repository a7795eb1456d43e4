"""Steps the browser tests take on the page: open it, pick a model, wait for a job."""

from __future__ import annotations

import pytest

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/webp,*/*;q=0.8"
ENDED = ("succeeded", "failed", "canceled")


def open_page(page, url: str) -> None:
    page.goto(url + "/")
    page.locator("#model option[value='smollm2-135m']").wait_for(state="attached")


def choose(page, model: str, task: str) -> None:
    page.get_by_label("Model", exact=True).select_option(model)
    page.get_by_label("Task", exact=True).select_option(task)


def wait_status(page, status: str, timeout_s: float = 120) -> None:
    """Wait for the job's status; for an ended job, also for the page to show its output."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            """([s, ended]) => document.getElementById('job-status').textContent.startsWith(s)
                  && !(ended && document.getElementById('output').hasAttribute('aria-busy'))""",
            arg=[status, status in ENDED],
            timeout=timeout_s * 1000,
        )
    except PlaywrightTimeout:
        shown = page.locator("#job-status").text_content()
        error = page.locator("#form-error").text_content()
        output = page.locator("#output").text_content()
        pytest.fail(f"never {status} in {timeout_s}s: shows {shown!r} {error!r} {output[:300]!r}")


def job_id(page) -> str:
    return page.locator("#stat-job").text_content().strip()
