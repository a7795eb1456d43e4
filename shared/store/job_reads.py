"""Reading jobs: records, the queues and leases that index them, their events and ends.

JobReads answers questions and changes nothing but housekeeping of its indexes (entries of
expired jobs dropped, a queue deadline forgotten); JobStore (shared/store/jobs.py) adds the
state machine on top of it.
"""

from __future__ import annotations

import time

import redis

from shared.jobs import JobRecord, JobStatus, Priority, now
from shared.store import keys, scripts
from shared.store.events import Entry, EventLog, StreamReader


class JobReads:
    """Job records, their queues, leases and event logs in Redis, read."""

    def __init__(self, client: redis.Redis, *, ttl_s: int) -> None:
        self.r = client
        self.ttl_s = ttl_s
        self._queued_by_priority = client.register_script(scripts.QUEUED_BY_PRIORITY)
        self.events = EventLog(client, ttl_s=ttl_s)

    def ping(self) -> bool:
        """Return True when Redis answers. :raises redis.RedisError: when it does not."""
        return bool(self.r.ping())

    def get(self, job_id: str) -> JobRecord | None:
        """Return the record, or None when unknown or expired."""
        raw = self.r.get(keys.job(job_id))
        return JobRecord.model_validate_json(raw) if raw else None

    def list(
        self, *, status: str | None = None, model: str | None = None, limit: int = 20
    ) -> list[JobRecord]:
        """Return the most recent records, newest first, filtered by status and model."""
        self.r.zremrangebyscore(keys.JOBS_INDEX, "-inf", now() - self.ttl_s)
        found: list[JobRecord] = []
        start, page = 0, max(limit * 4, 100)
        while len(found) < limit and start < 20_000:
            ids = self.r.zrevrange(keys.JOBS_INDEX, start, start + page - 1)
            if not ids:
                break
            for raw in self.r.mget([keys.job(i) for i in ids]):
                if not raw:
                    continue
                rec = JobRecord.model_validate_json(raw)
                if (status and rec.status != status) or (model and rec.model != model):
                    continue
                found.append(rec)
                if len(found) == limit:
                    break
            start += page
        return found

    def get_many(self, job_ids: list[str]) -> dict[str, JobRecord | None]:
        """Return the records of several jobs in one round trip (None when unknown or expired)."""
        raws = self.r.mget([keys.job(i) for i in job_ids]) if job_ids else []
        return {
            i: JobRecord.model_validate_json(raw) if raw else None
            for i, raw in zip(job_ids, raws, strict=True)
        }

    def queue_depth(self, model: str) -> int:
        """Return how many jobs of a model wait for a worker."""
        key = keys.queued(model)
        pipe = self.r.pipeline(transaction=False)
        pipe.zremrangebyscore(key, "-inf", now() - self.ttl_s)
        pipe.zcard(key)
        return pipe.execute()[1]

    def queue_depths(self, models: list[str]) -> dict[str, dict[Priority, int]]:
        """Return each model's queued jobs by priority, in one round trip."""
        if not models:
            return {}
        counts = self._queued_by_priority(
            keys=[keys.queued(m) for m in models],
            args=[repr(now() - self.ttl_s), keys.job("")],
        )
        order = (Priority.HIGH, Priority.NORMAL, Priority.LOW)
        return {m: dict(zip(order, c, strict=True)) for m, c in zip(models, counts, strict=True)}

    def queue_position(self, job: JobRecord) -> int | None:
        """Return the 0-based place of a queued job among its model's queued jobs."""
        if job.status != JobStatus.QUEUED:
            return None
        return self.r.zrank(keys.queued(job.model), job.id)

    def queue_deadlines_due(self, t: float) -> list[str]:
        """Return the ids of jobs whose queue_timeout_s ran out by t (queued or not by now)."""
        return self.r.zrangebyscore(keys.QUEUE_DEADLINES, "-inf", repr(t))

    def forget_queue_deadline(self, job_id: str) -> None:
        """Stop tracking a job's queue deadline (it expired, started or is gone)."""
        self.r.zrem(keys.QUEUE_DEADLINES, job_id)

    def queued_ids(self, model: str, *, before: float | None = None) -> list[str]:
        """Return the ids of a model's queued jobs, oldest first (queued before a time)."""
        if before is None:
            return self.r.zrange(keys.queued(model), 0, -1)
        return self.r.zrangebyscore(keys.queued(model), "-inf", f"({before}")

    def running_ids(self) -> list[str]:
        """Return the ids of every job some worker has claimed."""
        return self.r.zrange(keys.RUNNING, 0, -1)

    def has_lease(self, job_id: str) -> bool:
        return bool(self.r.exists(keys.lease(job_id)))

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.r.exists(keys.cancel(job_id)))

    def broker_has_messages(self, lists: list[str]) -> bool:
        """Return whether any of the broker's lists (celery_app.broker_keys) holds a message."""
        pipe = self.r.pipeline(transaction=False)
        for key in lists:
            pipe.llen(key)
        return any(pipe.execute())

    # events
    def read_events(
        self, job_id: str, after: str = "0-0", *, block_ms: int | None = None, count: int = 500
    ) -> list[Entry]:
        """Return (event_id, event, data) after an id, waiting up to block_ms for new ones."""
        return self.events.read(job_id, after, block_ms=block_ms, count=count)

    def wait(self, job_id: str, timeout_s: float, *, known: bool = False) -> JobRecord | None:
        """Block until the job ends or timeout_s passes; return the latest record.

        known=True skips the first read of the record (the caller just created the job).
        """
        deadline = time.monotonic() + timeout_s
        if not known:
            rec = self.get(job_id)
            if rec is None or rec.status.is_terminal():
                return rec  # unknown or expired, or ended already
        # The end stream gets its one entry when the job ends, so this wakes once, not on
        # every token or state change, and the record is read once, at the end.
        while (left := deadline - time.monotonic()) > 0:
            if self.events.wait_end(job_id, max(1, int(min(left, 5) * 1000))):
                break
        return self.get(job_id)

    def stream_reader(self) -> StreamReader:
        """Return a reader of many jobs' events and ends on a connection of its own."""
        return self.events.reader()
