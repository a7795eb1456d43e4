"""One worker, one model copy, up to max_concurrency jobs at once: each job still has its own
lease, cancel, deadline and events; priority still picks the next job; a killed worker
loses no job and runs none twice; memory stays flat."""

from __future__ import annotations

import logging
import os
import signal

import pytest
import redis
import yaml

from shared.celery_app import broker_keys, enqueue_job, make_celery
from shared.config import DEFAULT_REGISTRY
from shared.jobs import Priority
from shared.registry import load_registry
from shared.store.fleet import Fleet
from shared.store.jobs import JobStore
from tests.conftest import wait_for

log = logging.getLogger(__name__)
pytestmark = pytest.mark.timeout(300)
TERMINAL = ("succeeded", "failed", "canceled")
SMOL = "smollm2-135m"


@pytest.fixture(scope="module")
def settings(make_settings, tmp_path_factory):
    shipped = yaml.safe_load(DEFAULT_REGISTRY.read_text())["models"]
    # max_concurrency: the backends' defaults (llama.cpp and sentence-transformers batch)
    entries = [
        *(m for m in shipped if m["id"] in (SMOL, "minilm")),
        {"id": "echo-batch", "backend": "echo", "tasks": ["echo"], "max_concurrency": 8},
        {"id": "echo-pair", "backend": "echo", "tasks": ["echo"], "max_concurrency": 2},
        {
            "id": "echo-limited",
            "backend": "echo",
            "tasks": ["echo"],
            "max_concurrency": 4,
            "limits": {"time_limit_s": 2},
        },
        {"id": "echo-kill", "backend": "echo", "tasks": ["echo"], "max_concurrency": 4},
    ]
    path = tmp_path_factory.mktemp("registry") / "models.yaml"
    path.write_text(yaml.safe_dump({"models": entries}))
    return make_settings(registry=path)


@pytest.fixture(scope="module")
def workers(settings, start_worker):
    started = {m: start_worker(settings, m, wait=False) for m in ("echo-batch", "echo-pair", SMOL)}
    started.update({m: start_worker(settings, m) for m in ("echo-limited", "echo-kill")})
    fleet = Fleet.from_url(settings.redis_url)
    for model, worker in started.items():
        wait_for(
            lambda w=worker, m=model: any(
                f.get("loaded") and f["pid"] in w.pool_pids() for f in fleet.workers(m)
            ),
            120,
            what=f"worker {model}",
        )
    return started


@pytest.fixture(scope="module")
def client(settings, workers, make_app):
    return make_app(settings).test_client()


def submit(client, model, body=None, **fields):
    resp = client.post("/v1/jobs", json={"model": model, "input": body or {}, **fields})
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["id"]


def get(client, job_id):
    return client.get(f"/v1/jobs/{job_id}").get_json()


def until(client, job_id, statuses=TERMINAL, timeout=60, attempt=None):
    def check():
        rec = get(client, job_id)
        if rec["status"] in statuses and (attempt is None or rec["attempts"] == attempt):
            return rec
        return None

    return wait_for(check, timeout, interval=0.05, what=f"job {job_id} to be {statuses}")


def statuses(settings, job_id):
    store = JobStore(redis.Redis.from_url(settings.redis_url, decode_responses=True), ttl_s=600)
    return [data for _id, event, data in store.read_events(job_id) if event == "status"]


def model_pid(worker):
    (pid,) = worker.pool_pids()  # one model process holds the one copy of the model
    return pid


