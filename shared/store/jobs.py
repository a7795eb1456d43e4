"""The job store: job records and their state machine, in Redis.

Every state change goes through a mark_* (or claim/requeue) method, each one compare-and-set
of the record; the job's event log is shared/store/events.py, its keys shared/store/keys.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import redis

from shared.jobs import JobError, JobRecord, JobStatus, now
from shared.metrics import store as metrics
from shared.store import keys, scripts
from shared.store.connection import connect
from shared.store.events import EVENTS_MAXLEN
from shared.store.job_reads import JobReads
from shared.store.writes import Writes

__all__ = ["Claim", "IllegalTransition", "JobStore", "QueueFull", "connect"]

log = logging.getLogger(__name__)


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


class JobStore(JobReads):
    """Job records in Redis; every state change goes through a mark_* method."""

    def __init__(self, client: redis.Redis, *, ttl_s: int) -> None:
        super().__init__(client, ttl_s=ttl_s)
        self._renew = client.register_script(scripts.RENEW)
        self._create = client.register_script(scripts.CREATE)
        self._commit = client.register_script(scripts.COMMIT)

    # writes
    def create(self, job: JobRecord, *, max_queued: int = 0) -> JobRecord:
        """Store a new queued job and log its first event, in one round trip.

        :raises QueueFull: when max_queued > 0 and the model has that many queued jobs.
        """
        first = {"status": job.status.value, "at": job.created_at}
        created, depth = self._create(
            keys=[
                keys.job(job.id),
                keys.JOBS_INDEX,
                keys.queued(job.model),
                keys.events(job.id),
                keys.METRICS,
                keys.QUEUE_DEADLINES,
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
                pipe.set(keys.lease(job_id), worker, px=int(lease_s * 1000))
                pipe.zadd(keys.RUNNING, {job_id: now()})
                self.events.queue(
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
                pipe.zrem(keys.RUNNING, job_id)
                self.events.queue(
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
        return bool(self._renew(keys=[keys.lease(job_id)], args=[worker, int(lease_s * 1000)]))

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
                pipe.zadd(keys.queued(rec.model), {job_id: rec.created_at})
                self.events.queue(pipe, job_id, "status", {"status": "queued", "requeued": True})

        found = self._update(job_id, apply, extra)
        if found is None:  # vanished or expired: forget it
            self.r.zrem(keys.RUNNING, job_id)
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
        self.r.set(keys.cancel(job_id), "1", ex=self.ttl_s)
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

    # turns: once per period across the fleet, whichever process asks first
    def take_sweep_turn(self, owner: str, period_s: float) -> bool:
        """Return whether owner may sweep payloads now (no process swept within period_s)."""
        return self._take_turn(keys.SWEEP_LOCK, owner, period_s)

    def take_redelivery_turn(self, job_id: str, period_s: float) -> bool:
        """Return whether this caller may send a queued job's message again (every worker
        runs a reaper; one of them resends it, once per period_s)."""
        return self._take_turn(keys.redelivered(job_id), "1", period_s)

    def _take_turn(self, key: str, owner: str, period_s: float) -> bool:
        return bool(self.r.set(key, owner, nx=True, px=int(period_s * 1000)))

    # events
    def add_event(
        self, job_id: str, event: str, data: dict[str, Any], *, batched: bool = False
    ) -> str | None:
        """Append an event (token delta, progress, webhook...) to the job's log.

        batched=True may hold it a few milliseconds to write it with the next ones (a
        generation loop then waits on Redis once per batch, not per token) and returns
        None; every later state change and unbatched event of this store comes after it.
        """
        return self.events.add(job_id, event, data, batched=batched)

    def flush_events(self) -> None:
        """Write the events held back by add_event(batched=True) now."""
        self.events.flush()

    # internals
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
            pipe.zrem(keys.queued(rec.model), job_id)
            pipe.zrem(keys.RUNNING, job_id)
            pipe.delete(keys.lease(job_id))
            payload = {"status": status.value, "at": rec.completed_at}
            if error is not None:
                payload["error"] = error.model_dump()
            self.events.queue(pipe, job_id, "status", payload)

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
        self.events.flush()  # a job's token events land before the status they lead to
        key, lease_key = keys.job(job_id), keys.lease(job_id)
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
            writes = Writes()
            writes.set(key, new.model_dump_json(), keepttl=True)
            if new.status != JobStatus.QUEUED:
                writes.zrem(keys.queued(new.model), job_id)
            if extra:
                extra(new, writes)
            if new.status.is_terminal() and not was_terminal:
                # Counted in the same compare-and-set: once per job, whichever path ends it.
                metrics.MetricsStore.queue(writes, metrics.job_end_writes(new))
            args = [raw, int(lease is not None), *writes.as_args()]
            if self._commit(keys=[key, lease_key], args=args):
                return new
