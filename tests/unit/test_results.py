"""The job store's state machine, on a real Redis."""

from __future__ import annotations

import threading
import time

import pytest

from shared.jobs import JobError, JobRecord, JobStatus, Priority, new_job_id, now
from shared.store import keys
from shared.store.jobs import Claim, IllegalTransition, JobStore, QueueFull, connect
from shared.store.writes import Writes
from tests.conftest import wait_for


@pytest.fixture
def store(redis_db):
    return JobStore(connect(redis_db()), ttl_s=120)


def queued(store, model="echo") -> JobRecord:
    return store.create(JobRecord(id=new_job_id(), model=model, task="echo", created_at=now()))


def test_terminal_states():
    assert {s for s in JobStatus if s.is_terminal()} == {"succeeded", "failed", "canceled"}


def test_happy_path_stamps_times_and_metrics(store):
    job = queued(store)
    assert store.queue_depth("echo") == 1
    assert store.claim(job.id, "w1", lease_s=5, max_deliveries=3) == Claim.RUN
    assert store.queue_depth("echo") == 0
    running = store.get(job.id)
    assert running.status == "running" and running.attempts == 1 and running.started_at
    done = store.mark_succeeded(job.id, {"echo": {}}, {"prompt_tokens": 3})
    assert done.status == "succeeded" and done.completed_at >= done.started_at
    assert done.metrics.prompt_tokens == 3 and done.metrics.run_seconds is not None
    assert not store.has_lease(job.id) and job.id not in store.running_ids()


@pytest.mark.parametrize("finish", ["succeeded", "failed", "canceled"])
def test_terminal_states_are_final(store, finish):
    job = queued(store)
    store.claim(job.id, "w1", lease_s=5, max_deliveries=3)
    {
        "succeeded": lambda: store.mark_succeeded(job.id, {}),
        "failed": lambda: store.mark_failed(job.id, JobError(type="x", message="y")),
        "canceled": lambda: store.mark_canceled(job.id),
    }[finish]()
    with pytest.raises(IllegalTransition):
        store.mark_succeeded(job.id, {"late": True})
    with pytest.raises(IllegalTransition):
        store.mark_failed(job.id, JobError(type="x", message="late"))
    with pytest.raises(IllegalTransition):
        store.mark_canceled(job.id)
    assert store.claim(job.id, "w2", lease_s=5, max_deliveries=3) == Claim.DONE
    assert store.requeue(job.id) is False
    assert store.get(job.id).status == finish


def test_claim_refuses_a_job_under_a_live_lease(store):
    job = queued(store)
    assert store.claim(job.id, "w1", lease_s=5, max_deliveries=3) == Claim.RUN
    assert store.claim(job.id, "w2", lease_s=5, max_deliveries=3) == Claim.DUPLICATE
    assert store.get(job.id).attempts == 1


def test_lapsed_lease_is_requeued_once_then_lost(store):
    job = queued(store)
    for attempt in (1, 2):
        worker = f"w{attempt}"
        assert store.claim(job.id, worker, lease_s=30, max_deliveries=2) == Claim.RUN
        assert store.requeue(job.id) is False  # lease still live
        # Its worker's last renewal was a short one, and then it died: the lease lapses.
        assert store.renew_lease(job.id, worker, 0.01) is True
        wait_for(lambda: not store.has_lease(job.id), 5, interval=0.01, what="the lease to lapse")
        assert store.requeue(job.id) is True
        assert store.requeue(job.id) is False  # a second reaper does nothing
        assert store.get(job.id).status == "queued"
    assert store.claim(job.id, "w3", lease_s=1, max_deliveries=2) == Claim.LOST
    rec = store.get(job.id)
    assert rec.status == "failed" and rec.error.type == "worker_lost" and rec.attempts == 2


def test_renew_only_own_lease(store):
    job = queued(store)
    store.claim(job.id, "w1", lease_s=30, max_deliveries=3)

    def lease_ms() -> int:
        return store.r.pttl(keys.lease(job.id))

    assert store.renew_lease(job.id, "w2", 60) is False
    assert lease_ms() <= 30_000  # untouched by another worker
    assert store.renew_lease(job.id, "w1", 60) is True
    assert lease_ms() > 30_000