def test_eight_jobs_run_at_once_on_one_model_copy(client, settings, workers):
    pid = model_pid(workers["echo-batch"])
    ids = [submit(client, "echo-batch", {"n": i, "sleep_s": 3}) for i in range(8)]
    # What Flower's worker page lists: Celery's own view of the tasks running there.
    app = make_celery(settings, load_registry(settings.registry))
    node = f"echo-batch@{os.uname().nodename}"

    def active():
        found = (app.control.inspect(destination=[node], timeout=5).active() or {}).get(node)
        return found if found and len(found) == 8 else None

    tasks = wait_for(active, 20, interval=0.2, what="8 active tasks on the worker")
    assert sorted(t["args"][0] for t in tasks) == sorted(ids)
    app.close()
    recs = [until(client, job_id) for job_id in ids]
    for i, rec in enumerate(recs):
        assert rec["status"] == "succeeded", rec
        assert rec["output"] == {"echo": {"n": i, "sleep_s": 3.0}}
        assert rec["attempts"] == 1
    # All eight ran at once: each started before any of them ended.
    assert max(r["started_at"] for r in recs) < min(r["completed_at"] for r in recs)
    workers_seen = {
        e["worker"] for job_id in ids for e in statuses(settings, job_id) if "worker" in e
    }
    assert workers_seen == {f"echo-batch@{os.uname().nodename}:{pid}"}
    facts = Fleet.from_url(settings.redis_url).workers("echo-batch")
    assert [f["max_concurrency"] for f in facts] == [8]
    assert model_pid(workers["echo-batch"]) == pid


def test_eight_smollm2_chats_run_as_one_batch(client, settings, workers):
    pid = model_pid(workers[SMOL])
    facts = Fleet.from_url(settings.redis_url).workers(SMOL)
    assert [f["max_concurrency"] for f in facts] == [8]  # llama.cpp's default
    question = {"prompt": "What is the capital of France?", "max_tokens": 24}
    ids = [submit(client, SMOL, question, task="chat") for _ in range(8)]
    recs = [until(client, job_id, timeout=240) for job_id in ids]
    assert all(r["status"] == "succeeded" for r in recs), recs
    texts = [r["output"]["text"] for r in recs]
    assert all("Paris" in text for text in texts), texts
    assert len(set(texts)) == 1, texts  # greedy (the shipped sampling): the same answer
    assert max(r["started_at"] for r in recs) < min(r["completed_at"] for r in recs)
    store = JobStore(redis.Redis.from_url(settings.redis_url, decode_responses=True), ttl_s=600)
    for rec in recs:  # each job streamed its own tokens
        tokens = [d["text"] for _i, e, d in store.read_events(rec["id"]) if e == "token"]
        assert "".join(tokens) == rec["output"]["text"]
    assert model_pid(workers[SMOL]) == pid


def test_a_job_joins_a_running_batch(client):
    long = [submit(client, "echo-batch", {"sleep_s": 4, "n": i}) for i in range(2)]
    for job_id in long:
        until(client, job_id, ("running",))
    late = until(client, submit(client, "echo-batch", {"sleep_s": 0.5}))
    assert late["status"] == "succeeded"
    running = [get(client, job_id) for job_id in long]
    assert all(r["status"] == "running" for r in running), running  # it did not wait for them
    ended = [until(client, job_id) for job_id in long]
    assert late["completed_at"] < min(r["completed_at"] for r in ended)
    assert all(r["status"] == "succeeded" for r in ended)


def test_cancel_one_job_mid_batch_while_the_others_finish(client, settings):
    ids = [submit(client, "echo-batch", {"sleep_s": 4, "n": i}) for i in range(4)]
    for job_id in ids:
        until(client, job_id, ("running",))
    assert client.post(f"/v1/jobs/{ids[1]}/cancel").status_code == 200
    canceled = until(client, ids[1], timeout=10)
    assert canceled["status"] == "canceled", canceled
    others = [until(client, job_id) for job_id in ids if job_id != ids[1]]
    assert all(r["status"] == "succeeded" for r in others), others
    assert canceled["completed_at"] < min(r["completed_at"] for r in others) - 1
    # Its events: the partial progress it made, then its one end.
    assert [e["status"] for e in statuses(settings, ids[1])] == ["queued", "running", "canceled"]


