"""Control end to end: cancel, priorities, deadlines, backpressure, expiry and cleanup."""

from __future__ import annotations

import base64
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml

from shared.config import DEFAULT_REGISTRY
from shared.jobs import JobRecord, new_job_id, now
from shared.store import keys
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(300)
TERMINAL = ("succeeded", "failed", "canceled")
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
PNG_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()


@pytest.fixture(scope="module")
def settings(make_settings, tmp_path_factory):
    """The default models plus `echo-short`, an echo model whose own time limit is 2 s, and
    `echo-idle`, which no worker serves."""
    data = yaml.safe_load(DEFAULT_REGISTRY.read_text())
    keep = [m for m in data["models"] if m["id"] in ("smollm2-135m", "echo", "minilm")]
    keep.append(
        {"id": "echo-short", "backend": "echo", "tasks": ["echo"], "limits": {"time_limit_s": 2}}
    )
    keep.append({"id": "echo-idle", "backend": "echo", "tasks": ["echo"]})  # never a worker
    path = tmp_path_factory.mktemp("registry") / "models.yaml"
    path.write_text(yaml.safe_dump({"models": keep}))
    return make_settings(registry=path, payload_sweep_interval_s=1, payload_orphan_grace_s=30)


@pytest.fixture(scope="module")
def app(settings, start_worker, make_app):
    for model in ("echo", "echo-short", "smollm2-135m"):
        start_worker(settings, model)
    return make_app(settings)


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def services(app):
    return app.extensions["conveyor"]


@pytest.fixture
def sweeper_paused(services):
    """Hold the fleet's sweep lock so the reaper's periodic sweep cannot hide a leak."""
    services.store.r.set(keys.SWEEP_LOCK, "test", px=600_000)
    yield
    services.store.r.delete(keys.SWEEP_LOCK)


def submit(client, body, expect=202):
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == expect, resp.get_json()
    return resp.get_json()


def get(client, job_id):
    return client.get(f"/v1/jobs/{job_id}").get_json()


def until(client, job_id, status, timeout=30):
    statuses = {status} if isinstance(status, str) else set(status)
    return wait_for(
        lambda: (r := get(client, job_id))["status"] in statuses and r,
        timeout,
        interval=0.02,
        what=f"job {job_id} to be {statuses}",
    )


def echo_pid(services, model="echo"):
    [worker] = services.fleet.workers(model)
    return worker["pid"], worker["jobs_done"]


# cancellation
def test_cancel_running_llama_stops_it_and_keeps_partial_output(client, services):
    job = submit(
        client,
        {
            "model": "smollm2-135m",
            "task": "chat",
            "input": {"prompt": "Write a very long story about a dragon.", "max_tokens": 800},
        },
    )
    wait_for(
        lambda: any(e[1] == "token" for e in services.store.read_events(job["id"])),
        60,
        interval=0.02,
        what="the first token",
    )
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    rec = until(client, job["id"], TERMINAL, timeout=30)
    assert rec["status"] == "canceled" and rec["output"]["finish_reason"] == "canceled"
    tokens = [e[2]["text"] for e in services.store.read_events(job["id"]) if e[1] == "token"]
    assert rec["output"]["text"] == "".join(tokens) and tokens
    assert 0 < rec["metrics"]["completion_tokens"] == len(tokens) < 800


# About 1700 tokens: seconds of prompt evaluation for SmolLM2 on a CPU, all in one
# call into llama.cpp, before the first token exists.
LONG_PROMPT = "Summarize these words: " + " ".join(f"w{i}" for i in range(445))


