"""JobStore.wait on a real Redis: token events do not cost a record read each."""

from __future__ import annotations

import threading
import time

import pytest

from shared.jobs import JobRecord, new_job_id, now
from shared.store.jobs import Claim, JobStore, connect


class CountingStore(JobStore):
    """A result store that counts record reads."""

    gets = 0

    def get(self, job_id):
        self.gets += 1
        return super().get(job_id)


@pytest.fixture
def store(redis_db):
    return CountingStore(connect(redis_db()), ttl_s=120)


def running(store) -> JobRecord:
    job = store.create(JobRecord(id=new_job_id(), model="echo", task="echo", created_at=now()))
    assert store.claim(job.id, "w1", lease_s=5, max_deliveries=3) == Claim.RUN
    return job


def test_wait_returns_the_finished_record_without_reading_it_per_token(store):
    job = running(store)

    def generate():
        for i in range(200):
            store.add_event(job.id, "token", {"index": i, "text": "x"})
            time.sleep(0.001)
        store.mark_succeeded(job.id, {"text": "x" * 200})

    thread = threading.Thread(target=generate)
    store.gets = 0
    thread.start()
    rec = store.wait(job.id, 10)
    thread.join()
    assert rec.status == "succeeded" and rec.output == {"text": "x" * 200}
    assert store.gets <= 3


def test_wait_times_out_with_the_latest_record(store):
    job = running(store)
    store.set_notice(job.id, "still going")
    t0 = time.monotonic()
    rec = store.wait(job.id, 0.3)
    assert 0.25 < time.monotonic() - t0 < 2
    assert rec.status == "running" and rec.notice == "still going"


def test_wait_on_unknown_job(store):
    assert store.wait("nope", 1) is None
