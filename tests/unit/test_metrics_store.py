"""Counting a job's submit and end inside the result store's own writes, on a real Redis,
and the collector's exposition of what was counted."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shared.config import Settings
from shared.jobs import JobError, JobRecord, Priority, new_job_id, now
from shared.metrics.collector import EXPOSED, FleetCollector
from shared.metrics.store import (
    QUEUE_BUCKETS,
    RUN_BUCKETS,
    MetricsStore,
    bucket_bound,
    http_writes,
)
from shared.registry import load_registry
from shared.store import keys
from shared.store.fleet import Fleet
from shared.store.jobs import IllegalTransition, JobStore, QueueFull, connect


@pytest.fixture
def store(redis_db):
    return JobStore(connect(redis_db()), ttl_s=120)


def scrape(store: JobStore, fleet: Fleet | None = None) -> dict[tuple[str, tuple], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        FleetCollector(
            MetricsStore(store.r),
            store,
            fleet or Fleet(store.r),
            load_registry(Settings().registry),
        )
    )
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def new(store, model="echo", task="echo", **fields) -> JobRecord:
    fields.setdefault("created_at", now())
    return store.create(JobRecord(id=new_job_id(), model=model, task=task, **fields))


def finished(samples, **labels) -> float:
    return value(samples, "conveyor_jobs_finished_total", **{"error_type": "", **labels})


def test_bucket_bounds():
    assert bucket_bound(QUEUE_BUCKETS, 0.0) == "0.005"
    assert bucket_bound(QUEUE_BUCKETS, 0.005) == "0.005"  # le: the bound itself belongs in
    assert bucket_bound(QUEUE_BUCKETS, 0.0051) == "0.01"
    assert bucket_bound(RUN_BUCKETS, 10_000) == "+Inf"


def test_a_job_is_counted_once_whichever_path_ends_it(store):
    job = new(store)
    store.claim(job.id, "w1", lease_s=5, max_deliveries=3)
    store.mark_succeeded(
        job.id,
        {"echo": {}},
        {
            "completion_tokens": 7,
            "prompt_tokens": 3,
            "tokens_per_second": 70.0,
            "time_to_first_token_seconds": 0.02,
        },
    )
    with pytest.raises(IllegalTransition):
        store.mark_failed(job.id, JobError(type="late", message="a second end"))
    with pytest.raises(IllegalTransition):
        store.mark_canceled(job.id)
    s = scrape(store)
    assert value(s, "conveyor_jobs_submitted_total", model="echo", task="echo") == 1
    assert finished(s, model="echo", task="echo", status="succeeded") == 1
    assert (
        value(
            s,
            "conveyor_jobs_finished_total",
            model="echo",
            task="echo",
            status="failed",
            error_type="late",
        )
        == 0
    )
    assert finished(s, model="echo", task="echo", status="canceled") == 0
    assert value(s, "conveyor_generated_tokens_total", model="echo") == 7
    assert value(s, "conveyor_prompt_tokens_total", model="echo") == 3
    assert value(s, "conveyor_job_run_seconds_count", model="echo") == 1
    assert (
        value(s, "conveyor_job_time_to_first_token_seconds_bucket", model="echo", le="0.025") == 1
    )
    assert value(s, "conveyor_job_tokens_per_second_sum", model="echo") == 70.0


def test_racing_ends_count_one(store):
    jobs = [new(store) for _ in range(20)]
    for job in jobs:
        store.claim(job.id, "w1", lease_s=5, max_deliveries=3)

    def end(how):
        for job in jobs:
            try:
                if how == "cancel":
                    store.mark_canceled(job.id)
                else:
                    store.mark_succeeded(job.id, {})
            except IllegalTransition:
                pass

    threads = [threading.Thread(target=end, args=(h,)) for h in ("cancel", "succeed") * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = scrape(store)
    ended = finished(s, model="echo", task="echo", status="succeeded") + finished(
        s, model="echo", task="echo", status="canceled"
    )
    assert ended == 20
    assert value(s, "conveyor_job_run_seconds_count", model="echo") == 20


def test_reaper_and_claim_failures_are_counted_with_their_error_type(store):
    lost = new(store)
    for _ in range(2):
        store.claim(lost.id, "w1", lease_s=0.001, max_deliveries=2)
        store.r.delete(keys.lease(lost.id))
        store.requeue(lost.id)
    store.claim(lost.id, "w2", lease_s=5, max_deliveries=2)  # delivered too often: failed
    expired = new(store, queue_timeout_s=1, created_at=now() - 2)
    store.claim(expired.id, "w1", lease_s=5, max_deliveries=3)
    canceled = new(store)
    store.request_cancel(canceled.id)
    s = scrape(store)
    for error_type in ("worker_lost", "expired"):
        assert (
            value(
                s,
                "conveyor_jobs_finished_total",
                model="echo",
                task="echo",
                status="failed",
                error_type=error_type,
            )
            == 1
        ), error_type
    assert finished(s, model="echo", task="echo", status="canceled") == 1
    # Queue wait is counted once per job that ever started, at its end.
    assert value(s, "conveyor_job_queue_wait_seconds_count", model="echo") == 1
    assert value(s, "conveyor_jobs_submitted_total", model="echo", task="echo") == 3


def test_queue_depth_by_priority_and_refused_submits(store):
    for priority in (Priority.HIGH, Priority.LOW, Priority.LOW):
        new(
            store,
            model="minilm",
            task="embed",
            priority=priority,
            input={"text": '"priority":"high"'},
        )  # the record's own field counts, not input's
    with pytest.raises(QueueFull):
        store.create(
            JobRecord(id=new_job_id(), model="minilm", task="embed", created_at=now()), max_queued=3
        )
    s = scrape(store)
    depth = {
        p: value(s, "conveyor_queue_depth", model="minilm", priority=p)
        for p in ("high", "normal", "low")
    }
    assert depth == {"high": 1, "normal": 0, "low": 2}
    assert value(s, "conveyor_jobs_submitted_total", model="minilm", task="embed") == 3
    assert (
        value(s, "conveyor_jobs_rejected_total", model="minilm", task="embed", reason="queue_full")
        == 1
    )


def test_http_and_workers(store):
    metrics = MetricsStore(store.r)
    metrics.add(
        [*http_writes("/v1/jobs", "POST", 202, 0.004), *http_writes("/v1/jobs", "POST", 202, 0.3)]
    )
    fleet = Fleet(store.r)
    fleet.publish(
        "echo@h:1",
        {
            "worker": "echo@h:1",
            "model": "echo",
            "current_job": "x",
            "memory": {"rss_bytes": 123, "cuda": {"allocated_bytes": 5, "reserved_bytes": 8}},
        },
    )
    fleet.publish(
        "webhooks@h:2",
        {"worker": "webhooks@h:2", "model": None, "role": "webhooks", "memory": {"rss_bytes": 99}},
    )
    s = scrape(store, fleet)
    assert (
        value(s, "conveyor_http_requests_total", route="/v1/jobs", method="POST", status="202") == 2
    )
    assert (
        value(
            s,
            "conveyor_http_request_duration_seconds_bucket",
            route="/v1/jobs",
            method="POST",
            le="0.005",
        )
        == 1
    )
    assert (
        value(
            s,
            "conveyor_http_request_duration_seconds_bucket",
            route="/v1/jobs",
            method="POST",
            le="+Inf",
        )
        == 2
    )
    assert value(
        s, "conveyor_http_request_duration_seconds_sum", route="/v1/jobs", method="POST"
    ) == pytest.approx(0.304)
    labels = {"worker": "echo@h:1", "model": "echo"}
    assert value(s, "conveyor_worker_rss_bytes", **labels) == 123
    assert value(s, "conveyor_worker_cuda_allocated_bytes", **labels) == 5
    assert value(s, "conveyor_worker_cuda_reserved_bytes", **labels) == 8
    assert value(s, "conveyor_worker_running_jobs", **labels) == 1
    assert value(s, "conveyor_workers_online", model="echo") == 1
    assert value(s, "conveyor_workers_online", model="minilm") == 0
    assert value(s, "conveyor_webhook_workers_online") == 1
    assert value(s, "conveyor_worker_rss_bytes", worker="webhooks@h:2", model="") == 99
    assert {name for name, _ in s} <= set(EXPOSED)


def test_a_scrape_without_redis_says_so(redis_server):
    dead = JobStore(connect("redis://127.0.0.1:1/0", socket_connect_timeout=0.5), ttl_s=60)
    s = scrape(dead)
    assert s == {("conveyor_redis_up", ()): 0.0}
