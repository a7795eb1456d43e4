"""Signed webhooks end to end: real workers, the real webhook worker, a real receiver."""

from __future__ import annotations

import json
import socket

import pytest

from shared.celery_app import make_celery
from shared.jobs import JobRecord, Webhook, new_job_id, now
from shared.registry import load_registry
from shared.store import keys
from shared.store.jobs import JobStore, connect
from shared.store.webhook_snapshots import WebhookSnapshots
from shared.webhooks import WebhookNotifier
from tests.conftest import wait_for
from tests.webhook_receiver import Receiver, start_webhook_worker, verify_standard_webhook
from workers.webhooks import Deliverer

pytestmark = pytest.mark.timeout(300)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MAX_ATTEMPTS = 5
BACKOFF_S, BACKOFF_MAX_S = 0.2, 3.0
PUBLIC = "93.184.216.34"


@pytest.fixture(scope="module")
def settings(make_settings):
    return make_settings(
        webhook_secret=SECRET,
        webhook_allow_private=True,
        webhook_max_attempts=MAX_ATTEMPTS,
        webhook_backoff_s=BACKOFF_S,
        webhook_backoff_max_s=BACKOFF_MAX_S,
        webhook_timeout_s=2.0,
    )


@pytest.fixture(scope="module")
def store(settings):
    return JobStore(connect(settings.redis_url), ttl_s=settings.result_ttl_s)


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


def closed(store, msg_id) -> bool:
    """Whether the webhook worker is done with an event: no attempt of it can follow."""
    raw = WebhookSnapshots.from_store(store).get(msg_id)
    return raw is not None and json.loads(raw) == {"done": True}


def wait_closed(store, msg_id, timeout: float = 30) -> None:
    wait_for(lambda: closed(store, msg_id), timeout, what=f"webhook {msg_id} finished")


def test_every_event_arrives_signed_and_verifies(client, receiver):
    job = submit(client, input_={"sleep_s": 1.5}, webhook=receiver.url)
    assert job["webhook"] == {
        "url": receiver.url,
        "events": ["start", "output", "completed"],
        "deliveries": [],
    }
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
    wait_for(
        lambda: len(deliveries(client, job["id"])) == 2 + len(outputs),
        10,
        what="every delivery recorded",
    )
    recorded = deliveries(client, job["id"])
    assert {(d["id"], d["status"], d["attempt"]) for d in recorded} == {
        (d.id, 200, 1) for d in [start, *outputs, done]
    }


def test_events_filter_picks_events(client, receiver, store):
    job = submit(
        client, input_={"sleep_s": 1.2}, webhook=receiver.url, webhook_events_filter=["completed"]
    )
    receiver.wait(job["id"], "completed")
    # The notifier freezes an event before queueing it, and `start` would come before
    # `completed`: its absence now means it was never queued.
    frozen = sorted(store.r.scan_iter(keys.webhook(f"msg_{job['id']}_*")))
    assert frozen == [keys.webhook(f"msg_{job['id']}_completed")], frozen
    assert [d.event for d in receiver.of(job["id"])] == ["completed"]
    bad = client.post(
        "/v1/jobs",
        json={
            "model": "echo",
            "input": {},
            "webhook": receiver.url,
            "webhook_events_filter": ["done"],
        },
    )
    assert bad.status_code == 422 and bad.get_json()["error"]["param"] == "webhook_events_filter"


def test_output_events_are_throttled_and_carry_partial_text(client, receiver):
    job = submit(
        client,
        "smollm2-135m",
        {"prompt": "Write a very long story about a dragon.", "max_tokens": 150, "temperature": 0},
        webhook=receiver.url,
        webhook_events_filter=["output", "completed"],
    )
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
    rx = Receiver(listening=False)  # port held but not listening: connection refused
    try:
        job = submit(client, webhook=rx.url, webhook_events_filter=["completed"])
        wait_for(
            lambda: len(deliveries(client, job["id"], "completed")) >= 2,
            30,
            interval=0.02,
            what="two failed attempts",
        )
        rx.listen()
        [got] = rx.wait(job["id"], "completed", timeout=30)
        assert verify_standard_webhook(SECRET, got.headers, got.body)
        assert got.json["status"] == "succeeded"
        wait_for(
            lambda: deliveries(client, job["id"])[-1]["status"] == 200,
            10,
            what="the successful attempt recorded",
        )
        attempts = deliveries(client, job["id"])
        assert {d["id"] for d in attempts} == {got.id}
        assert [d["attempt"] for d in attempts] == list(range(1, len(attempts) + 1))
        assert all(d["status"] == "network_error" and d["error"] for d in attempts[:-1])
        assert len(attempts) >= 3
    finally:
        rx.close()