def test_a_deadline_expires_inside_a_batch(client):
    ids = [submit(client, "echo-batch", {"sleep_s": 3, "n": i}) for i in range(3)]
    late = submit(client, "echo-batch", {"sleep_s": 30}, timeout_s=1)
    rec = until(client, late, timeout=20)
    assert rec["status"] == "failed" and rec["error"]["type"] == "timeout", rec
    assert rec["metrics"]["run_seconds"] < 3
    others = [until(client, job_id) for job_id in ids]
    assert all(r["status"] == "succeeded" for r in others), others


def test_the_soft_time_limit_interrupts_one_job_of_a_batch(client, workers):
    pid = model_pid(workers["echo-limited"])
    # block_s runs Python that never looks at its deadline: only the soft limit (the 2 s
    # deadline plus a second) raised in its thread ends it; its batch mates are untouched.
    stuck = submit(client, "echo-limited", {"block_s": 30})
    until(client, stuck, ("running",))
    mates = [submit(client, "echo-limited", {"sleep_s": 1, "n": i}) for i in range(2)]
    rec = until(client, stuck, timeout=20)
    assert rec["status"] == "failed" and rec["error"] == {
        "type": "timeout",
        "message": "the job ran past its 2 s time limit",
    }, rec
    assert rec["metrics"]["run_seconds"] < 10
    assert all(until(client, job_id)["status"] == "succeeded" for job_id in mates)
    assert model_pid(workers["echo-limited"]) == pid  # nothing was killed or replaced


def test_a_step_stuck_past_its_hard_limit_ends_its_job_and_recycles_after_the_batch(
    client, workers
):
    worker = workers["echo-limited"]
    pid = model_pid(worker)
    # One call that never returns to Python: no exception can reach it in its thread.
    stuck = submit(client, "echo-limited", {"native_block_s": 40})
    until(client, stuck, ("running",))
    mates = [submit(client, "echo-limited", {"sleep_s": 1, "n": i}) for i in range(3)]
    assert all(until(client, job_id)["status"] == "succeeded" for job_id in mates)
    rec = until(client, stuck, timeout=45)
    assert rec["status"] == "failed" and rec["error"]["type"] == "timeout", rec
    assert "hard time limit" in rec["error"]["message"] and rec["attempts"] == 1
    fresh = wait_for(lambda: worker.pool_pids() != [pid] and worker.pool_pids(), 60, what="recycle")
    assert worker.proc.poll() is None and pid not in fresh
    after = until(client, submit(client, "echo-limited", {"n": 7}), timeout=60)
    assert after["status"] == "succeeded"
    assert get(client, stuck)["attempts"] == 1  # ended once, never handed to the reaper


def test_priority_holds_while_the_batch_is_full(client, settings):
    spec = load_registry(settings.registry).get("echo-pair")
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    first = submit(client, "echo-pair", {"sleep_s": 2})
    second = submit(client, "echo-pair", {"sleep_s": 6})
    for job_id in (first, second):
        until(client, job_id, ("running",))
    low = [submit(client, "echo-pair", {"n": i}, priority="low") for i in range(3)]
    high = submit(client, "echo-pair", {"n": 9}, priority="high")
    # The batch is full: the worker reserved none of the waiting jobs' messages.
    assert sum(r.llen(key) for key in broker_keys(spec.queue)) == 4
    assert get(client, first)["status"] == "running"
    recs = {job_id: until(client, job_id, timeout=30) for job_id in [*low, high]}
    assert all(rec["status"] == "succeeded" for rec in recs.values()), recs
    # The slot `first` freed went to the high-priority job, submitted after the low ones.
    assert recs[high]["started_at"] < min(recs[job_id]["started_at"] for job_id in low)
    assert recs[high]["started_at"] < until(client, second)["completed_at"]