def test_cancel_queued_is_immediate_running_is_flagged(store):
    a, b = queued(store), queued(store)
    assert store.request_cancel(a.id).status == "canceled"
    store.claim(b.id, "w1", lease_s=5, max_deliveries=3)
    assert store.request_cancel(b.id).status == "running"
    assert store.cancel_requested(b.id)
    assert store.request_cancel("missing") is None


def test_events_replay_in_order_and_wait_wakes_on_end(store):
    job = queued(store)
    store.claim(job.id, "w1", lease_s=5, max_deliveries=3)
    for i in range(3):
        store.add_event(job.id, "token", {"index": i, "text": str(i)})
    store.mark_succeeded(job.id, {"text": "012"})
    events = store.read_events(job.id)
    kinds = [(e[1], e[2].get("status") or e[2].get("text")) for e in events]
    assert kinds == [
        ("status", "queued"),
        ("status", "running"),
        ("token", "0"),
        ("token", "1"),
        ("token", "2"),
        ("status", "succeeded"),
    ]
    after_second = events[1][0]
    assert [e[2].get("text") for e in store.read_events(job.id, after_second)][:1] == ["0"]
    t0 = time.monotonic()
    assert store.wait(job.id, 5).status == "succeeded"
    assert time.monotonic() - t0 < 1


def test_records_expire_with_the_ttl(redis_db):
    store = JobStore(connect(redis_db()), ttl_s=1)
    job = queued(store)
    store.add_event(job.id, "token", {"text": "x"})
    assert store.r.ttl(keys.job(job.id)) <= 1
    assert 0 < store.r.ttl(keys.events(job.id)) <= 1
    wait_for(lambda: store.get(job.id) is None, 10, what="the record to expire")


def test_list_filters_newest_first(store):
    jobs = [queued(store, model=m) for m in ("a", "b", "a")]
    store.claim(jobs[2].id, "w", lease_s=5, max_deliveries=3)
    assert [j.id for j in store.list(model="a")] == [jobs[2].id, jobs[0].id]
    assert [j.id for j in store.list(status="queued", model="a")] == [jobs[0].id]
    assert len(store.list(limit=1)) == 1


def test_backend_specific_metrics_are_kept(store):
    job = queued(store)
    store.claim(job.id, "w1", lease_s=5, max_deliveries=3)
    store.mark_succeeded(job.id, {"text": ""}, {"completion_tokens": 2, "frames_decoded": 16})
    metrics = store.get(job.id).metrics.model_dump()
    assert metrics["frames_decoded"] == 16 and metrics["completion_tokens"] == 2


# Concurrency: every state change is a compare-and-set; these race real clients.