def test_always_failing_receiver_is_retried_up_to_the_limit(client, store):
    rx = Receiver(respond=lambda d: 503)
    try:
        job = submit(client, webhook=rx.url, webhook_events_filter=["completed"])
        wait_closed(store, f"msg_{job['id']}_completed")  # given up: no attempt follows
        got = rx.of(job["id"])
        assert len(got) == MAX_ATTEMPTS
        assert len({d.id for d in got}) == 1
        assert all(verify_standard_webhook(SECRET, d.headers, d.body) for d in got)
        # Each wait is at least half its exponential step (the other half is jitter); a
        # constant or a linear backoff falls short of the later ones.
        gaps = [b.at - a.at for a, b in zip(got, got[1:], strict=False)]
        least = [min(BACKOFF_MAX_S, BACKOFF_S * 2**n) / 2 for n in range(MAX_ATTEMPTS - 1)]
        assert all(g >= low - 0.02 for g, low in zip(gaps, least, strict=True)), (gaps, least)
        attempts = deliveries(client, job["id"])
        assert [(d["attempt"], d["status"]) for d in attempts] == [
            (n, 503) for n in range(1, MAX_ATTEMPTS + 1)
        ]
        assert {d["id"] for d in attempts} == {got[0].id}
    finally:
        rx.close()


def test_client_errors_are_not_retried_but_429_is_after_its_retry_after(client, store):
    gone = Receiver(respond=lambda d: 410)
    # Retry-After (2 s) is ten times the backoff's first step (at most 0.2 s).
    busy = Receiver(respond=lambda d: (429, {"Retry-After": "2"}) if d.n == 1 else 204)
    try:
        a = submit(client, webhook=gone.url, webhook_events_filter=["completed"])
        b = submit(client, webhook=busy.url, webhook_events_filter=["completed"])
        first, second = busy.wait(b["id"], "completed", count=2)
        assert second.at - first.at >= 2.0 - 0.02, second.at - first.at
        wait_closed(store, f"msg_{a['id']}_completed")
        assert len(gone.of(a["id"])) == 1
        assert [d["status"] for d in deliveries(client, a["id"])] == [410]
        wait_closed(store, f"msg_{b['id']}_completed")
        assert [d["status"] for d in deliveries(client, b["id"])] == [429, 204]
    finally:
        gone.close()
        busy.close()


def test_redirects_are_not_followed(client, store):
    # 307 keeps the method and body: a client that followed it would POST to /moved.
    rx = Receiver(respond=lambda d: (307, {"Location": "/moved"}) if d.path == "/hook" else 200)
    try:
        job = submit(client, webhook=rx.url, webhook_events_filter=["completed"])
        wait_closed(store, f"msg_{job['id']}_completed")
        assert [(d.method, d.path) for d in rx.all()] == [("POST", "/hook")]
        assert [(d["attempt"], d["status"]) for d in deliveries(client, job["id"])] == [(1, 307)]
    finally:
        rx.close()


def test_output_still_undelivered_when_the_job_ends_is_dropped(client, store):
    # Echo reports progress each second of its 2.5 s; the receiver puts every `output` off
    # for 3 s, past the job's end, so each retry finds the job ended and drops its event.
    rx = Receiver(respond=lambda d: (429, {"Retry-After": "3"}) if d.event == "output" else 200)
    try:
        job = submit(
            client,
            input_={"sleep_s": 2.5},
            webhook=rx.url,
            webhook_events_filter=["output", "completed"],
        )
        [done] = rx.wait(job["id"], "completed")
        assert done.json["output"] == {"echo": {"sleep_s": 2.5}}  # it carries the output
        # Every `output` the notifier queued, whether it reached the receiver or not.
        prefix = keys.webhook("")
        queued = [
            k.removeprefix(prefix) for k in store.r.scan_iter(f"{prefix}msg_{job['id']}_output_*")
        ]
        for msg_id in queued:
            wait_closed(store, msg_id)
        got = rx.of(job["id"], "output")
        assert got, "no output event was put off: the test proves nothing"
        assert {d.id for d in got} <= set(queued)
        assert len({d.id for d in got}) == len(got), "an output event was retried"
        recorded = deliveries(client, job["id"], "output")
        assert sorted((d["id"], d["attempt"], d["status"]) for d in recorded) == sorted(
            (d.id, 1, 429) for d in got
        )
    finally:
        rx.close()


def test_queued_job_canceled_from_the_web_sends_completed(client, receiver, store):
    job = submit(client, "minilm", {"text": "never runs"}, webhook=receiver.url)
    assert client.post(f"/v1/jobs/{job['id']}/cancel").get_json()["status"] == "canceled"
    [done] = receiver.wait(job["id"], "completed")
    assert done.json["status"] == "canceled" and done.json["started_at"] is None
    msg_id = f"msg_{job['id']}_completed"
    wait_closed(store, msg_id)
    client.post(f"/v1/jobs/{job['id']}/cancel")  # a second cancel sends nothing new
    # Queueing again would have replaced the done marker with a fresh body.
    assert closed(store, msg_id)
    assert [d.event for d in receiver.of(job["id"])] == ["completed"]


