"""Signed webhooks end to end: real workers, the real webhook worker, a real receiver."""

from __future__ import annotations

import json
import time

import pytest

from shared.celery_app import make_celery
from shared.jobs import JobRecord, Webhook, new_job_id, now
from shared.registry import load_registry
from shared.results import ResultStore, connect
from shared.webhooks import WebhookNotifier
from tests.conftest import wait_for
from tests.webhook_receiver import Receiver, start_webhook_worker, verify_standard_webhook
from workers.webhooks import Deliverer

pytestmark = pytest.mark.timeout(300)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MAX_ATTEMPTS = 5


@pytest.fixture(scope="module")
def settings(make_settings):
    return make_settings(webhook_secret=SECRET, webhook_allow_private=True,
                         webhook_max_attempts=MAX_ATTEMPTS, webhook_backoff_s=0.2,
                         webhook_backoff_max_s=1.0, webhook_timeout_s=2.0)


@pytest.fixture(scope="module")
def client(settings, start_worker, make_app, tmp_path_factory):
    start_worker(settings, "echo")
    start_worker(settings, "smollm2-135m")
    hooks = start_webhook_worker(settings, tmp_path_factory.mktemp("webhook-logs"))
    yield make_app(settings).test_client()
    hooks.stop()


@pytest.fixture
def receiver():
    rx = Receiver()
    yield rx
    rx.close()


def submit(client, model="echo", input_=None, **fields):
    if model == "smollm2-135m":
        fields.setdefault("task", "chat")
    resp = client.post("/v1/jobs", json={"model": model, "input": input_ or {}, **fields})
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()


def record(client, job_id):
    return client.get(f"/v1/jobs/{job_id}").get_json()


def deliveries(client, job_id, event=None):
    hook = record(client, job_id)["webhook"]
    return [d for d in hook["deliveries"] if event is None or d["event"] == event]


def test_every_event_arrives_signed_and_verifies(client, receiver):
    job = submit(client, input_={"sleep_s": 1.5}, webhook=receiver.url)
    assert job["webhook"] == {"url": receiver.url, "events": ["start", "output", "completed"],
                              "deliveries": []}
    [done] = receiver.wait(job["id"], "completed")
    [start] = receiver.of(job["id"], "start")
    outputs = receiver.of(job["id"], "output")
    assert outputs, "echo reports progress every second; at least one output event"
    for d in [start, *outputs, done]:
        assert verify_standard_webhook(SECRET, d.headers, d.body), d.headers
        assert d.headers["content-type"] == "application/json"
        # A receiver's check fails on any change to the body, the id or the timestamp.
        assert not verify_standard_webhook(SECRET, d.headers, d.body + b" ")
        assert not verify_standard_webhook(SECRET, {**d.headers, "webhook-id": "msg_x"}, d.body)
    assert len({d.id for d in [start, *outputs, done]}) == 2 + len(outputs)
    assert start.json["status"] == "running" and start.json["started_at"]
    assert outputs[0].json["status"] == "running" and outputs[0].json["output"]["progress"]
    final = record(client, job["id"])
    assert done.json["status"] == "succeeded" == final["status"]
    assert done.json["output"] == final["output"] == {"echo": {"sleep_s": 1.5}}
    assert done.json["completed_at"] == final["completed_at"]
    wait_for(lambda: len(deliveries(client, job["id"])) == 2 + len(outputs), 10,
             what="every delivery recorded")
    recorded = deliveries(client, job["id"])
    assert {(d["id"], d["status"], d["attempt"]) for d in recorded} == {
        (d.id, 200, 1) for d in [start, *outputs, done]}


def test_events_filter_picks_events(client, receiver):
    job = submit(client, input_={"sleep_s": 1.2}, webhook=receiver.url,
                 webhook_events_filter=["completed"])
    receiver.wait(job["id"], "completed")
    time.sleep(0.5)
    assert [d.event for d in receiver.of(job["id"])] == ["completed"]
    bad = client.post("/v1/jobs", json={"model": "echo", "input": {}, "webhook": receiver.url,
                                        "webhook_events_filter": ["done"]})
    assert bad.status_code == 422 and bad.get_json()["error"]["param"] == "webhook_events_filter"


