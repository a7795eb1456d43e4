"""Find jobs whose worker died (their lease lapsed) and queue them again."""

from __future__ import annotations

import logging
import threading

from celery import Celery

from shared.celery_app import enqueue_job
from shared.config import Settings
from shared.jobs import JobError, now
from shared.registry import Registry
from shared.results import IllegalTransition, ResultStore

log = logging.getLogger(__name__)


class Reaper:
    """Requeue lapsed jobs and expire queued jobs past their queue timeout."""

    def __init__(self, store: ResultStore, registry: Registry, app: Celery,
                 settings: Settings) -> None:
        self.store = store
        self.registry = registry
        self.app = app
        self.settings = settings

    def run_once(self) -> list[str]:
        """Requeue every running job without a live lease; return their ids."""
        requeued = []
        for job_id in self.store.running_ids():
            if self.store.has_lease(job_id):
                continue
            job = self.store.get(job_id)
            if job is None or not self.store.requeue(job_id):
                continue
            spec = self.registry.get(job.model)
            if spec is None:
                continue
            enqueue_job(self.app, self.settings, spec, job_id, job.priority, job.timeout_s)
            log.warning("job %s model %s: worker lost on attempt %s; queued again",
                        job_id, job.model, job.attempts)
            requeued.append(job_id)
        self.expire_queued()
        return requeued

    def expire_queued(self) -> list[str]:
        """Fail queued jobs that no worker started within their queue_timeout_s."""
        expired = []
        t = now()
        for spec in self.registry:
            for job_id in self.store.queued_ids(spec.id):
                job = self.store.get(job_id)
                if job is None or job.queue_timeout_s is None:
                    continue
                if t - job.created_at < job.queue_timeout_s:
                    continue
                try:
                    self.store.mark_failed(job_id, JobError(
                        type="expired",
                        message=f"no worker started the job within {job.queue_timeout_s:g} s",
                    ))
                except IllegalTransition:
                    continue
                expired.append(job_id)
        return expired

    def start(self, stop: threading.Event) -> threading.Thread:
        """Run the reaper every reaper_interval_s in a daemon thread until stop is set."""

        def loop() -> None:
            while not stop.wait(self.settings.reaper_interval_s):
                try:
                    self.run_once()
                except Exception:  # a bad pass must not kill the reaper
                    log.exception("reaper pass failed")

        thread = threading.Thread(target=loop, name="conveyor-reaper", daemon=True)
        thread.start()
        return thread
