"""With Redis or the broker unreachable every front door says 503 in the envelope, health
stays up, and service comes back with Redis."""

from __future__ import annotations

import base64
import io
import socket
import struct
import wave

import pytest

from web.dispatch import Dispatcher

pytestmark = pytest.mark.timeout(300)


def wav() -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        out.writeframes(struct.pack("<h", 0) * 1600)
    return buf.getvalue()


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
CHAT = [{"role": "user", "content": "Hi"}]
# Every route that submits a job: (method, path, request kwargs).
SUBMITS = [
    (
        "post",
        "/v1/jobs",
        dict(json={"model": "echo", "input": {"image": base64.b64encode(PNG).decode()}}),
    ),
    ("post", "/v1/chat/completions", dict(json={"model": "smollm2-135m", "messages": CHAT})),
    (
        "post",
        "/v1/chat/completions",
        dict(json={"model": "smollm2-135m", "messages": CHAT, "stream": True}),
    ),
    ("post", "/v1/completions", dict(json={"model": "smollm2-135m", "prompt": "Hi"})),
    ("post", "/v1/embeddings", dict(json={"model": "minilm", "input": "Hi"})),
    (
        "post",
        "/v1/audio/transcriptions",
        dict(
            data={"model": "whisper-1", "file": (io.BytesIO(wav()), "a.wav")},
            content_type="multipart/form-data",
        ),
    ),
    ("post", "/chat/completions", dict(json={"messages": CHAT})),
    ("post", "/generate/smollm2-135m", dict(json={"prompt": "Hi"})),
    ("post", "/generate", dict(json={"prompt": "Hi"})),
    ("post", "/models/smollm2-135m/generate", dict(json={"prompt": "Hi"})),
    ("post", "/restore_cache", dict(json={"messages": CHAT})),
]
# Routes that read jobs, models or the fleet.
READS = [
    ("get", "/readyz"),
    ("get", "/v1/jobs/abc"),
    ("get", "/v1/jobs"),
    ("get", "/v1/models"),
    ("get", "/v1/models/echo"),
    ("post", "/v1/jobs/abc/cancel"),
    ("get", "/v1/jobs/abc/events"),
    ("get", "/model_info"),
    ("get", "/models"),
    ("get", "/admin/memory"),
]


def call(client, method, path, kwargs=None):
    kwargs = dict(kwargs or {})
    if "data" in kwargs:  # file parts are read once: give each call its own
        kwargs["data"] = {
            k: (io.BytesIO(v[0].getvalue()), v[1]) if isinstance(v, tuple) else v
            for k, v in kwargs["data"].items()
        }
    return getattr(client, method)(path, **kwargs)


def assert_503(resp, what):
    assert resp.status_code == 503, (what, resp.status_code, resp.get_data(as_text=True))
    assert resp.is_json and resp.get_json()["error"]["message"], what


@pytest.fixture
def refused_url():
    """A Redis URL whose port is bound by nobody's listener: connections are refused, and
    no other process can take the port while the test runs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"redis://127.0.0.1:{sock.getsockname()[1]}/0"


def test_readyz_and_every_front_door_answer_503_when_redis_is_down(
    make_settings, make_app, refused_url
):
    client = make_app(make_settings(redis_url=refused_url)).test_client()
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["error"]["type"] == "service_unavailable"
    for method, path, kwargs in SUBMITS:
        assert_503(call(client, method, path, kwargs), path)
    for method, path in READS:
        resp = call(client, method, path)
        assert_503(resp, path)
        assert resp.get_json()["error"]["type"] == "service_unavailable"
        assert resp.headers["Retry-After"]


def test_redis_going_down_mid_run_then_coming_back(tmp_path, make_settings, make_app, start_worker):
    from tests.conftest import start_redis

    data = tmp_path / "redis"
    proc, port = start_redis(data)
    settings = make_settings(redis_url=f"redis://127.0.0.1:{port}/0", sync_wait_s=1.0)
    worker = start_worker(settings, "echo")
    try:
        client = make_app(settings).test_client()
        rec = client.post(
            "/v1/jobs", json={"model": "echo", "input": {}}, headers={"Prefer": "wait=30"}
        ).get_json()
        assert rec["status"] == "succeeded", rec

        proc.kill()  # Redis goes away with the stack running
        proc.wait(10)
        assert client.get("/healthz").status_code == 200
        for method, path, kwargs in SUBMITS:
            assert_503(call(client, method, path, kwargs), path)
        for method, path in READS:
            assert_503(call(client, method, path), path)

        proc, _ = start_redis(data, port=port)  # back, empty (no persistence here)
        assert client.get("/readyz").status_code == 200
        # The worker reconnects to its broker and serves again.
        rec = client.post(
            "/v1/jobs",
            json={"model": "echo", "input": {"after": "outage"}},
            headers={"Prefer": "wait=60"},
        ).get_json()
        assert rec["status"] == "succeeded", rec
        # The other front doors answer again: no worker serves their models here, which they
        # can tell only with Redis back (a 503 that names the missing worker, not Redis).
        for method, path, kwargs in SUBMITS[1:]:
            resp = call(client, method, path, kwargs)
            assert resp.get_json()["error"]["code"] == "no_worker", (path, resp.get_json())
    finally:
        worker.stop()
        proc.kill()
        proc.wait(10)


def test_broker_failing_after_the_record_is_written(
    make_settings, make_app, refused_url, start_worker
):
    settings = make_settings()
    # Routes that answer in one request submit only while a worker serves the model: real
    # workers for SmolLM2 and MiniLM. Whisper's weights are not here, so no worker serves
    # /v1/audio/transcriptions: it answers 503 no_worker and creates no job.
    start_worker(settings, "smollm2-135m")
    start_worker(settings, "minilm")
    app = make_app(settings)
    client = app.test_client()
    services = app.extensions["conveyor"]
    working = services.jobs.dispatcher
    # The job store answers; the broker (here on a port nobody serves) does not.
    services.jobs.dispatcher = Dispatcher(
        settings.model_copy(update={"redis_url": refused_url}), services.registry
    )
    try:
        for method, path, kwargs in SUBMITS:
            resp = call(client, method, path, kwargs)
            assert_503(resp, path)
            no_worker = resp.get_json()["error"]["code"] == "no_worker"
            assert no_worker == (path == "/v1/audio/transcriptions"), (path, resp.get_json())
    finally:
        services.jobs.dispatcher = working
    failed = services.store.list(status="failed", limit=100)
    assert len(failed) == len(SUBMITS) - 1  # all but the transcription
    assert {j.error.type for j in failed} == {"enqueue_failed"}
    assert not services.store.list(status="queued", limit=100)
    assert not services.payloads.job_ids()  # the image and the audio were deleted
    # The broker is back: the same front door queues jobs again.
    resp = call(client, *SUBMITS[0])
    assert resp.status_code == 202 and resp.get_json()["status"] == "queued"