def test_output_events_are_throttled_and_carry_partial_text(client, receiver):
    job = submit(client, "smollm2-135m", {"prompt": "Write a very long story about a dragon.",
                                          "max_tokens": 150, "temperature": 0},
                 webhook=receiver.url, webhook_events_filter=["output", "completed"])
    [done] = receiver.wait(job["id"], "completed", timeout=120)
    final = record(client, job["id"])
    tokens = final["metrics"]["completion_tokens"]
    outputs = receiver.of(job["id"], "output")
    run_s = final["metrics"]["run_seconds"]
    assert tokens >= 40, final
    # At most one output event per 500 ms of generation (+1 for the first), far fewer than tokens.
    assert 1 <= len(outputs) <= run_s / 0.5 + 1, (len(outputs), run_s, tokens)
    assert len(outputs) < tokens
    for d in outputs:
        assert verify_standard_webhook(SECRET, d.headers, d.body)
        partial = d.json["output"]["text"]
        assert partial and done.json["output"]["text"].startswith(partial)


def test_receiver_down_then_up_still_gets_completed_with_same_id(client):
    down = Receiver()
    port = down.port
    down.close()  # nothing listens: connection refused, a network error
    job = submit(client, webhook=f"http://127.0.0.1:{port}/hook",
                 webhook_events_filter=["completed"])
    wait_for(lambda: len(deliveries(client, job["id"], "completed")) >= 2, 30, interval=0.02,
             what="two failed attempts")
    rx = Receiver(port=port)
    try:
        [got] = rx.wait(job["id"], "completed", timeout=30)
        assert verify_standard_webhook(SECRET, got.headers, got.body)
        assert got.json["status"] == "succeeded"
        wait_for(lambda: deliveries(client, job["id"])[-1]["status"] == 200, 10,
                 what="the successful attempt recorded")
        attempts = deliveries(client, job["id"])
        assert {d["id"] for d in attempts} == {got.id}
        assert [d["attempt"] for d in attempts] == list(range(1, len(attempts) + 1))
        assert all(d["status"] == "network_error" and d["error"] for d in attempts[:-1])
        assert len(attempts) >= 3
    finally:
        rx.close()


def test_always_failing_receiver_is_retried_up_to_the_limit(client):
    rx = Receiver(respond=lambda n: 503)
    try:
        job = submit(client, webhook=rx.url, webhook_events_filter=["completed"])
        rx.wait(job["id"], "completed", count=MAX_ATTEMPTS, timeout=30)
        time.sleep(2.5)  # longer than the largest backoff: no further attempt comes
        got = rx.of(job["id"])
        assert len(got) == MAX_ATTEMPTS
        assert len({d.id for d in got}) == 1
        assert all(verify_standard_webhook(SECRET, d.headers, d.body) for d in got)
        gaps = [b.at - a.at for a, b in zip(got, got[1:], strict=False)]
        assert all(g >= 0.09 for g in gaps), gaps  # backoff, not a tight loop
        attempts = deliveries(client, job["id"])
        assert [(d["attempt"], d["status"]) for d in attempts] == [
            (n, 503) for n in range(1, MAX_ATTEMPTS + 1)]
        assert {d["id"] for d in attempts} == {got[0].id}
    finally:
        rx.close()


def test_client_errors_are_not_retried_but_429_is(client):
    gone = Receiver(respond=lambda n: 410)
    busy = Receiver(respond=lambda n: 429 if n == 1 else 204)
    try:
        a = submit(client, webhook=gone.url, webhook_events_filter=["completed"])
        b = submit(client, webhook=busy.url, webhook_events_filter=["completed"])
        busy.wait(b["id"], "completed", count=2)
        gone.wait(a["id"], "completed")
        time.sleep(1.5)
        assert len(gone.of(a["id"])) == 1
        assert [d["status"] for d in deliveries(client, a["id"])] == [410]
        assert [d["status"] for d in deliveries(client, b["id"])] == [429, 204]
    finally:
        gone.close()
        busy.close()


