"""Bad input gets a 4xx with the JSON envelope, never a 500; the workers keep serving."""

from __future__ import annotations

import base64
import io

import pytest

pytestmark = pytest.mark.timeout(300)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 32


@pytest.fixture(scope="module")
def stack(make_settings, start_worker, make_app):
    settings = make_settings(max_request_bytes=64 * 1024)
    start_worker(settings, "echo")
    start_worker(settings, "smollm2-135m")
    return make_app(settings).test_client()


def assert_envelope(resp, status: int, type_: str | None = None, param: str | None = None):
    assert resp.status_code == status, (resp.status_code, resp.get_data(as_text=True))
    assert resp.is_json, resp.get_data(as_text=True)
    err = resp.get_json()["error"]
    assert set(err) == {"type", "message", "param", "code"}
    assert err["message"]
    if type_:
        assert err["type"] == type_
    assert err["param"] == param  # None where no single field is to blame
    return err


def chat(**inputs):
    return {"model": "smollm2-135m", "task": "chat", "input": {"prompt": "hi", **inputs}}


CASES = [
    (
        "invalid json",
        dict(data=b'{"model": "echo",', content_type="application/json"),
        400,
        "invalid_request_error",
        None,
    ),
    (
        "empty body",
        dict(data=b"", content_type="application/json"),
        400,
        "invalid_request_error",
        None,
    ),
    (
        "wrong content type",
        dict(data=b"model=echo", content_type="text/plain"),
        415,
        "unsupported_media_type",
        None,
    ),
    ("form content type", dict(data={"model": "echo"}), 415, "unsupported_media_type", None),
    ("array body", dict(json=[1, 2]), 422, "invalid_input", None),
    ("unknown model", dict(json={"model": "nope", "input": {}}), 404, "not_found", "model"),
    ("missing model", dict(json={"input": {}}), 422, "invalid_input", "model"),
    (
        "unknown top-level field",
        dict(json={"model": "echo", "inptu": {}}),
        422,
        "invalid_input",
        "inptu",
    ),
    (
        "input not an object",
        dict(json={"model": "echo", "input": "hello"}),
        422,
        "invalid_input",
        "input",
    ),
    (
        "unsupported task",
        dict(json={"model": "echo", "task": "chat", "input": {}}),
        422,
        "invalid_input",
        "task",
    ),
    (
        "unknown task",
        dict(json={"model": "smollm2-135m", "task": "dance", "input": {}}),
        422,
        "invalid_input",
        "task",
    ),
    (
        "chat without text",
        dict(json={"model": "smollm2-135m", "task": "chat", "input": {}}),
        422,
        "invalid_input",
        "input",
    ),
    (
        "max_tokens wrong type",
        dict(json=chat(max_tokens="many")),
        422,
        "invalid_input",
        "input.max_tokens",
    ),
    (
        "negative max_tokens",
        dict(json=chat(max_tokens=-5)),
        422,
        "invalid_input",
        "input.max_tokens",
    ),
    (
        "max_tokens over the model limit",
        dict(json=chat(max_tokens=10**6)),
        422,
        "invalid_input",
        "input.max_tokens",
    ),
    (
        "temperature out of range",
        dict(json=chat(temperature=9)),
        422,
        "invalid_input",
        "input.temperature",
    ),
    (
        "messages wrong shape",
        dict(
            json={
                "model": "smollm2-135m",
                "task": "chat",
                "input": {"messages": [{"role": "wizard"}]},
            }
        ),
        422,
        "invalid_input",
        "input.messages.0.role",
    ),
    (
        "undecodable base64",
        dict(json={"model": "echo", "input": {"image": "%%%not base64%%%"}}),
        422,
        "invalid_media",
        "input.image",
    ),
    (
        "bytes of no known type",
        dict(
            json={
                "model": "echo",
                "input": {"image": base64.b64encode(b"just some text, not an image").decode()},
            }
        ),
        422,
        "invalid_media",
        "input.image",
    ),
    (
        "audio in an image field",
        dict(json={"model": "echo", "input": {"image": base64.b64encode(WAV).decode()}}),
        422,
        "invalid_media",
        "input.image",
    ),
    (
        "data url without base64",
        dict(json={"model": "echo", "input": {"image": "data:image/png,abc"}}),
        422,
        "invalid_media",
        "input.image",
    ),
    (
        "remote url",
        dict(json={"model": "echo", "input": {"image": "http://example.com/x.png"}}),
        422,
        "invalid_media",
        "input.image",
    ),
    (
        "media of wrong json type",
        dict(json={"model": "echo", "input": {"image": 42}}),
        422,
        "invalid_input",
        "input.image",
    ),
    (
        "bad priority",
        dict(json={"model": "echo", "input": {}, "priority": "urgent"}),
        422,
        "invalid_input",
        "priority",
    ),
    (
        "negative timeout",
        dict(json={"model": "echo", "input": {}, "timeout_s": -1}),
        422,
        "invalid_input",
        "timeout_s",
    ),
    (
        "echo sleep over the cap",
        dict(json={"model": "echo", "input": {"sleep_s": 600}}),
        422,
        "invalid_input",
        "input.sleep_s",
    ),
    (
        "oversized body",
        dict(json={"model": "echo", "input": {"blob": "x" * 100_000}}),
        413,
        "payload_too_large",
        None,
    ),
]


