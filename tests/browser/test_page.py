"""The page at `/` in a real browser, against a real stack (gunicorn, Redis, workers)."""

from __future__ import annotations

import io
import json

import pytest
import requests
from PIL import Image

from tests.browser.pages import BROWSER_ACCEPT, choose, job_id, open_page, wait_status
from tests.conftest import consumer_paused

pytestmark = pytest.mark.timeout(600)


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 40, 40)).save(buf, format="PNG")
    return buf.getvalue()


def test_content_negotiation(stack):
    """API clients keep the JSON of `GET /`; browsers get the page (no browser needed)."""
    api = requests.get(stack.url + "/", timeout=10)
    assert api.headers["Content-Type"].startswith("application/json")
    assert api.json()["status"] == "running"
    assert "Accept" in api.headers["Vary"]
    explicit = requests.get(stack.url + "/", headers={"Accept": "application/json"}, timeout=10)
    assert explicit.json()["message"] == "conveyor is running"

    html = requests.get(stack.url + "/", headers={"Accept": BROWSER_ACCEPT}, timeout=10)
    assert html.headers["Content-Type"].startswith("text/html")
    assert "Accept" in html.headers["Vary"]
    assert "<title>conveyor</title>" in html.text
    assert requests.get(stack.url + "/static/page.js", timeout=10).status_code == 200


def test_the_browser_gets_the_page(stack, page):
    response = page.goto(stack.url + "/")
    assert response.headers["content-type"].startswith("text/html")
    assert page.title() == "conveyor"


def test_question_to_smollm2_streams_in(stack, page):
    open_page(page, stack.url)
    choose(page, "smollm2-135m", "chat")
    page.get_by_label("Message 1 text").fill("What is the capital of France? Answer in detail.")
    page.get_by_text("Sampling", exact=True).click()
    page.get_by_label("max_tokens").fill("48")
    # Snapshots of the answer while the job is not over: it must grow in several steps.
    page.evaluate(
        """() => {
          window.__partials = new Set();
          const out = document.getElementById('output');
          new MutationObserver(() => {
            const status = document.getElementById('job-status').textContent;
            const text = out.querySelector('.streaming');
            if (text && !/^(succeeded|failed|canceled)/.test(status)) {
              window.__partials.add(text.textContent);
            }
          }).observe(out, {childList: true, subtree: true, characterData: true});
        }"""
    )
    page.get_by_role("button", name="Run").click()
    wait_status(page, "succeeded", 180)

    partials = page.evaluate("() => [...window.__partials]")
    tokens = int(page.locator("#stat-tokens").text_content())
    assert len(partials) >= 3, f"the answer did not stream in (snapshots: {partials})"
    assert tokens >= 3
    answer = page.locator("#output .text").text_content()
    job = requests.get(f"{stack.url}/v1/jobs/{job_id(page)}", timeout=10).json()
    assert job["status"] == "succeeded"
    assert answer == job["output"]["text"] and answer.strip()
    assert all(answer.startswith(p) for p in partials)
    shown = json.loads(page.locator("#job-json").text_content())
    assert shown["id"] == job["id"] and shown["metrics"]["completion_tokens"] == tokens
    assert page.locator("#stat-tps").text_content() != "–"
    assert page.locator("#stat-queue").text_content().endswith("s")
    curl = page.locator("#curl").text_content()
    assert f"{stack.url}/v1/jobs" in curl and '"model":"smollm2-135m"' in curl


def test_echo_job_with_an_image(stack, page):
    open_page(page, stack.url)
    choose(page, "echo", "echo")
    page.get_by_label("Input (JSON object").fill('{"note": "picture"}')
    assert page.get_by_label("Image", exact=True).is_visible()
    page.get_by_label("Image", exact=True).set_input_files(
        files=[{"name": "dot.png", "mimeType": "image/png", "buffer": png_bytes()}]
    )
    page.get_by_role("button", name="Run").click()
    wait_status(page, "succeeded", 60)

    echoed = json.loads(page.locator("#output pre").text_content())["echo"]
    assert echoed["note"] == "picture"
    assert echoed["image"]["media_type"] == "image/png"
    assert echoed["image"]["bytes"] == len(png_bytes())
    assert "-F 'image=@dot.png'" in page.locator("#curl").text_content()


def test_cancel_a_long_echo_job(stack, page):
    open_page(page, stack.url)
    choose(page, "echo", "echo")
    page.get_by_label("Input (JSON object").fill('{"sleep_s": 60}')
    page.get_by_role("button", name="Run").click()
    wait_status(page, "running", 60)
    page.get_by_role("button", name="Cancel").click()
    wait_status(page, "canceled", 20)
    job = requests.get(f"{stack.url}/v1/jobs/{job_id(page)}", timeout=10).json()
    assert job["status"] == "canceled"
    assert page.get_by_role("button", name="Cancel").is_disabled()


