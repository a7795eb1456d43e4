"""JobFeeds on a real Redis: one read serves every follower and every wait of a process."""

from __future__ import annotations

import threading
import time

import pytest

from shared.jobs import JobRecord, new_job_id, now
from shared.store import keys
from shared.store.jobs import Claim, JobStore, connect
from web.job_feeds import JobFeeds


@pytest.fixture
def store(redis_db):
    return JobStore(connect(redis_db()), ttl_s=120)


def running(store) -> JobRecord:
    job = store.create(JobRecord(id=new_job_id(), model="echo", task="echo", created_at=now()))
    assert store.claim(job.id, "w1", lease_s=5, max_deliveries=3) == Claim.RUN
    return job


def connections(store) -> int:
    """Return how many clients are connected to this store's database (other tests share
    the server)."""
    db = store.r.connection_pool.connection_kwargs.get("db", 0)
    return sum(1 for c in store.r.client_list() if int(c["db"]) == db)


def collect(feeds, job_id, after="0-0", idle_s=5.0, out=None):
    out = [] if out is None else out
    for item in feeds.follow(job_id, after, idle_s=idle_s):
        if item is not None:
            out.append(item)
    return out


def test_many_followers_share_one_reader_and_see_every_event_in_order(store):
    feeds = JobFeeds(store)
    job = running(store)
    results = [[] for _ in range(200)]
    threads = [
        threading.Thread(target=collect, args=(feeds, job.id), kwargs={"out": r}) for r in results
    ]
    for t in threads:
        t.start()
    time.sleep(0.3)
    clients_while_followed = connections(store)
    for i in range(20):
        store.add_event(job.id, "token", {"index": i, "text": "x"})
    store.mark_succeeded(job.id, {"text": "x" * 20})
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    names = [(e, d.get("index", d.get("status"))) for _id, e, d in results[0]]
    assert names == [
        ("status", "queued"),
        ("status", "running"),
        *[("token", i) for i in range(20)],
        ("status", "succeeded"),
    ]
    assert all(r == results[0] for r in results)
    # 200 followers, yet this process holds: the store's pool, and the reader's connection.
    assert clients_while_followed <= 4
    assert feeds.stats()["reads"] < 50  # not one read per follower and event


def test_last_event_id_replays_what_follows_it_and_a_late_follower_ends_at_once(store):
    feeds = JobFeeds(store)
    job = running(store)
    for i in range(3):
        store.add_event(job.id, "token", {"index": i, "text": "x"})
    store.mark_succeeded(job.id, {"text": "xxx"})
    everything = collect(feeds, job.id)
    assert [e for _id, e, _d in everything][-1] == "status"
    second_token = everything[3][0]
    rest = collect(feeds, job.id, after=second_token)
    assert [d.get("index", d.get("status")) for _id, _e, d in rest] == [2, "succeeded"]
    assert collect(feeds, job.id, after=everything[-1][0]) == []


def test_heartbeats_while_quiet_then_the_end(store):
    feeds = JobFeeds(store)
    job = running(store)
    seen = []

    def follow():
        for item in feeds.follow(job.id, idle_s=0.1):
            seen.append(item)

    thread = threading.Thread(target=follow)
    thread.start()
    time.sleep(0.5)
    store.mark_succeeded(job.id, {})
    thread.join(5)
    assert seen.count(None) >= 3
    assert seen[-1][2]["status"] == "succeeded"


def test_followers_of_a_job_that_vanished_are_told_it_is_over(store):
    feeds = JobFeeds(store, check_s=0.2)
    job = running(store)
    store.r.delete(keys.job(job.id))  # as if it expired while followed
    started = time.monotonic()
    events = collect(feeds, job.id, idle_s=0.1)
    assert [d["status"] for _id, _e, d in events] == ["queued", "running"]
    assert time.monotonic() - started < 5


def test_waits_share_one_reader_and_wake_when_their_job_ends(store):
    feeds = JobFeeds(store)
    jobs = [running(store) for _ in range(30)]
    ended: dict[str, bool] = {}

    def wait(job_id):
        ended[job_id] = feeds.wait_end(job_id, 10)

    threads = [threading.Thread(target=wait, args=(j.id,)) for j in jobs]
    for t in threads:
        t.start()
    time.sleep(0.3)
    started = time.monotonic()
    for j in jobs:
        store.mark_succeeded(j.id, {})
    for t in threads:
        t.join(10)
    assert all(ended[j.id] for j in jobs)
    assert time.monotonic() - started < 5  # woken by the end, not by a timeout
    assert connections(store) <= 4
    assert feeds.wait_end(jobs[0].id, 0.1) is True  # ended before the wait began
    assert feeds.wait_end(running(store).id, 0.2) is False
