"""Batched job events: a few per write, in order, and always before the final status."""

from __future__ import annotations

import pytest

from shared.jobs import JobRecord, new_job_id, now
from shared.store.event_buffer import EventBuffer
from shared.store.jobs import Claim, JobStore, connect


class Clock:
    t = 100.0

    def __call__(self) -> float:
        return self.t


def test_events_wait_for_company_only_within_the_interval():
    written: list[list] = []
    clock = Clock()
    buf = EventBuffer(written.append, interval_s=0.025, clock=clock)
    buf.add("j", "token", {"i": 0})  # first event: written at once
    clock.t += 0.010
    buf.add("j", "token", {"i": 1})
    clock.t += 0.010
    buf.add("j", "token", {"i": 2})  # both held: the last write is 20 ms old
    assert [[d["i"] for _j, _e, d in b] for b in written] == [[0]]
    clock.t += 0.010
    buf.add("j", "token", {"i": 3})  # 30 ms: the held ones go out with it
    clock.t += 1.0
    buf.add("j", "token", {"i": 4})  # a slow model's token goes out alone, at once
    buf.add("j", "token", {"i": 5})
    buf.flush()
    buf.flush()  # nothing left: no empty write
    assert [[d["i"] for _j, _e, d in b] for b in written] == [[0], [1, 2, 3], [4], [5]]


def test_a_failed_write_raises_like_an_unbatched_one():
    def write(batch):
        raise ConnectionError("redis is gone")

    buf = EventBuffer(write)
    with pytest.raises(ConnectionError):
        buf.add("j", "token", {})


@pytest.fixture
def store(redis_db):
    return JobStore(connect(redis_db()), ttl_s=120)


def test_batched_tokens_land_before_the_final_status(store):
    job = store.create(JobRecord(id=new_job_id(), model="echo", task="echo", created_at=now()))
    assert store.claim(job.id, "w1", lease_s=5, max_deliveries=3) == Claim.RUN
    for i in range(300):
        assert store.add_event(job.id, "token", {"index": i}, batched=True) is None
    store.mark_succeeded(job.id, {"text": "done"})
    events = store.read_events(job.id, count=1000)
    assert [d["index"] for _id, name, d in events if name == "token"] == list(range(300))
    assert events[-1][1] == "status" and events[-1][2]["status"] == "succeeded"