@pytest.mark.parametrize("name,kwargs,status,type_,param", CASES, ids=[c[0] for c in CASES])
def test_bad_submit(stack, name, kwargs, status, type_, param):
    assert_envelope(stack.post("/v1/jobs", **kwargs), status, type_, param)


def test_multipart_without_request_part(stack):
    resp = stack.post(
        "/v1/jobs", data={"image": (io.BytesIO(PNG), "a.png")}, content_type="multipart/form-data"
    )
    assert_envelope(resp, 400, param="request")


def test_multipart_with_bad_json_part(stack):
    resp = stack.post("/v1/jobs", data={"request": "{nope"}, content_type="multipart/form-data")
    assert_envelope(resp, 400, param="request")


def test_multipart_unknown_file_field(stack):
    resp = stack.post(
        "/v1/jobs",
        data={
            "request": '{"model": "echo", "input": {}}',
            "spreadsheet": (io.BytesIO(PNG), "a.png"),
        },
        content_type="multipart/form-data",
    )
    assert_envelope(resp, 422, param="spreadsheet")


def test_multipart_corrupt_file(stack):
    resp = stack.post(
        "/v1/jobs",
        data={
            "request": '{"model": "echo", "input": {}}',
            "video": (io.BytesIO(b"\x00" * 100), "clip.mp4"),
        },
        content_type="multipart/form-data",
    )
    assert_envelope(resp, 422, "invalid_media", "input.video")


@pytest.mark.parametrize(
    "method,path,status",
    [
        ("get", "/v1/jobs/does-not-exist", 404),
        ("post", "/v1/jobs/does-not-exist/cancel", 404),
        ("get", "/v1/jobs/does-not-exist/events", 404),
        ("get", "/no/such/route", 404),
        ("delete", "/v1/jobs", 405),
    ],
)
def test_routing_errors_are_json(stack, method, path, status):
    assert_envelope(getattr(stack, method)(path), status)


def test_no_media_left_behind_by_rejected_submits(stack):
    payloads = stack.application.extensions["conveyor"].payloads
    before = set(payloads.job_ids())
    resp = stack.post(
        "/v1/jobs",
        json={"model": "echo", "input": {"image": base64.b64encode(PNG).decode(), "sleep_s": -3}},
    )
    assert_envelope(resp, 422, param="input.sleep_s")
    assert set(payloads.job_ids()) <= before


def test_each_media_item_is_held_to_max_media_bytes(stack, make_app):
    settings = stack.application.extensions["conveyor"].settings
    small = make_app(settings.model_copy(update={"max_media_bytes": 1024})).test_client()
    payloads = stack.application.extensions["conveyor"].payloads
    before = set(payloads.job_ids())
    fits = base64.b64encode(PNG + b"\x00" * (1024 - len(PNG))).decode()
    over = base64.b64encode(PNG + b"\x00" * (1025 - len(PNG))).decode()
    resp = small.post("/v1/jobs", json={"model": "echo", "input": {"images": [fits, over]}})
    assert_envelope(resp, 413, "payload_too_large", "input.images.1")
    assert set(payloads.job_ids()) <= before  # the item that fitted was deleted too
    # The limit is per item: two that fit pass together, though they add up to more.
    rec = small.post(
        "/v1/jobs",
        json={"model": "echo", "input": {"images": [fits, fits]}},
        headers={"Prefer": "wait=30"},
    ).get_json()
    assert rec["status"] == "succeeded", rec
    assert [item["bytes"] for item in rec["input"]["images"]] == [1024, 1024]


def test_prompt_over_the_context_window_fails_the_job_clearly(stack):
    resp = stack.post(
        "/v1/jobs", json=chat(prompt="word " * 5000, max_tokens=8), headers={"Prefer": "wait=60"}
    )
    rec = resp.get_json()
    assert rec["status"] == "failed", rec
    assert rec["error"]["type"] == "invalid_input"
    assert "context" in rec["error"]["message"]


def test_text_only_model_refuses_media(stack):
    rec = stack.post(
        "/v1/jobs", json=chat(image=base64.b64encode(PNG).decode()), headers={"Prefer": "wait=30"}
    ).get_json()
    assert rec["status"] == "failed"
    assert rec["error"]["type"] == "invalid_input" and "text only" in rec["error"]["message"]


def test_workers_keep_serving_after_bad_input(stack):
    for body in ({"model": "echo", "input": {"ok": True}}, chat(prompt="Say hello.", max_tokens=5)):
        rec = stack.post("/v1/jobs", json=body, headers={"Prefer": "wait=60"}).get_json()
        assert rec["status"] == "succeeded", rec


def test_echo_failure_is_recorded_as_data(stack):
    rec = stack.post(
        "/v1/jobs", json={"model": "echo", "input": {"fail": "boom"}}, headers={"Prefer": "wait=30"}
    ).get_json()
    assert rec["status"] == "failed"
    assert rec["error"] == {"type": "echo_failure", "message": "boom"}