def test_sigkill_mid_batch_redelivers_every_job_once(client, settings, workers):
    worker = workers["echo-kill"]
    pid = model_pid(worker)
    ids = [submit(client, "echo-kill", {"sleep_s": 3, "n": i}) for i in range(4)]
    for job_id in ids:
        until(client, job_id, ("running",), attempt=1)
    os.kill(pid, signal.SIGKILL)  # what the OOM killer does

    recs = [until(client, job_id, timeout=90) for job_id in ids]
    for i, rec in enumerate(recs):
        assert rec["status"] == "succeeded", rec
        assert rec["attempts"] == 2, rec
        assert rec["output"] == {"echo": {"n": i, "sleep_s": 3.0}}
        assert "signal 9 (SIGKILL)" in rec["lost_reason"], rec
        assert [e["status"] for e in statuses(settings, rec["id"])] == [
            "queued",
            "running",
            "queued",
            "running",
            "succeeded",
        ]
    assert worker.proc.poll() is None  # the worker lives on, with a fresh model process
    assert model_pid(worker) != pid
    # The killed process's messages were never acked: the broker hands them out again
    # after its visibility timeout. Such late deliveries run nothing a third time.
    registry = load_registry(settings.registry)
    app = make_celery(settings, registry)
    for rec in recs:
        enqueue_job(app, settings, registry.get("echo-kill"), rec["id"], Priority.NORMAL, None)
    for rec in recs:
        line = f"job {rec['id']} model echo-kill: delivery dropped (done)"
        wait_for(lambda line=line: line in worker.log.read_text(), 30, what="the drop")
        assert get(client, rec["id"]) == rec
    app.close()


def rss_growth_over_200_jobs(client, settings, worker, model, body) -> tuple[int, int]:
    """Run 40 warm-up jobs then 200 more, all queued at once so the worker runs them at its
    max_concurrency; return its RSS after each block."""
    fleet = Fleet.from_url(settings.redis_url)
    pid = model_pid(worker)

    def run(n):
        ids = [submit(client, model, body(i)) for i in range(n)]
        for job_id in ids:
            assert until(client, job_id, timeout=180)["status"] == "succeeded"

    def rss_after(jobs_done):
        facts = wait_for(
            lambda: next((f for f in fleet.workers(model) if f["jobs_done"] >= jobs_done), None),
            15,
            what="the worker's facts after the jobs",
        )
        assert facts["pid"] == pid and facts["running_jobs"] == []
        return facts["memory"]["rss_bytes"]

    done = fleet.workers(model)[0]["jobs_done"]
    run(40)  # warm-up: the pool threads, connections and caches the first jobs create
    before = rss_after(done + 40)
    run(200)
    after = rss_after(done + 240)
    log.info(
        "%s: RSS %.1f MiB after warm-up, %.1f MiB after 200 more jobs (%+.2f%%)",
        model,
        before / 2**20,
        after / 2**20,
        (after / before - 1) * 100,
    )
    return before, after


def test_memory_stays_flat_over_200_jobs_under_concurrency(client, settings, workers):
    text = "conveyor " * 2_000  # each job's input and output: about 18 KB
    before, after = rss_growth_over_200_jobs(
        client, settings, workers["echo-batch"], "echo-batch", lambda i: {"text": text, "n": i}
    )
    assert after < before * 1.05, (before, after)


def test_minilm_memory_stays_flat_over_200_embeddings_under_concurrency(
    client, settings, workers, start_worker
):
    worker = start_worker(settings, "minilm", timeout=180)
    (facts,) = Fleet.from_url(settings.redis_url).workers("minilm")
    assert facts["max_concurrency"] > 1  # the backend batches concurrent jobs
    before, after = rss_growth_over_200_jobs(
        client,
        settings,
        worker,
        "minilm",
        lambda i: {"texts": [f"sentence number {i} about a {'long ' * (i % 50)}queue"] * 4},
    )
    assert after < before * 1.05, (before, after)
