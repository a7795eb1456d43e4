"""The job store: job records, their state machine and event log, in Redis."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import redis

from shared.jobs import TERMINAL, JobError, JobRecord, JobStatus, Priority, now
from shared.metrics import store as metrics
from shared.store import scripts
from shared.store.event_buffer import Event, EventBuffer

log = logging.getLogger(__name__)

PREFIX = "conveyor"
EVENTS_MAXLEN = 200_000


class QueueFull(Exception):
    """The model already has as many queued jobs as allowed."""

    def __init__(self, depth: int) -> None:
        super().__init__(f"{depth} jobs queued")
        self.depth = depth


class Claim(StrEnum):
    """What a worker should do with a delivered job."""

    RUN = "run"
    DUPLICATE = "duplicate"  # another worker holds a live lease on it
    DONE = "done"  # terminal already (or expired): drop the message
    LOST = "lost"  # delivered too often; failed as worker_lost
    EXPIRED = "expired"  # no worker started it within its queue_timeout_s; failed as expired


class IllegalTransition(Exception):
    """A state change the job's current state does not allow."""


def connect(url: str, *, pool_size: int | None = None, **kwargs) -> redis.Redis:
    """Return a Redis client that fails fast when the server is unreachable.

    pool_size bounds its connections: a caller past it waits for a free one (up to 10 s),
    as the web tier's thousands of concurrent requests must, instead of failing at once.
    """
    kwargs.setdefault("socket_connect_timeout", 3)
    # redis-py 8 reads with a 5 s timeout by default, which kills every blocking XREAD of
    # 5 s or more (job waits, event-stream heartbeats); stay well above the longest block.
    kwargs.setdefault("socket_timeout", 60)
    kwargs.setdefault("health_check_interval", 30)
    if pool_size is None:
        return redis.Redis.from_url(url, decode_responses=True, **kwargs)
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=pool_size, timeout=10, decode_responses=True, **kwargs
    )
    return redis.Redis(connection_pool=pool)


