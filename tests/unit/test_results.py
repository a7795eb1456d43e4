"""The result store's state machine, on a real Redis."""

from __future__ import annotations

import time

import pytest

from shared.jobs import JobError, JobRecord, JobStatus, new_job_id, now
from shared.results import Claim, IllegalTransition, ResultStore, connect


@pytest.fixture
def store(redis_db):
    return ResultStore(connect(redis_db()), ttl_s=120)


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
    {"succeeded": lambda: store.mark_succeeded(job.id, {}),
     "failed": lambda: store.mark_failed(job.id, JobError(type="x", message="y")),
     "canceled": lambda: store.mark_canceled(job.id)}[finish]()
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
        assert store.claim(job.id, f"w{attempt}", lease_s=0.2, max_deliveries=2) == Claim.RUN
        assert store.requeue(job.id) is False  # lease still live
        time.sleep(0.3)
        assert store.requeue(job.id) is True
        assert store.requeue(job.id) is False  # a second reaper does nothing
        assert store.get(job.id).status == "queued"
    assert store.claim(job.id, "w3", lease_s=1, max_deliveries=2) == Claim.LOST
    rec = store.get(job.id)
    assert rec.status == "failed" and rec.error.type == "worker_lost" and rec.attempts == 2


def test_renew_only_own_lease(store):
    job = queued(store)
    store.claim(job.id, "w1", lease_s=0.3, max_deliveries=3)
    assert store.renew_lease(job.id, "w2", 5) is False
    assert store.renew_lease(job.id, "w1", 5) is True
    time.sleep(0.4)
    assert store.has_lease(job.id)


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
    assert kinds == [("status", "queued"), ("status", "running"), ("token", "0"),
                     ("token", "1"), ("token", "2"), ("status", "succeeded")]
    after_second = events[1][0]
    assert [e[2].get("text") for e in store.read_events(job.id, after_second)][:1] == ["0"]
    t0 = time.monotonic()
    assert store.wait(job.id, 5).status == "succeeded"
    assert time.monotonic() - t0 < 1


def test_records_expire_with_the_ttl(redis_db):
    store = ResultStore(connect(redis_db()), ttl_s=1)
    job = queued(store)
    store.add_event(job.id, "token", {"text": "x"})
    assert store.r.ttl(store.job_key(job.id)) <= 1
    assert 0 < store.r.ttl(store.events_key(job.id)) <= 1
    time.sleep(1.2)
    assert store.get(job.id) is None


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