def test_cancel_during_llama_prompt_evaluation_stops_it(client, services):
    # A raw completion: its first chunk carries the first token, so a stop that waited
    # for it would show one token here.
    job = submit(
        client,
        {
            "model": "smollm2-135m",
            "task": "complete",
            "input": {"prompt": LONG_PROMPT, "max_tokens": 50},
        },
    )
    until(client, job["id"], "running")
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    rec = until(client, job["id"], TERMINAL, timeout=30)
    # Stopped inside the evaluation: no token was ever generated (a stop between tokens
    # would have come after the first one).
    assert rec["status"] == "canceled" and rec["output"] == {
        "text": "",
        "finish_reason": "canceled",
    }
    assert rec["metrics"]["completion_tokens"] == 0
    assert not [e for e in services.store.read_events(job["id"]) if e[1] == "token"]
    # The context was reset: the next job answers from a clean state.
    after = submit(
        client,
        {
            "model": "smollm2-135m",
            "task": "chat",
            "input": {
                "prompt": "What is the capital of France?",
                "max_tokens": 12,
                "temperature": 0,
            },
        },
    )
    assert "Paris" in until(client, after["id"], TERMINAL, timeout=60)["output"]["text"]
    # The same prompt left to run (the context holds the chat above, so nothing of it is
    # reused): its evaluation alone takes far longer than the canceled job ran.
    full = submit(
        client,
        {
            "model": "smollm2-135m",
            "task": "complete",
            "input": {"prompt": LONG_PROMPT, "max_tokens": 1},
        },
    )
    full = until(client, full["id"], TERMINAL, timeout=120)
    assert full["status"] == "succeeded" and full["metrics"]["prompt_tokens"] > 1000, full
    canceled_s = rec["completed_at"] - rec["started_at"]
    evaluation_s = full["completed_at"] - full["started_at"]
    assert canceled_s < evaluation_s / 2, (canceled_s, evaluation_s)


def test_deadline_during_llama_prompt_evaluation_stops_it(client):
    job = submit(
        client,
        {
            "model": "smollm2-135m",
            "task": "chat",
            "timeout_s": 0.5,
            "input": {"prompt": "Again. " + LONG_PROMPT, "max_tokens": 50},
        },
    )
    rec = until(client, job["id"], TERMINAL, timeout=30)
    assert rec["status"] == "failed" and rec["error"]["type"] == "timeout", rec
    assert rec["output"]["text"] == "" and rec["metrics"]["completion_tokens"] == 0


def test_cancel_running_echo_within_a_second(client):
    """The suite's one latency check; the README's "within a second", with margin for a
    loaded machine, timed by the record's own clock rather than by polling."""
    job = submit(client, {"model": "echo", "input": {"sleep_s": 30, "image": PNG_URL}})
    until(client, job["id"], "running")
    asked_at = time.time()
    client.post(f"/v1/jobs/{job['id']}/cancel")
    rec = until(client, job["id"], TERMINAL, timeout=30)
    assert rec["status"] == "canceled" and rec["started_at"], rec
    assert rec["completed_at"] - asked_at < 2.0


# priorities
def test_high_priority_job_submitted_later_runs_next(client):
    busy = submit(client, {"model": "echo", "input": {"sleep_s": 3}})
    until(client, busy["id"], "running")
    lows = [
        submit(client, {"model": "echo", "priority": "low", "input": {"sleep_s": 0.2}})
        for _ in range(3)
    ]
    normal = submit(client, {"model": "echo", "input": {"sleep_s": 0.2}})
    high = submit(client, {"model": "echo", "priority": "high", "input": {"sleep_s": 0.2}})
    done = [until(client, j["id"], "succeeded") for j in (busy, high, normal, *lows)]
    # Every one of them was waiting while the busy job ran, so the order below is the queue's.
    assert done[0]["completed_at"] > high["created_at"]
    order = [j["id"] for j in sorted(done, key=lambda r: r["started_at"])]
    assert order == [busy["id"], high["id"], normal["id"], *[j["id"] for j in lows]]


def test_bad_priority_is_refused(client):
    resp = client.post("/v1/jobs", json={"model": "echo", "input": {}, "priority": "urgent"})
    assert resp.status_code == 422 and resp.get_json()["error"]["param"] == "priority"


