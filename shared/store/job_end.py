"""The one owner of "this job ended": mark it, drop its media, queue its webhook, count it.

Every path that ends a job goes through JobEnd: the worker runtime (success, failure,
cancel, timeout, out of memory, the hard time limit), a delivery the claim refuses (done
already, lost too often, expired in the queue), the reaper and the web service (a queued
job canceled or expired). Counting it for the metrics happens inside the store's
compare-and-set that ends the job (JobStore._update), so a job is counted once whichever
path wins.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from shared.jobs import JobError, JobRecord, now
from shared.payloads import PayloadStore
from shared.store.jobs import IllegalTransition, JobStore

log = logging.getLogger(__name__)


class Notifier(Protocol):
    """What JobEnd needs of the webhook notifier (shared.webhooks.WebhookNotifier)."""

    def ended(self, job: JobRecord | None) -> None: ...


class JobEnd:
    """End jobs in the store, then do what follows every end, once."""

    def __init__(
        self, store: JobStore, payloads: PayloadStore | None, notifier: Notifier | None
    ) -> None:
        self.store = store
        self.payloads = payloads
        self.notifier = notifier

    def succeeded(
        self, job_id: str, output: dict[str, Any], metrics: dict[str, Any] | None = None
    ) -> JobRecord | None:
        """Finish a job with its output; None when it had ended elsewhere first."""
        return self._end(job_id, lambda: self.store.mark_succeeded(job_id, output, metrics))

    def failed(
        self,
        job_id: str,
        error: JobError,
        *,
        output: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> JobRecord | None:
        """Fail a job; None when it had ended elsewhere first."""
        return self._end(
            job_id,
            lambda: self.store.mark_failed(job_id, error, output=output, metrics=metrics),
        )

    def canceled(
        self,
        job_id: str,
        *,
        output: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> JobRecord | None:
        """End a job as canceled; None when it had ended elsewhere first."""
        return self._end(
            job_id, lambda: self.store.mark_canceled(job_id, output=output, metrics=metrics)
        )

    def expire(self, job: JobRecord) -> JobRecord | None:
        """Fail a queued job past its queue_timeout_s as `expired`; None when it started in
        time, ended or is gone (the reaper and the web service both call this)."""
        if not job.queue_expired(now()):
            return None
        rec = self.failed(job.id, job.expired_error())
        if rec is not None:
            log.info(
                "job %s model %s: expired in the queue after %gs",
                job.id,
                job.model,
                job.queue_timeout_s,
            )
        return rec

    def ended(self, rec: JobRecord | None) -> None:
        """Do what follows the end of a job some other step already made terminal (a cancel
        of a queued job, a claim that failed it): drop its media, queue its webhook.

        Both are idempotent: the `completed` webhook is queued once per job (NX), and
        deleting media that is gone does nothing.
        """
        if rec is None or not rec.status.is_terminal():
            return
        if self.payloads is not None:
            self.payloads.delete(rec.id)
        if self.notifier is not None:
            self.notifier.ended(rec)

    def _end(self, job_id: str, mark) -> JobRecord | None:
        try:
            rec = mark()
        except IllegalTransition as exc:
            log.info("job %s ended elsewhere first: %s", job_id, exc)
            return None
        self.ended(rec)
        return rec