def test_job_expired_by_the_reaper_sends_completed(client, receiver):
    # No minilm worker runs: the echo worker's reaper expires the job.
    job = submit(client, "minilm", {"text": "too late"}, webhook=receiver.url, queue_timeout_s=0.5)
    [done] = receiver.wait(job["id"], "completed", timeout=20)
    assert done.json["status"] == "failed" and done.json["error"]["type"] == "expired"
    assert receiver.of(job["id"], "start") == []


def test_canceled_running_job_sends_completed_with_partial_output(client, receiver):
    job = submit(
        client,
        "smollm2-135m",
        {"prompt": "Tell a long story about a ship.", "max_tokens": 800, "temperature": 0.7},
        webhook=receiver.url,
        webhook_events_filter=["output", "completed"],
    )
    receiver.wait(job["id"], "output", timeout=60)
    client.post(f"/v1/jobs/{job['id']}/cancel")
    [done] = receiver.wait(job["id"], "completed", timeout=20)
    assert done.json["status"] == "canceled"
    assert done.json["output"]["text"] and done.json["output"]["finish_reason"] == "canceled"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/latest",
        "http://0.0.0.0/",
        "ftp://example.com/hook",
        "not a url",
    ],
)
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
    resp = client.post(
        "/v1/jobs",
        json={
            "model": "minilm",
            "input": {"text": "x"},
            "webhook": "http://93.184.216.34/hook",
            "webhook_events_filter": ["start"],
        },
    )
    assert resp.status_code == 202, resp.get_json()
    client.post(f"/v1/jobs/{resp.get_json()['id']}/cancel")


def ended_job(store, url: str) -> tuple[JobRecord, str]:
    """Return a canceled job whose `completed` event to url is queued, and that event's id."""
    job = JobRecord(
        id=new_job_id(),
        model="echo",
        task="echo",
        created_at=now(),
        webhook=Webhook(url=url, events=["completed"]),
    )
    store.create(job)
    sent: list[str] = []
    WebhookNotifier(store, sent.append, ttl_s=60).ended(store.mark_canceled(job.id))
    return job, sent[0]


def deliverer_for(settings, store, **kwargs) -> Deliverer:
    return Deliverer(
        settings, store, make_celery(settings, load_registry(settings.registry)), **kwargs
    )


class Rebinding:
    """A resolver that answers a public address first and loopback from then on."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, host, port, type=0):
        self.calls += 1
        address = PUBLIC if self.calls == 1 else "127.0.0.1"
        return [(socket.AF_INET, type, socket.IPPROTO_TCP, "", (address, port))]


def test_name_rebinding_to_loopback_after_the_check_is_never_connected(settings, store, receiver):
    """DNS rebinding: the check sees a public address, the connection would get loopback."""
    strict = settings.model_copy(update={"webhook_allow_private": False})
    # `localhost` is loopback in the system resolver too: a client that resolved the name
    # itself, after our check, would reach the receiver.
    job, msg_id = ended_job(store, receiver.url_at("localhost"))
    resolve = Rebinding()
    assert deliverer_for(strict, store, resolve=resolve).deliver(msg_id, 1) == "refused"
    assert resolve.calls == 2  # the check, then the connection: one answer each
    assert receiver.all() == []
    [attempt] = store.get(job.id).webhook.deliveries
    assert attempt.status == "refused" and "127.0.0.1" in attempt.error
    assert closed(store, msg_id)


def test_delivery_connects_to_the_resolved_address_and_keeps_the_host_name(
    settings, store, receiver
):
    def resolve(host, port, type=0):  # .invalid never resolves in real DNS
        return [(socket.AF_INET, type, socket.IPPROTO_TCP, "", ("127.0.0.1", port))]

    job, msg_id = ended_job(store, receiver.url_at("hooks.invalid"))
    assert deliverer_for(settings, store, resolve=resolve).deliver(msg_id, 1) == "delivered"
    [got] = receiver.all()
    assert got.headers["host"] == f"hooks.invalid:{receiver.port}"
    assert verify_standard_webhook(SECRET, got.headers, got.body) and got.json["id"] == job.id


def test_delivery_time_check_refuses_a_target_gone_private(settings, store, receiver):
    """A host may resolve elsewhere after submit; the worker checks again before sending."""
    strict = settings.model_copy(update={"webhook_allow_private": False})
    job, msg_id = ended_job(store, receiver.url)
    sent = [msg_id]
    deliverer = deliverer_for(strict, store)
    assert deliverer.deliver(sent[0], 1) == "refused"
    assert deliverer.deliver(sent[0], 1) == "done"  # a redelivered message sends nothing
    [attempt] = store.get(job.id).webhook.deliveries
    assert attempt.status == "refused" and "loopback" in attempt.error
    assert receiver.of(job.id) == []
    assert closed(store, sent[0])