# deadlines
def test_timeout_fails_a_running_job_and_the_worker_keeps_serving(client, services):
    pid, done_before = echo_pid(services)
    job = submit(client, {"model": "echo", "timeout_s": 1, "input": {"sleep_s": 30}})
    rec = until(client, job["id"], TERMINAL, timeout=10)
    assert rec["status"] == "failed" and rec["error"]["type"] == "timeout", rec
    assert 0.9 <= rec["metrics"]["run_seconds"] < 3
    after = submit(client, {"model": "echo", "input": {"n": 1}})
    assert until(client, after["id"], TERMINAL)["status"] == "succeeded"
    wait_for(lambda: echo_pid(services)[1] >= done_before + 2, 10, what="worker heartbeat")
    assert echo_pid(services)[0] == pid  # the same pool process served both


def test_llama_timeout_keeps_partial_output(client):
    # 3 s: time for the first tokens on a loaded machine, far short of 1000 tokens.
    job = submit(
        client,
        {
            "model": "smollm2-135m",
            "task": "chat",
            "timeout_s": 3,
            "input": {"prompt": "Write a very long story about a dragon.", "max_tokens": 1000},
        },
    )
    rec = until(client, job["id"], TERMINAL, timeout=30)
    assert rec["status"] == "failed" and rec["error"]["type"] == "timeout", rec
    assert rec["output"]["finish_reason"] == "timeout" and rec["output"]["text"]


def test_model_time_limit_caps_the_job_timeout(client):
    job = submit(client, {"model": "echo-short", "timeout_s": 60, "input": {"sleep_s": 30}})
    assert job["timeout_s"] == 2
    rec = until(client, job["id"], TERMINAL, timeout=15)
    assert rec["status"] == "failed" and rec["error"]["type"] == "timeout", rec
    assert rec["metrics"]["run_seconds"] < 4


def test_celery_soft_time_limit_stops_a_step_that_never_returns(client, services):
    pid, done_before = echo_pid(services, "echo-short")
    # block_s sleeps in one step that never looks at the deadline: only Celery's soft time
    # limit (the 2 s deadline plus a second) can end it before its 30 s are up.
    job = submit(client, {"model": "echo-short", "input": {"block_s": 30}})
    rec = until(client, job["id"], TERMINAL, timeout=20)
    assert rec["status"] == "failed" and rec["error"] == {
        "type": "timeout",
        "message": "the job ran past its 2 s time limit",
    }, rec
    after = submit(client, {"model": "echo-short", "input": {"n": 1}})
    assert until(client, after["id"], TERMINAL)["status"] == "succeeded"
    wait_for(
        lambda: echo_pid(services, "echo-short")[1] >= done_before + 2, 10, what="worker heartbeat"
    )
    assert echo_pid(services, "echo-short")[0] == pid  # no pool process was killed


def test_queue_timeout_expires_a_job_that_then_never_runs(client, services):
    store = services.store
    busy = submit(client, {"model": "echo", "input": {"sleep_s": 30}})
    until(client, busy["id"], "running")
    late = submit(client, {"model": "echo", "queue_timeout_s": 1, "input": {"image": PNG_URL}})
    # Watched in the store: a GET of the job would expire it in the web service itself.
    rec = wait_for(
        lambda: (r := store.get(late["id"])).status.is_terminal() and r,
        20,
        what="the reaper to expire the job",
    )
    assert rec.status == "failed" and rec.error.type == "expired", rec
    # The reaper did it, not the busy worker meeting the message late: that one still runs.
    assert store.get(busy["id"]).status == "running"
    client.post(f"/v1/jobs/{busy['id']}/cancel")
    # A job queued after it runs once the expired job's message was consumed and dropped.
    marker = submit(client, {"model": "echo", "input": {}})
    assert until(client, marker["id"], TERMINAL)["status"] == "succeeded"
    rec = get(client, late["id"])
    assert rec["status"] == "failed" and rec["started_at"] is None and rec["attempts"] == 0
    statuses = [e[2]["status"] for e in services.store.read_events(late["id"]) if e[1] == "status"]
    assert statuses == ["queued", "failed"]
    assert late["id"] not in services.payloads.job_ids()


