"""A dead worker loses no job, a duplicate delivery runs nothing, lost jobs stop looping."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import redis

from shared.celery_app import broker_keys, enqueue_job, make_celery
from shared.jobs import JobRecord, Priority, new_job_id, now
from shared.registry import load_registry
from shared.store import keys
from shared.store.jobs import JobStore
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(240)


def status_events(settings, job_id: str) -> list[str]:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    entries = client.xrange(keys.events(job_id))
    return [json.loads(f["data"])["status"] for _id, f in entries if f["event"] == "status"]


def running_on(client, job_id: str, attempt: int = 1) -> dict:
    def check():
        rec = client.get(f"/v1/jobs/{job_id}").get_json()
        return rec if rec["status"] == "running" and rec["attempts"] == attempt else None

    return wait_for(check, 30, interval=0.05, what=f"job {job_id} to run")


def finished(client, job_id: str, timeout: float = 60) -> dict:
    def check():
        rec = client.get(f"/v1/jobs/{job_id}").get_json()
        return rec if rec["status"] in ("succeeded", "failed", "canceled") else None

    return wait_for(check, timeout, what=f"job {job_id} to end")


def test_sigkill_of_pool_process_mid_job(make_settings, start_worker, make_app):
    settings = make_settings()
    worker = start_worker(settings, "echo")
    client = make_app(settings).test_client()
    job = client.post("/v1/jobs", json={"model": "echo", "input": {"sleep_s": 3}}).get_json()
    running_on(client, job["id"])
    (pool_pid,) = worker.pool_pids()
    os.kill(pool_pid, signal.SIGKILL)  # what the OOM killer does

    rec = finished(client, job["id"], timeout=60)
    assert rec["status"] == "succeeded", rec
    assert rec["attempts"] == 2
    assert worker.proc.poll() is None  # the worker itself lives on with a new pool process
    assert status_events(settings, job["id"]).count("succeeded") == 1


def test_sigkill_of_every_worker_process_mid_job(make_settings, start_worker, make_app):
    settings = make_settings()
    first = start_worker(settings, "echo")
    client = make_app(settings).test_client()
    job = client.post("/v1/jobs", json={"model": "echo", "input": {"sleep_s": 3}}).get_json()
    running_on(client, job["id"])
    first.kill_all()  # the container or host goes away
    assert first.proc.poll() is not None

    start_worker(settings, "echo")  # its supervisor (or compose) brings one back
    rec = finished(client, job["id"], timeout=60)
    assert rec["status"] == "succeeded", rec
    assert rec["attempts"] == 2
    assert rec["output"] == {"echo": {"sleep_s": 3.0}}
    assert status_events(settings, job["id"]) == [
        "queued",
        "running",
        "queued",
        "running",
        "succeeded",
    ]


def test_duplicate_deliveries_are_dropped(make_settings, start_worker, make_app):
    settings = make_settings()
    start_worker(settings, "echo")
    client = make_app(settings).test_client()
    registry = load_registry(settings.registry)
    spec = registry.get("echo")
    app = make_celery(settings, registry)

    job = client.post("/v1/jobs", json={"model": "echo", "input": {"sleep_s": 2}}).get_json()
    running_on(client, job["id"])
    # A second delivery while it runs (e.g. the broker restoring an unacked message).
    enqueue_job(app, settings, spec, job["id"], Priority.NORMAL, None)
    rec = finished(client, job["id"])
    assert rec["status"] == "succeeded" and rec["attempts"] == 1
    completed_at = rec["completed_at"]

    # A late delivery after it finished runs nothing and changes nothing.
    enqueue_job(app, settings, spec, job["id"], Priority.NORMAL, None)
    marker = client.post(
        "/v1/jobs", json={"model": "echo", "input": {}}, headers={"Prefer": "wait=20"}
    ).get_json()
    assert marker["status"] == "succeeded"  # the worker consumed the duplicate before this
    again = client.get(f"/v1/jobs/{job['id']}").get_json()
    assert again["attempts"] == 1 and again["completed_at"] == completed_at
    assert status_events(settings, job["id"]) == ["queued", "running", "succeeded"]


def test_job_fails_as_worker_lost_after_three_losses(make_settings, start_worker, make_app):
    settings = make_settings()
    worker = start_worker(settings, "echo")
    client = make_app(settings).test_client()
    job = client.post("/v1/jobs", json={"model": "echo", "input": {"sleep_s": 30}}).get_json()
    for attempt in (1, 2, 3):
        running_on(client, job["id"], attempt)
        pids = worker.pool_pids()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        wait_for(
            lambda pids=pids: worker.pool_pids() and worker.pool_pids() != pids,
            30,
            what="a new pool process",
        )
    rec = finished(client, job["id"], timeout=60)
    assert rec["status"] == "failed"
    assert rec["error"]["type"] == "worker_lost"
    assert rec["attempts"] == 3
    # The worker is still healthy and serves the next job.
    nxt = client.post(
        "/v1/jobs", json={"model": "echo", "input": {}}, headers={"Prefer": "wait=30"}
    ).get_json()
    assert nxt["status"] == "succeeded"


# A consumer killed just as Redis hands it a message takes the message with it.


def test_broker_keys_name_the_lists_kombu_writes(make_settings):
    settings = make_settings()
    registry = load_registry(settings.registry)
    spec = registry.get("minilm")  # no worker consumes it here
    app = make_celery(settings, registry)
    for priority in (Priority.HIGH, Priority.NORMAL, Priority.LOW, Priority.NORMAL):
        enqueue_job(app, settings, spec, f"job-{priority}", priority, None)
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    written = {key for key in r.keys(f"{spec.queue}*") if r.type(key) == "list"}
    assert len(written) == 3 and written <= set(broker_keys(spec.queue))
    assert sum(r.llen(key) for key in broker_keys(spec.queue)) == 4


def test_a_queued_job_whose_message_was_lost_is_sent_again(make_settings, start_worker, make_app):
    settings = make_settings(redeliver_after_s=1.0)
    worker = start_worker(settings, "echo")
    client = make_app(settings).test_client()
    store = JobStore(redis.Redis.from_url(settings.redis_url, decode_responses=True), ttl_s=600)
    # Accepted and recorded, but its message never reached the broker's list.
    lost = store.create(
        JobRecord(id=new_job_id(), model="echo", task="echo", created_at=now(), input={"n": 1})
    )
    rec = finished(client, lost.id, timeout=30)
    assert rec["status"] == "succeeded" and rec["attempts"] == 1
    assert status_events(settings, lost.id) == ["queued", "running", "succeeded"]
    assert "no message in the broker; sent again" in worker.tail(200)

    # A job whose message waits in the broker (no worker serves minilm) is left alone.
    waiting = client.post("/v1/jobs", json={"model": "minilm", "input": {"texts": ["a"]}})
    assert waiting.status_code == 202
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    keys = broker_keys(load_registry(settings.registry).get("minilm").queue)
    created = waiting.get_json()["created_at"]
    wait_for(
        lambda: time.time() > created + settings.redeliver_after_s,
        10,
        what="the waiting job to be old enough to resend",
    )
    # A reaper pass looks at every model: one that resends a lost echo job queued from now on
    # has looked at minilm's waiting job too.
    marker = store.create(
        JobRecord(id=new_job_id(), model="echo", task="echo", created_at=now(), input={"n": 2})
    )
    assert finished(client, marker.id, timeout=30)["status"] == "succeeded"
    assert sum(r.llen(key) for key in keys) == 1
    assert r.exists(f"conveyor:redelivered:{waiting.get_json()['id']}") == 0


def test_a_healthy_job_running_far_past_its_lease_is_not_requeued(
    make_settings, start_worker, make_app
):
    settings = make_settings(lease_s=1.0, reaper_interval_s=0.2)
    start_worker(settings, "echo")
    client = make_app(settings).test_client()
    job = client.post("/v1/jobs", json={"model": "echo", "input": {"sleep_s": 6}}).get_json()
    rec = finished(client, job["id"], timeout=60)
    assert rec["status"] == "succeeded" and rec["attempts"] == 1, rec
    assert rec["completed_at"] - rec["started_at"] >= 6 * settings.lease_s  # renewed throughout
    assert status_events(settings, job["id"]) == ["queued", "running", "succeeded"]