def test_queue_wait_shows_while_queued_and_a_queued_job_cancels(stack, page):
    open_page(page, stack.url)
    choose(page, "echo", "echo")
    page.get_by_label("Input (JSON object").fill('{"note": "waits"}')
    with consumer_paused(stack.settings, "echo"):  # online, but taking no job
        page.get_by_role("button", name="Run").click()
        wait_status(page, "queued", 30)
        page.wait_for_function(
            "() => /^[0-9.]+ s so far, 0 ahead/.test("
            "document.getElementById('stat-queue').textContent)"
        )
        page.get_by_role("button", name="Cancel").click()
        wait_status(page, "canceled", 20)
    job = requests.get(f"{stack.url}/v1/jobs/{job_id(page)}", timeout=10).json()
    assert job["status"] == "canceled" and job["started_at"] is None


def test_fleet_view_shows_the_workers_and_updates_live(stack, page):
    open_page(page, stack.url)
    for model in ("smollm2-135m", "echo"):
        row = page.locator("#fleet-workers tr", has_text=model)
        row.first.wait_for()
        assert "MiB" in row.first.text_content()  # the worker's RSS
    assert "1 loaded" in page.locator("#fleet-models tr[data-model='echo']").text_content()
    # A job submitted elsewhere shows up with its final status, without reloading the page.
    job = requests.post(
        stack.url + "/v1/jobs",
        json={"model": "echo", "input": {"note": "from curl"}},
        headers={"Prefer": "wait=30"},
        timeout=60,
    ).json()
    assert job["status"] == "succeeded"
    page.locator(f"#fleet-jobs tr[data-job='{job['id']}']", has_text="succeeded").wait_for(
        timeout=15_000
    )


def test_labels_and_keyboard_only(stack, page):
    open_page(page, stack.url)
    unlabeled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea')]
              .filter(e => !e.labels || e.labels.length === 0).map(e => e.id || e.outerHTML)"""
    )
    assert not unlabeled, f"inputs without a label: {unlabeled}"
    choose(page, "echo", "echo")
    page.locator("body").focus()
    for _ in range(60):  # Tab through the page until the echo input has the focus
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.id") == "echo-input":
            break
    else:
        pytest.fail("the echo input cannot be reached with Tab")
    page.keyboard.press("Control+A")
    page.keyboard.type('{"note": "keys only"}')
    page.keyboard.press("Control+Enter")
    wait_status(page, "succeeded", 60)
    assert "keys only" in page.locator("#output").text_content()


def test_readable_at_phone_width(stack, page):
    page.set_viewport_size({"width": 375, "height": 812})
    open_page(page, stack.url)
    page.locator("#fleet-workers tr", has_text="echo").first.wait_for()
    overflow = page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the page is {overflow}px wider than a phone screen"
    assert page.get_by_role("button", name="Run").is_visible()


def test_api_keys(stack, start_server, page, page_errors):
    key = "page-test-key-7d1f"
    keyed = start_server(stack.settings.model_copy(update={"api_keys": [key]}))
    assert requests.get(keyed.url + "/v1/models", timeout=10).status_code == 401
    assert requests.get(keyed.url + "/", timeout=10).status_code == 401  # the JSON view
    html = requests.get(keyed.url + "/", headers={"Accept": BROWSER_ACCEPT}, timeout=10)
    assert html.status_code == 200 and "API key" in html.text

    page_errors.allowed = ("status of 401",)  # the browser reports the refused key
    sent: list[tuple[str, str | None]] = []
    page.on("request", lambda r: sent.append((r.url, r.headers.get("authorization"))))
    page.goto(keyed.url + "/")
    key_input = page.locator("#key-input")
    assert key_input.is_visible()
    assert page.evaluate("() => document.activeElement.id") == "key-input"
    key_input.fill("wrong-key")
    page.get_by_role("button", name="Use key").click()
    page.get_by_text("refused").wait_for()
    key_input.fill(key)
    page.get_by_role("button", name="Use key").click()
    page.locator("#model option[value='echo']").wait_for(state="attached")
    page.locator("#key-panel").wait_for(state="hidden")

    choose(page, "echo", "echo")
    page.get_by_label("Input (JSON object").fill('{"note": "with a key"}')
    page.get_by_role("button", name="Run").click()
    wait_status(page, "succeeded", 60)
    assert "with a key" in page.locator("#output").text_content()
    assert "$CONVEYOR_API_KEY" in page.locator("#curl").text_content()
    assert key not in page.locator("body").text_content()

    assert all(key not in url for url, _ in sent), "the key went into a URL"
    api_calls = {a for u, a in sent if "/v1/" in u or "/admin/" in u}
    assert api_calls == {f"Bearer {key}", "Bearer wrong-key"}, api_calls
    events = [a for u, a in sent if u.endswith("/events")]
    assert events and all(a == f"Bearer {key}" for a in events)
    assert page.evaluate("() => sessionStorage.getItem('conveyor.apiKey')") == key
    assert page.evaluate("() => localStorage.length") == 0
    assert key not in page.url
    page.locator("#fleet-workers tr", has_text="echo").first.wait_for()