def test_queue_timeout_is_enforced_even_with_no_worker_at_all(make_settings, make_app):
    lonely = make_app(make_settings()).test_client()  # its own Redis db: no worker, no reaper
    job = submit(lonely, {"model": "echo", "queue_timeout_s": 3, "input": {"image": PNG_URL}})
    assert get(lonely, job["id"])["status"] == "queued"
    rec = until(lonely, job["id"], TERMINAL, timeout=15)
    assert rec["status"] == "failed" and rec["error"]["type"] == "expired"
    assert job["id"] not in lonely.application.extensions["conveyor"].payloads.job_ids()
    waited = lonely.post(
        "/v1/jobs",
        json={"model": "echo", "queue_timeout_s": 0.3, "input": {}},
        headers={"Prefer": "wait=1"},
    )
    assert waited.get_json()["error"]["type"] == "expired"


# backpressure
def test_full_queue_answers_429_with_retry_after(client, services, make_app, settings):
    depth = services.store.queue_depth("echo-idle")
    tight = make_app(settings.model_copy(update={"max_queued_per_model": depth + 3}))
    strict = tight.test_client()
    queued = [submit(strict, {"model": "echo-idle", "input": {"n": i}}) for i in range(3)]
    assert all(j["status"] == "queued" and "no worker is online" in j["notice"] for j in queued)
    stored = set(services.payloads.job_ids())
    resp = strict.post("/v1/jobs", json={"model": "echo-idle", "input": {"image": PNG_URL}})
    assert resp.status_code == 429
    assert int(resp.headers["Retry-After"]) > 0
    assert resp.get_json()["error"]["code"] == "queue_full"
    assert set(services.payloads.job_ids()) <= stored  # the refused job's image was deleted
    models = {m["id"]: m for m in strict.get("/v1/models").get_json()["data"]}
    assert models["echo-idle"]["workers_online"] == 0
    assert models["echo-idle"]["queue_depth"] == depth + 3
    submit(strict, {"model": "echo", "input": {}})  # other models are not affected
    strict.post(f"/v1/jobs/{queued[0]['id']}/cancel")
    queued.append(submit(strict, {"model": "echo-idle", "input": {"text": "room again"}}))
    for job in queued:
        strict.post(f"/v1/jobs/{job['id']}/cancel")


def test_concurrent_submits_over_http_never_overshoot_the_queue_limit(
    services, settings, start_server
):
    depth = services.store.queue_depth("echo-idle")
    server = start_server(settings.model_copy(update={"max_queued_per_model": depth + 5}))
    gate = threading.Barrier(20)

    def post(i: int) -> requests.Response:
        gate.wait(30)
        return requests.post(
            f"{server.url}/v1/jobs", timeout=30, json={"model": "echo-idle", "input": {"n": i}}
        )

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(post, range(20)))
    codes = sorted(r.status_code for r in answers)
    assert codes == [202] * 5 + [429] * 15, codes
    assert services.store.queue_depth("echo-idle") == depth + 5
    for resp in answers:
        if resp.status_code == 202:
            services.jobs.cancel(resp.json()["id"])