def _race(n, fn):
    """Run fn(i) in n threads started together; return their results (or exceptions)."""
    barrier, results = threading.Barrier(n), [None] * n

    def run(i):
        barrier.wait()
        try:
            results[i] = fn(i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_racing_claims_let_exactly_one_worker_run(redis_db):
    url = redis_db()
    job = queued(JobStore(connect(url), ttl_s=120))
    stores = [JobStore(connect(url), ttl_s=120) for _ in range(8)]
    claims = _race(8, lambda i: stores[i].claim(job.id, f"w{i}", lease_s=5, max_deliveries=3))
    assert sorted(claims) == sorted([Claim.RUN] + [Claim.DUPLICATE] * 7)
    rec = stores[0].get(job.id)
    assert rec.attempts == 1 and rec.status == "running"


def test_racing_finishes_end_a_job_once(redis_db):
    url = redis_db()
    store = JobStore(connect(url), ttl_s=120)
    job = queued(store)
    store.claim(job.id, "w1", lease_s=5, max_deliveries=3)
    stores = [JobStore(connect(url), ttl_s=120) for _ in range(6)]
    ends = [
        lambda s: s.mark_succeeded(job.id, {"n": 1}),
        lambda s: s.mark_canceled(job.id),
        lambda s: s.mark_failed(job.id, JobError(type="x", message="y")),
    ] * 2
    results = _race(6, lambda i: ends[i](stores[i]))
    winners = [r for r in results if isinstance(r, JobRecord)]
    assert len(winners) == 1
    assert all(isinstance(r, IllegalTransition) for r in results if r not in winners)
    terminal = [e for e in store.read_events(job.id) if e[2].get("status") == winners[0].status]
    assert len(terminal) == 1 and store.get(job.id).status == winners[0].status


def test_a_record_changed_between_read_and_write_is_read_again(store):
    job = queued(store)
    calls = []

    def tag(rec):
        calls.append(rec.notice)
        if len(calls) == 1:  # another client changes the record while this one decides
            store.set_notice(job.id, "changed meanwhile")
        rec.priority = Priority.HIGH
        return True

    rec = store.update(job.id, tag)
    assert calls == [None, "changed meanwhile"]
    assert rec.notice == "changed meanwhile" and rec.priority == Priority.HIGH
    assert store.get(job.id).notice == "changed meanwhile"


def test_a_lease_that_appears_between_read_and_write_is_seen(store):
    job = queued(store)
    store.claim(job.id, "w1", lease_s=5, max_deliveries=3)
    store.r.delete(keys.lease(job.id))  # the lease lapsed: the job can be requeued
    real_get = store.r.mget

    def mget_then_lease(*names):
        found = real_get(*names)
        store.r.set(keys.lease(job.id), "w1", px=5000)  # ...but the worker renews it
        store.r.mget = real_get
        return found

    store.r.mget = mget_then_lease
    assert store.requeue(job.id) is False
    assert store.get(job.id).status == "running"


def test_queue_limit_holds_under_racing_submits(redis_db):
    url = redis_db()
    stores = [JobStore(connect(url), ttl_s=120) for _ in range(10)]
    jobs = [
        JobRecord(id=new_job_id(), model="echo", task="echo", created_at=now()) for _ in range(10)
    ]
    results = _race(10, lambda i: stores[i].create(jobs[i], max_queued=3))
    assert sum(isinstance(r, JobRecord) for r in results) == 3
    assert all(
        isinstance(r, QueueFull) and r.depth == 3 for r in results if not isinstance(r, JobRecord)
    )
    assert stores[0].queue_depth("echo") == 3
    created = {r.id for r in results if isinstance(r, JobRecord)}
    assert {j.id for j in jobs if stores[0].get(j.id)} == created


def test_the_reaper_reads_only_jobs_whose_queue_deadline_is_due(store):
    from shared.config import Settings
    from shared.registry import load_registry
    from workers.reaper import Reaper

    t0 = now()
    late = JobRecord(
        id=new_job_id(), model="echo", task="echo", created_at=t0 - 5, queue_timeout_s=1
    )
    started = JobRecord(  # claimed in time; its deadline falls due while it runs
        id=new_job_id(), model="echo", task="echo", created_at=t0 - 0.5, queue_timeout_s=1
    )
    patient = JobRecord(
        id=new_job_id(), model="echo", task="echo", created_at=t0, queue_timeout_s=600
    )
    plain = JobRecord(id=new_job_id(), model="echo", task="echo", created_at=t0 - 5)
    for job in (late, started, patient, plain):
        store.create(job)
    assert store.claim(started.id, "w", lease_s=30, max_deliveries=3) == Claim.RUN
    wait_for(lambda: now() > t0 + 0.6, 5, interval=0.05, what="the started job's deadline")
    t0 = now()
    # Only jobs created with a queue_timeout_s are tracked, and only the due ones are read.
    assert sorted(store.queue_deadlines_due(t0)) == sorted([late.id, started.id])
    settings = Settings()
    reaper = Reaper(store, load_registry(settings.registry), None, settings)
    assert reaper.expire_queued() == [late.id]
    assert store.get(late.id).error.type == "expired"
    assert store.get(started.id).status == JobStatus.RUNNING
    assert store.get(plain.id).status == JobStatus.QUEUED  # no queue timeout: never expires
    assert store.queue_deadlines_due(t0 + 3600) == [patient.id]  # the rest were forgotten


def test_writes_record_commands_as_redis_runs_them(redis_db):
    # The compare-and-set script runs the recorded words as they are: the same words must
    # do what redis-py's own methods do.
    client = connect(redis_db())
    writes = Writes()
    writes.set("k", "v", px=60_000)
    writes.zadd("z", {"a": 1.5})
    writes.xadd("s", {"event": "status"}, maxlen=10, approximate=True)
    assert writes.as_args()[:5] == [3, 5, "SET", "k", "v"]
    args = writes.as_args()[1:]
    while args:
        n, words, args = args[0], args[1 : 1 + args[0]], args[1 + args[0] :]
        assert len(words) == n
        client.execute_command(*words)
    assert client.get("k") == "v" and 0 < client.pttl("k") <= 60_000
    assert client.zscore("z", "a") == 1.5 and client.xlen("s") == 1