def test_queued_job_canceled_from_the_web_sends_completed(client, receiver):
    job = submit(client, "minilm", {"text": "never runs"}, webhook=receiver.url)
    assert client.post(f"/v1/jobs/{job['id']}/cancel").get_json()["status"] == "canceled"
    [done] = receiver.wait(job["id"], "completed")
    assert done.json["status"] == "canceled" and done.json["started_at"] is None
    client.post(f"/v1/jobs/{job['id']}/cancel")  # a second cancel sends nothing new
    time.sleep(1)
    assert [d.event for d in receiver.of(job["id"])] == ["completed"]


def test_job_expired_by_the_reaper_sends_completed(client, receiver):
    # No minilm worker runs: the echo worker's reaper expires the job.
    job = submit(client, "minilm", {"text": "too late"}, webhook=receiver.url,
                 queue_timeout_s=0.5)
    [done] = receiver.wait(job["id"], "completed", timeout=20)
    assert done.json["status"] == "failed" and done.json["error"]["type"] == "expired"
    assert receiver.of(job["id"], "start") == []


def test_canceled_running_job_sends_completed_with_partial_output(client, receiver):
    job = submit(client, "smollm2-135m", {"prompt": "Tell a long story about a ship.",
                                          "max_tokens": 800, "temperature": 0.7},
                 webhook=receiver.url, webhook_events_filter=["output", "completed"])
    receiver.wait(job["id"], "output", timeout=60)
    client.post(f"/v1/jobs/{job['id']}/cancel")
    [done] = receiver.wait(job["id"], "completed", timeout=20)
    assert done.json["status"] == "canceled"
    assert done.json["output"]["text"] and done.json["output"]["finish_reason"] == "canceled"


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/hook", "http://localhost:9/hook", "http://10.1.2.3/hook",
    "http://192.168.0.10/hook", "http://[::1]/hook", "http://169.254.169.254/latest",
    "http://0.0.0.0/", "ftp://example.com/hook", "not a url",
])
def test_private_and_bad_targets_are_refused_at_submit(settings, make_app, url):
    strict = make_app(settings.model_copy(update={"webhook_allow_private": False}))
    client = strict.test_client()
    before = len(client.get("/v1/jobs?limit=1000").get_json()["data"])
    resp = client.post("/v1/jobs", json={"model": "echo", "input": {}, "webhook": url})
    assert resp.status_code == 422
    err = resp.get_json()["error"]
    assert err["param"] == "webhook" and err["code"] == "webhook_target_refused", err
    assert len(client.get("/v1/jobs?limit=1000").get_json()["data"]) == before


def test_public_target_is_accepted(settings, make_app):
    client = make_app(settings.model_copy(update={"webhook_allow_private": False})).test_client()
    resp = client.post("/v1/jobs", json={"model": "minilm", "input": {"text": "x"},
                                         "webhook": "http://93.184.216.34/hook",
                                         "webhook_events_filter": ["start"]})
    assert resp.status_code == 202, resp.get_json()
    client.post(f"/v1/jobs/{resp.get_json()['id']}/cancel")


def test_delivery_time_check_refuses_a_target_gone_private(settings, receiver):
    """A host may resolve elsewhere after submit; the worker checks again before sending."""
    strict = settings.model_copy(update={"webhook_allow_private": False})
    store = ResultStore(connect(settings.redis_url), ttl_s=settings.result_ttl_s)
    job = JobRecord(id=new_job_id(), model="echo", task="echo", created_at=now(),
                    webhook=Webhook(url=receiver.url, events=["completed"]))
    store.create(job)
    sent: list[str] = []
    WebhookNotifier(store.r, sent.append, ttl_s=60).ended(store.mark_canceled(job.id))
    deliverer = Deliverer(strict, store, make_celery(strict, load_registry(strict.registry)))
    assert deliverer.deliver(sent[0], 1) == "refused"
    assert deliverer.deliver(sent[0], 1) == "done"  # a redelivered message sends nothing
    [attempt] = store.get(job.id).webhook.deliveries
    assert attempt.status == "refused" and "loopback" in attempt.error
    assert receiver.of(job.id) == []
    assert json.loads(store.r.get(f"conveyor:webhook:{sent[0]}")) == {"done": True}
