"""Take the README's screenshot of the page against a running stack (`make up`).

    python -m tests.browser.screenshot --url http://127.0.0.1:8000 --out docs/img/page.png

It asks smollm2-135m a question in the playground, waits for the answer, and shoots what a
laptop screen shows: the answer, and the fleet view beside it.
"""

from __future__ import annotations

import argparse
import logging

from playwright.sync_api import sync_playwright

from tests.browser.conftest import BROWSER_HELP, find_chromium

log = logging.getLogger(__name__)


def shoot(url: str, out: str, question: str, width: int, height: int) -> None:
    path = find_chromium()
    if path is None:
        raise SystemExit(BROWSER_HELP)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, headless=True)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(url + "/")
        page.locator("#model option[value='smollm2-135m']").wait_for(state="attached")
        page.get_by_label("Model", exact=True).select_option("smollm2-135m")
        page.get_by_label("Message 1 text").fill(question)
        page.get_by_role("button", name="Run").click()
        page.wait_for_function(
            "() => document.getElementById('job-status').textContent.startsWith('succeeded')"
            " && !document.getElementById('output').hasAttribute('aria-busy')",
            timeout=180_000,
        )
        page.wait_for_timeout(2500)  # one more fleet refresh, with the job in the list
        page.screenshot(path=out)
        browser.close()
    log.info("wrote %s", out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--out", default="docs/img/page.png")
    parser.add_argument("--question", default="Name three rivers in Europe.")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1400)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    shoot(args.url, args.out, args.question, args.width, args.height)


if __name__ == "__main__":
    main()