class JobStore:
    """Job records in Redis; every state change goes through a mark_* method."""

    def __init__(self, client: redis.Redis, *, ttl_s: int) -> None:
        self.r = client
        self.ttl_s = ttl_s
        self._renew = client.register_script(scripts.RENEW)
        self._create = client.register_script(scripts.CREATE)
        self._commit = client.register_script(scripts.COMMIT)
        self._queued_by_priority = client.register_script(scripts.QUEUED_BY_PRIORITY)
        self._batch = EventBuffer(self._write_events)

    # keys
    @staticmethod
    def job_key(job_id: str) -> str:
        return f"{PREFIX}:job:{job_id}"

    @staticmethod
    def events_key(job_id: str) -> str:
        return f"{PREFIX}:events:{job_id}"

    @staticmethod
    def end_key(job_id: str) -> str:
        """A stream that gets one entry when the job ends: what wait() blocks on."""
        return f"{PREFIX}:end:{job_id}"

    @staticmethod
    def lease_key(job_id: str) -> str:
        return f"{PREFIX}:lease:{job_id}"

    @staticmethod
    def cancel_key(job_id: str) -> str:
        return f"{PREFIX}:cancel:{job_id}"

    @staticmethod
    def queued_key(model: str) -> str:
        return f"{PREFIX}:queued:{model}"

    RUNNING_KEY = f"{PREFIX}:running"
    # Jobs with a queue_timeout_s, by the time it runs out: the reaper reads only due ones.
    QUEUE_DEADLINES_KEY = f"{PREFIX}:queue_deadlines"
    INDEX_KEY = f"{PREFIX}:jobs"

    # reads
    def get(self, job_id: str) -> JobRecord | None:
        """Return the record, or None when unknown or expired."""
        raw = self.r.get(self.job_key(job_id))
        return JobRecord.model_validate_json(raw) if raw else None

    def list(
        self, *, status: str | None = None, model: str | None = None, limit: int = 20
    ) -> list[JobRecord]:
        """Return the most recent records, newest first, filtered by status and model."""
        self.r.zremrangebyscore(self.INDEX_KEY, "-inf", now() - self.ttl_s)
        found: list[JobRecord] = []
        start, page = 0, max(limit * 4, 100)
        while len(found) < limit and start < 20_000:
            ids = self.r.zrevrange(self.INDEX_KEY, start, start + page - 1)
            if not ids:
                break
            for raw in self.r.mget([self.job_key(i) for i in ids]):
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
        raws = self.r.mget([self.job_key(i) for i in job_ids]) if job_ids else []
        return {
            i: JobRecord.model_validate_json(raw) if raw else None
            for i, raw in zip(job_ids, raws, strict=True)
        }

    def queue_depth(self, model: str) -> int:
        """Return how many jobs of a model wait for a worker."""
        key = self.queued_key(model)
        pipe = self.r.pipeline(transaction=False)
        pipe.zremrangebyscore(key, "-inf", now() - self.ttl_s)
        pipe.zcard(key)
        return pipe.execute()[1]

    def queue_depths(self, models: list[str]) -> dict[str, dict[Priority, int]]:
        """Return each model's queued jobs by priority, in one round trip."""
        if not models:
            return {}
        counts = self._queued_by_priority(
            keys=[self.queued_key(m) for m in models],
            args=[repr(now() - self.ttl_s), self.job_key("")],
        )
        order = (Priority.HIGH, Priority.NORMAL, Priority.LOW)
        return {m: dict(zip(order, c, strict=True)) for m, c in zip(models, counts, strict=True)}

    def queue_position(self, job: JobRecord) -> int | None:
        """Return the 0-based place of a queued job among its model's queued jobs."""
        if job.status != JobStatus.QUEUED:
            return None
        return self.r.zrank(self.queued_key(job.model), job.id)

    def queue_deadlines_due(self, t: float) -> list[str]:
        """Return the ids of jobs whose queue_timeout_s ran out by t (queued or not by now)."""
        return self.r.zrangebyscore(self.QUEUE_DEADLINES_KEY, "-inf", repr(t))

    def forget_queue_deadline(self, job_id: str) -> None:
        """Stop tracking a job's queue deadline (it expired, started or is gone)."""
        self.r.zrem(self.QUEUE_DEADLINES_KEY, job_id)

    def queued_ids(self, model: str, *, before: float | None = None) -> list[str]:
        """Return the ids of a model's queued jobs, oldest first (queued before a time)."""
        if before is None:
            return self.r.zrange(self.queued_key(model), 0, -1)
        return self.r.zrangebyscore(self.queued_key(model), "-inf", f"({before}")

    def running_ids(self) -> list[str]:
        """Return the ids of every job some worker has claimed."""
        return self.r.zrange(self.RUNNING_KEY, 0, -1)

    def has_lease(self, job_id: str) -> bool:
        return bool(self.r.exists(self.lease_key(job_id)))

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.r.exists(self.cancel_key(job_id)))

    # writes
    def create(self, job: JobRecord, *, max_queued: int = 0) -> JobRecord:
        """Store a new queued job and log its first event, in one round trip.

        :raises QueueFull: when max_queued > 0 and the model has that many queued jobs.
        """
        first = {"status": job.status.value, "at": job.created_at}
        created, depth = self._create(
            keys=[
                self.job_key(job.id),
                self.INDEX_KEY,
                self.queued_key(job.model),
                self.events_key(job.id),
                metrics.METRICS_KEY,
                self.QUEUE_DEADLINES_KEY,
            ],
            args=[
                job.model_dump_json(),
                self.ttl_s,
                repr(job.created_at),
                job.id,
                max_queued,
                repr(now() - self.ttl_s),
                json.dumps(first),
                EVENTS_MAXLEN,
                metrics.submitted_field(job.model, job.task),
                metrics.rejected_field(job.model, job.task, "queue_full"),
                "" if job.queue_timeout_s is None else repr(job.created_at + job.queue_timeout_s),
            ],
        )
        if created == 0:
            raise QueueFull(depth)
        if created < 0:
            raise ValueError(f"job {job.id} exists already")
        return job

    def claim(self, job_id: str, worker: str, *, lease_s: float, max_deliveries: int) -> Claim:
        """Take a delivered job for a worker: start it, or say why not."""
        return self.claim_job(job_id, worker, lease_s=lease_s, max_deliveries=max_deliveries)[0]

    def claim_job(
        self, job_id: str, worker: str, *, lease_s: float, max_deliveries: int
    ) -> tuple[Claim, JobRecord | None]:
        """Like claim(), and also return the record as the claim left it."""
        outcome: Claim = Claim.DONE

        def apply(rec: JobRecord, leased: bool) -> JobRecord | None:
            nonlocal outcome
            if rec.status.is_terminal():
                outcome = Claim.DONE
                return None
            if rec.status == JobStatus.RUNNING and leased:
                outcome = Claim.DUPLICATE
                return None
            if rec.queue_expired(now()):
                outcome = Claim.EXPIRED
                return self._terminal(rec, JobStatus.FAILED, error=rec.expired_error())
            if rec.attempts >= max_deliveries:
                outcome = Claim.LOST
                return self._terminal(
                    rec,
                    JobStatus.FAILED,
                    error=JobError(
                        type="worker_lost",
                        message=f"the worker running this job was lost {rec.attempts} times"
                        + (f"; last: {rec.lost_reason}" if rec.lost_reason else ""),
                    ),
                )
            outcome = Claim.RUN
            t = now()
            rec.status = JobStatus.RUNNING
            rec.attempts += 1
            rec.started_at = t
            rec.notice = None
            if rec.metrics.queue_seconds is None:
                rec.metrics.queue_seconds = round(t - rec.created_at, 6)
            return rec

        def extra(rec: JobRecord, pipe) -> None:
            if outcome == Claim.RUN:
                pipe.set(self.lease_key(job_id), worker, px=int(lease_s * 1000))
                pipe.zadd(self.RUNNING_KEY, {job_id: now()})
                self._event(
                    pipe,
                    job_id,
                    "status",
                    {
                        "status": "running",
                        "attempt": rec.attempts,
                        "worker": worker,
                    },
                )
            else:  # LOST or EXPIRED
                pipe.zrem(self.RUNNING_KEY, job_id)
                self._event(
                    pipe,
                    job_id,
                    "status",
                    {
                        "status": "failed",
                        "at": rec.completed_at,
                        "error": rec.error.model_dump(),
                    },
                )

        record = self._update(job_id, apply, extra)
        return outcome, record

    def renew_lease(self, job_id: str, worker: str, lease_s: float) -> bool:
        """Extend our lease on a running job; False when it is no longer ours."""
        return bool(self._renew(keys=[self.lease_key(job_id)], args=[worker, int(lease_s * 1000)]))

    def requeue(self, job_id: str) -> bool:
        """Put a running job whose lease expired back to queued; True if this call did it."""
        done = False

        def apply(rec: JobRecord, leased: bool) -> JobRecord | None:
            nonlocal done
            done = False  # apply runs again when the record changed under it
            if rec.status != JobStatus.RUNNING or leased:
                return None
            done = True
            rec.status = JobStatus.QUEUED
            cause = f" ({rec.lost_reason})" if rec.lost_reason else ""
            rec.notice = f"worker lost during attempt {rec.attempts}{cause}; queued again"
            return rec

        def extra(rec: JobRecord, pipe) -> None:
            if done:
                pipe.zadd(self.queued_key(rec.model), {job_id: rec.created_at})
                self._event(pipe, job_id, "status", {"status": "queued", "requeued": True})

        found = self._update(job_id, apply, extra)
        if found is None:  # vanished or expired: forget it
            self.r.zrem(self.RUNNING_KEY, job_id)
        return done

    def mark_succeeded(
        self, job_id: str, output: dict[str, Any], metrics: dict[str, Any] | None = None
    ) -> JobRecord:
        """Finish a job with its output.

        :raises IllegalTransition: when the job already ended.
        """
        return self._finish(job_id, JobStatus.SUCCEEDED, output=output, metrics=metrics)

    def mark_failed(
        self,
        job_id: str,
        error: JobError,
        *,
        output: dict | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> JobRecord:
        """Fail a job with {type, message}.

        :raises IllegalTransition: when the job already ended.
        """
        return self._finish(job_id, JobStatus.FAILED, output=output, error=error, metrics=metrics)

    def mark_canceled(
        self, job_id: str, *, output: dict | None = None, metrics: dict[str, Any] | None = None
    ) -> JobRecord:
        """End a job as canceled, keeping any partial output.

        :raises IllegalTransition: when the job already ended.
        """
        return self._finish(job_id, JobStatus.CANCELED, output=output, metrics=metrics)

    def request_cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a queued job now, or flag a running one to stop at its next step."""
        self.r.set(self.cancel_key(job_id), "1", ex=self.ttl_s)
        rec = self.get(job_id)
        if rec is None or rec.status.is_terminal():
            return rec
        if rec.status == JobStatus.QUEUED:
            try:
                return self.mark_canceled(job_id)
            except IllegalTransition:
                rec = self.get(job_id)  # a worker claimed it meanwhile: the flag stops it
        return rec

    def note_loss(self, job_id: str, reason: str) -> None:
        """Record why the worker running a live job was lost (it is requeued as usual)."""

        def apply(rec: JobRecord, leased: bool) -> JobRecord | None:
            if rec.status.is_terminal():
                return None
            rec.lost_reason = reason
            return rec

        self._update(job_id, apply)

    def set_notice(self, job_id: str, notice: str | None) -> None:
        """Attach a human note to a live job (e.g. no worker online)."""

        def apply(rec: JobRecord, leased: bool) -> JobRecord | None:
            if rec.status.is_terminal() or rec.notice == notice:
                return None
            rec.notice = notice
            return rec

        self._update(job_id, apply)

    def update(self, job_id: str, fn: Callable[[JobRecord], bool]) -> JobRecord | None:
        """Apply fn to a record atomically; fn returns True when it changed something."""
        return self._update(job_id, lambda rec, _leased: rec if fn(rec) else None)

    # events
    def add_event(
        self, job_id: str, event: str, data: dict[str, Any], *, batched: bool = False
    ) -> str | None:
        """Append an event (token delta, progress, webhook...) to the job's log.

        batched=True may hold it a few milliseconds to write it with the next ones (a
        generation loop then waits on Redis once per batch, not per token) and returns
        None; every later state change and unbatched event of this store comes after it.
        """
        if batched:
            self._batch.add(job_id, event, data)
            return None
        self.flush_events()
        pipe = self.r.pipeline(transaction=False)
        self._event(pipe, job_id, event, data)
        return pipe.execute()[0]

    def flush_events(self) -> None:
        """Write the events held back by add_event(batched=True) now."""
        self._batch.flush()

    def _write_events(self, events: list[Event]) -> None:
        pipe = self.r.pipeline(transaction=False)
        for job_id, event, data in events:
            self._event(pipe, job_id, event, data)
        pipe.execute()

    def read_events(
        self, job_id: str, after: str = "0-0", *, block_ms: int | None = None, count: int = 500
    ) -> list[tuple[str, str, dict]]:
        """Return (event_id, event, data) after an id, waiting up to block_ms for new ones."""
        resp = self.r.xread({self.events_key(job_id): after}, count=count, block=block_ms)
        out = []
        for _stream, entries in resp or []:
            for eid, fields in entries:
                out.append((eid, fields.get("event", "message"), json.loads(fields["data"])))
        return out

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
        key = self.end_key(job_id)
        while (left := deadline - time.monotonic()) > 0:
            if self.r.xread({key: "0-0"}, count=1, block=max(1, int(min(left, 5) * 1000))):
                break
        return self.get(job_id)

    def stream_reader(self) -> StreamReader:
        """Return a reader of many jobs' events and ends on a connection of its own."""
        return StreamReader(self)

    # internals
    def _event(self, pipe, job_id: str, event: str, data: dict[str, Any]) -> None:
        key = self.events_key(job_id)
        pipe.xadd(
            key, {"event": event, "data": json.dumps(data)}, maxlen=EVENTS_MAXLEN, approximate=True
        )
        pipe.expire(key, self.ttl_s)
        if event == "status" and data.get("status") in TERMINAL:
            end = self.end_key(job_id)
            pipe.xadd(end, {"status": data["status"]}, maxlen=1)
            pipe.expire(end, self.ttl_s)

    def _terminal(self, rec: JobRecord, status: JobStatus, **fields) -> JobRecord:
        t = now()
        rec.status = status
        rec.completed_at = t
        for name, value in fields.items():
            setattr(rec, name, value)
        if rec.started_at is not None and rec.metrics.run_seconds is None:
            rec.metrics.run_seconds = round(t - rec.started_at, 6)
        return rec

    def _finish(
        self, job_id: str, status: JobStatus, *, output=None, error=None, metrics=None
    ) -> JobRecord:
        state = {}

        def apply(rec: JobRecord, leased: bool) -> JobRecord | None:
            if rec.status.is_terminal():
                state["from"] = rec.status
                return None
            if metrics:
                rec.metrics = rec.metrics.model_copy(update=metrics)
            fields = {"error": error}
            if output is not None:
                fields["output"] = output
            return self._terminal(rec, status, **fields)

        def extra(rec: JobRecord, pipe) -> None:
            pipe.zrem(self.queued_key(rec.model), job_id)
            pipe.zrem(self.RUNNING_KEY, job_id)
            pipe.delete(self.lease_key(job_id))
            payload = {"status": status.value, "at": rec.completed_at}
            if error is not None:
                payload["error"] = error.model_dump()
            self._event(pipe, job_id, "status", payload)

        rec = self._update(job_id, apply, extra)
        if rec is None:
            raise IllegalTransition(f"job {job_id} is gone")
        if "from" in state:
            raise IllegalTransition(f"job {job_id} already {state['from'].value}")
        return rec

    def _update(self, job_id: str, apply, extra=None) -> JobRecord | None:
        """Read-modify-write a record; return the latest record or None when it is gone.

        apply(record, leased) returns the new record, or None to leave it as it is;
        extra(new, pipe) queues more commands, written with the record. The write is a
        compare-and-set: it happens only if the record and whether a lease exists are
        what apply() saw, else the record is read again (as WATCH would, in two round
        trips instead of three).
        """
        self.flush_events()  # a job's token events land before the status they lead to
        key, lease_key = self.job_key(job_id), self.lease_key(job_id)
        while True:
            # One read for the record and whether a worker holds a lease on it.
            raw, lease = self.r.mget(key, lease_key)
            if not raw:
                return None
            rec = JobRecord.model_validate_json(raw)
            was_terminal = rec.status.is_terminal()
            new = apply(rec, lease is not None)
            if new is None:
                return rec
            writes = self.r.pipeline(transaction=False)  # collects commands, never executed
            writes.set(key, new.model_dump_json(), keepttl=True)
            if new.status != JobStatus.QUEUED:
                writes.zrem(self.queued_key(new.model), job_id)
            if extra:
                extra(new, writes)
            if new.status.is_terminal() and not was_terminal:
                # Counted in the same compare-and-set: once per job, whichever path ends it.
                metrics.MetricsStore.queue(writes, metrics.job_end_writes(new))
            args: list = [raw, int(lease is not None), len(writes.command_stack)]
            for command, _options in writes.command_stack:
                args += [len(command), *command]
            writes.reset()
            if self._commit(keys=[key, lease_key], args=args):
                return new


class StreamReader:
    """Blocking reads of many jobs' event logs and end streams in one command.

    It holds one connection of its own, so a web process follows every job its clients
    wait on with one blocked XREAD, not one per client. interrupt(), from another thread,
    wakes a blocked read so that a job added since joins the next one at once.
    """

    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._r: redis.Redis | None = None  # connected at the first read, not at start-up
        self._client_id: int | None = None

    def _client(self) -> redis.Redis:
        if self._r is None:
            pool = self._store.r.connection_pool
            self._r = redis.Redis(
                connection_pool=redis.ConnectionPool(
                    connection_class=pool.connection_class, **pool.connection_kwargs
                ),
                single_connection_client=True,
            )
        return self._r

    def read(
        self, events: dict[str, str], ends: list[str], *, block_ms: int, count: int = 500
    ) -> tuple[dict[str, list[tuple[str, str, dict]]], set[str]]:
        """Wait up to block_ms for events after each job's id, or the end of the jobs in ends.

        Return the new events by job id and the ids of the jobs in ends that ended.
        :raises redis.RedisError: when Redis cannot be reached (the next read reconnects).
        """
        streams = {self._store.events_key(j): after for j, after in events.items()}
        streams.update({self._store.end_key(j): "0-0" for j in ends})
        if not streams:
            return {}, set()
        try:
            client = self._client()
            if self._client_id is None:
                self._client_id = client.client_id()
            resp = client.xread(streams, count=count, block=block_ms)
        except redis.RedisError:
            self._client_id = None
            raise
        found: dict[str, list[tuple[str, str, dict]]] = {}
        ended: set[str] = set()
        for key, entries in resp or []:
            kind, _, job_id = key.removeprefix(f"{PREFIX}:").partition(":")
            if kind == "end":
                ended.add(job_id)
                continue
            found[job_id] = [
                (eid, fields.get("event", "message"), json.loads(fields["data"]))
                for eid, fields in entries
            ]
        return found, ended

    def interrupt(self) -> bool:
        """Wake a read blocked now; False when none was (or the connection is not up yet)."""
        if self._client_id is None:
            return False
        return bool(self._store.r.client_unblock(self._client_id))

    def close(self) -> None:
        if self._r is not None:
            self._r.close()
