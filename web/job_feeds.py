"""One reader per web process for every job its clients follow or wait on.

A client that streams a job's events, or waits for a job to end, costs no Redis
connection and no Redis command of its own: one background reader blocks on every
followed job at once (one XREAD on one connection), keeps each job's events in memory
while it has followers, and wakes only that job's followers. Under gunicorn's gevent
worker the reader and every waiting client are greenlets; under threads they are threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis

from shared.jobs import JobStatus
from shared.store.events import Entry
from shared.store.jobs import JobStore

log = logging.getLogger(__name__)


BLOCK_S = 5.0  # longest blocked read; far below the Redis client's 60 s socket timeout
RETRY_S = 1.0  # pause after Redis could not be read; followers keep their heartbeats
# A job with no news for this long is looked up once (not once per client), so followers
# of a job whose events expired or were trimmed are told it is over.
CHECK_S = 15.0


def _event_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def _is_end(event: Entry) -> bool:
    """Return whether an event is a job's move to a terminal state."""
    if event[1] != "status":
        return False
    try:
        return JobStatus(event[2].get("status")).is_terminal()
    except ValueError:  # not a status this version knows
        return False


@dataclass(eq=False)
class _Feed:
    """A job's events as this process has read them, shared by the job's followers."""

    job_id: str
    news: threading.Condition
    events: list[Entry] = field(default_factory=list)
    after: str = "0-0"  # the last event id read
    ended: bool = False  # its terminal status was read, or the job is gone
    followers: int = 0
    heard_at: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class _End:
    """The requests of this process waiting for one job to end."""

    done: threading.Event = field(default_factory=threading.Event)
    waiters: int = 0