# expiry and cleanup
def test_no_payload_is_left_after_100_jobs_end_in_mixed_ways(client, services, sweeper_paused):
    ids: list[str] = []

    def job(body, expect=202):
        body = {"model": "echo", **body}
        body["input"] = {"image": PNG_URL, **body.get("input", {})}
        rec = submit(client, body, expect)
        if expect == 202:
            ids.append(rec["id"])
        return rec

    busy = job({"input": {"sleep_s": 3}})
    until(client, busy["id"], "running")
    expiring = [job({"queue_timeout_s": 0.5}) for _ in range(15)]
    for _ in range(15):  # canceled while queued
        queued = job({})
        assert queued["id"] in services.payloads.job_ids()  # its image is on disk until then
        client.post(f"/v1/jobs/{queued['id']}/cancel")
    for j in expiring:
        assert until(client, j["id"], "failed")["error"]["type"] == "expired"
    for _ in range(4):  # refused at submit after the image was stored: 422, nothing kept
        job({"input": {"audio": base64.b64encode(b"not audio at all").decode()}}, expect=422)
    plain = [job({"input": {"n": i}}) for i in range(30)]
    failing = [job({"input": {"fail": "boom"}}) for _ in range(15)]
    timeouts = [job({"timeout_s": 0.3, "input": {"sleep_s": 5}}) for _ in range(10)]
    for _ in range(10):  # canceled while running
        running = job({"input": {"sleep_s": 10}})
        until(client, running["id"], "running", timeout=60)
        client.post(f"/v1/jobs/{running['id']}/cancel")
        until(client, running["id"], "canceled")
    assert len(ids) + 4 == 100
    ended = {j: until(client, j, TERMINAL, timeout=60) for j in ids}
    assert {r["status"] for r in ended.values()} == {"succeeded", "failed", "canceled"}
    assert {ended[j["id"]]["error"]["type"] for j in timeouts} == {"timeout"}
    assert {ended[j["id"]]["status"] for j in plain + failing} == {"succeeded", "failed"}
    root = Path(services.settings.data_dir) / "payloads"
    # The last canceled job's worker deletes its media as it returns.
    wait_for(lambda: not os.listdir(root), 10, what="every payload to be deleted")


def test_sweeper_runs_from_admin_and_periodically(client, services, sweeper_paused):
    payloads, store = services.payloads, services.store
    live = store.create(JobRecord(id=new_job_id(), model="minilm", task="embed", created_at=now()))
    ended = store.create(JobRecord(id=new_job_id(), model="minilm", task="embed", created_at=now()))
    store.mark_canceled(ended.id)
    old = time.time() - 3600
    for job_id, size in ((live.id, 10), (ended.id, 20), ("orphan-old", 30), ("orphan-new", 40)):
        payloads.put(job_id, "001-image", b"x" * size)
    root = Path(services.settings.data_dir) / "payloads"
    for path in (root / "orphan-old", root / "orphan-old" / "001-image"):
        os.utime(path, (old, old))
    usage = client.get("/admin/temp").get_json()
    assert (usage["jobs"], usage["files"], usage["bytes"]) == (4, 4, 100)
    report = client.post("/admin/temp/cleanup").get_json()
    assert sorted(report["removed"]) == sorted([ended.id, "orphan-old"])
    assert sorted(os.listdir(root)) == sorted([live.id, "orphan-new"])
    assert (report["jobs"], report["files"], report["bytes"]) == (2, 2, 50)
    # The reaper sweeps on its own once the fleet's interval has passed.
    payloads.put("orphan-later", "001-image", b"x")
    for path in (root / "orphan-later", root / "orphan-later" / "001-image"):
        os.utime(path, (old, old))
    store.mark_canceled(live.id)
    services.store.r.delete(keys.SWEEP_LOCK)
    wait_for(lambda: sorted(os.listdir(root)) == ["orphan-new"], 15, what="the periodic sweep")
    payloads.delete("orphan-new")


def test_celery_hard_time_limit_ends_a_step_deaf_to_the_soft_one(client, services):
    pid, _ = echo_pid(services, "echo-short")
    # native_block_s masks the soft limit's signal, as a native call that never returns to
    # Python does: only the hard limit (soft + HARD_LIMIT_GRACE_S) kills the pool process.
    job = submit(client, {"model": "echo-short", "input": {"native_block_s": 40}})
    rec = until(client, job["id"], TERMINAL, timeout=45)
    assert rec["status"] == "failed" and rec["error"]["type"] == "timeout", rec
    assert "hard time limit" in rec["error"]["message"]
    assert rec["attempts"] == 1  # ended, not handed to the reaper to run again
    after = submit(client, {"model": "echo-short", "input": {"n": 2}})
    assert until(client, after["id"], TERMINAL, timeout=60)["status"] == "succeeded"
    pids = {w["pid"] for w in services.fleet.workers("echo-short")}
    assert pids - {pid}, pids  # a new pool process served it