class JobFeeds:
    """Follow jobs' events and ends for this process's clients, with one reader."""

    def __init__(
        self, store: JobStore, *, block_s: float = BLOCK_S, check_s: float = CHECK_S
    ) -> None:
        self.store = store
        self._reader = store.stream_reader()
        self._block_ms = int(min(block_s, check_s) * 1000)  # quiet jobs are checked between
        self._check_s = check_s
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the reader sleeps here when idle
        self._feeds: dict[str, _Feed] = {}
        self._ends: dict[str, _End] = {}
        self._thread: threading.Thread | None = None
        self._round = 0  # counts the reader's reads
        self._blocked = False  # a read is out with the jobs known at its start
        self._woken = -1  # the round an interrupt was already sent for

    # followers
    def follow(self, job_id: str, after: str = "0-0", *, idle_s: float) -> Iterator[Entry | None]:
        """Yield a job's events after an id, and None after idle_s of silence.

        Ends after the job's terminal status event, or when the job is gone.
        """
        position = _event_id(after)
        feed = self._join(job_id)
        try:
            seen = 0
            while True:
                with feed.news:
                    if seen >= len(feed.events) and not feed.ended:
                        feed.news.wait(idle_s)
                    batch, ended = feed.events[seen:], feed.ended
                seen += len(batch)
                if not batch and not ended:
                    yield None
                    continue
                for event in batch:
                    if _event_id(event[0]) > position:
                        yield event
                    if _is_end(event):
                        return
                if ended and seen >= len(feed.events):
                    return
        finally:
            self._leave(feed)

    def wait_end(self, job_id: str, timeout_s: float) -> bool:
        """Block until the job ends or timeout_s passes; True when it ended."""
        with self._lock:
            end = self._ends.get(job_id)
            new = end is None
            if new:
                end = self._ends[job_id] = _End()
            end.waiters += 1
            self._start()
        if new:
            self._interrupt()
        try:
            return end.done.wait(max(0.0, timeout_s))
        finally:
            with self._lock:
                end.waiters -= 1
                if end.waiters == 0 and self._ends.get(job_id) is end:
                    del self._ends[job_id]

    def stats(self) -> dict[str, int]:
        """Return how many jobs and clients this process follows now."""
        with self._lock:
            return {
                "jobs_followed": len(self._feeds),
                "jobs_awaited": len(self._ends),
                "followers": sum(f.followers for f in self._feeds.values()),
                "waiters": sum(e.waiters for e in self._ends.values()),
                "reads": self._round,
            }

    def _join(self, job_id: str) -> _Feed:
        with self._lock:
            feed = self._feeds.get(job_id)
            new = feed is None
            if new:
                feed = self._feeds[job_id] = _Feed(job_id, threading.Condition(self._lock))
            feed.followers += 1
            self._start()
        if new:
            self._interrupt()
        return feed

    def _leave(self, feed: _Feed) -> None:
        with self._lock:
            feed.followers -= 1
            if feed.followers == 0 and self._feeds.get(feed.job_id) is feed:
                del self._feeds[feed.job_id]

    # the reader
    def _start(self) -> None:
        """Start the reader if it is not running; wake it if it sleeps. Holds the lock."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="job-feeds", daemon=True)
            self._thread.start()
        self._work.notify()

    def _interrupt(self) -> None:
        """Make a blocked read start again with the jobs added since it began."""
        with self._lock:
            if not self._blocked or self._woken == self._round:
                return  # the next read includes them, or a wake-up is on its way
            target = self._woken = self._round  # this caller wakes this read; others need not
        for _ in range(200):
            try:
                if self._reader.interrupt():
                    return
            except redis.RedisError:
                return  # the reader sees the same outage and starts over
            time.sleep(0.001)  # the read is on its way to Redis: it can be woken soon
            with self._lock:
                if self._round != target:
                    return  # it returned meanwhile; the next read includes them

    def _run(self) -> None:
        while True:
            with self._lock:
                # Sleep while nothing is left to read; ended feeds and waits whose clients
                # have not left yet are not something to read (under gevent, looping on
                # them would never yield to those clients).
                while True:
                    feeds = {j: (f, f.after) for j, f in self._feeds.items() if not f.ended}
                    ends = [j for j, e in self._ends.items() if not e.done.is_set()]
                    if feeds or ends:
                        break
                    self._work.wait()
                self._blocked = True
            try:
                events, ended = self._reader.read(
                    {j: a for j, (_f, a) in feeds.items()}, ends, block_ms=self._block_ms
                )
            except Exception as exc:  # the reader outlives any one failed read
                log.warning(
                    "job feeds: read failed (%s); retrying",
                    exc,
                    exc_info=not isinstance(exc, redis.RedisError),
                )
                events, ended = {}, set()
                time.sleep(RETRY_S)
            finally:
                with self._lock:
                    self._blocked = False
                    self._round += 1
            with self._lock:
                for job_id, batch in events.items():
                    feed, after = feeds[job_id]
                    if self._feeds.get(job_id) is feed and feed.after == after:
                        self._add(feed, batch)
                for job_id in ended:
                    end = self._ends.get(job_id)
                    if end is not None:
                        end.done.set()
            self._check_quiet([f for f, _after in feeds.values()])
            time.sleep(0)  # let the clients just woken run before the next read (gevent)

    def _add(self, feed: _Feed, batch: list[Entry]) -> None:
        """Append events to a feed and wake its followers. Holds the lock."""
        feed.events.extend(batch)
        feed.after = batch[-1][0]
        feed.heard_at = time.monotonic()
        if any(_is_end(event) for event in batch):
            feed.ended = True
        feed.news.notify_all()

    def _check_quiet(self, feeds: list[_Feed]) -> None:
        """End the feeds of quiet jobs that are gone or over, with one lookup for all."""
        limit = time.monotonic() - self._check_s
        quiet = [f for f in feeds if not f.ended and f.heard_at < limit]
        if not quiet:
            return
        try:
            records = self.store.get_many([f.job_id for f in quiet])
            for feed in quiet:
                feed.heard_at = time.monotonic()
                rec = records[feed.job_id]
                if rec is not None and not rec.status.is_terminal():
                    continue
                # Its last events may have landed since the read: take them before ending.
                late = self.store.read_events(feed.job_id, feed.after)
                with self._lock:
                    if late:
                        self._add(feed, late)
                    feed.ended = True
                    feed.news.notify_all()
        except redis.RedisError as exc:
            log.warning("job feeds: cannot look up quiet jobs (%s)", exc)
