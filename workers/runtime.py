"""One worker process's runtime: load the backend once, run jobs, clean up after each."""

from __future__ import annotations

import gc
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from shared.celery_app import (
    COOPERATIVE_GRACE_S,
    enqueue_webhook,
    job_deadline_s,
    make_celery,
)
from shared.config import Settings
from shared.errors import JobFailure
from shared.inputs import parse_input
from shared.jobs import JobError, JobRecord, now
from shared.payloads import PayloadStore
from shared.registry import ModelSpec, Registry
from shared.store.fleet import COMMANDS_CHANNEL, Fleet
from shared.store.jobs import Claim, IllegalTransition, JobStore, connect
from shared.webhooks import WebhookNotifier
from workers.backends import backend_class
from workers.backends.base import Backend, JobContext, Result
from workers.memory import is_out_of_memory, memory_stats, release_memory

log = logging.getLogger(__name__)

HEARTBEAT_S = 3.0
# After a job, facts are published at once unless they were less than this long ago; then
# the heartbeat thread publishes them this much later, so a burst of short jobs costs a
# few writes a second instead of one per job.
PUBLISH_EVERY_S = 0.25
OOM_EXIT_AFTER = 3  # consecutive out-of-memory failures before the process asks to be replaced


class WorkerRuntime:
    """Everything one pool process needs to run jobs for its model."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        spec: ModelSpec,
        send_webhook: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.spec = spec
        self.worker_id = f"{spec.id}@{socket.gethostname()}:{os.getpid()}"
        self.store = JobStore(connect(settings.redis_url), ttl_s=settings.result_ttl_s)
        self.payloads = PayloadStore(settings.payload_location, max_bytes=settings.max_media_bytes)
        self.fleet = Fleet(self.store.r)
        if send_webhook is None:
            send_webhook = partial(enqueue_webhook, make_celery(settings, registry))
        self.notifier = WebhookNotifier(self.store.r, send_webhook, ttl_s=settings.result_ttl_s)
        self.backend: Backend = backend_class(spec.backend)(spec, settings)
        self.jobs_done = 0
        self.current_job: str | None = None
        self.consecutive_oom = 0
        self.should_exit = False
        self.started_at = time.time()
        self.stop = threading.Event()
        self._leased: str | None = None
        self._published_at = 0.0
        self._unpublished = threading.Event()

    # lifecycle
    def start(self) -> None:
        """Load the model and start publishing this worker's heartbeat."""
        t0 = time.perf_counter()
        self.backend.load()
        # What is alive now (imports, Celery, the model) lives as long as the process. Freeze
        # it so the gc.collect() after every job scans only what jobs allocated: a full pass
        # over all of it cost 50-90 ms per job, more than an echo job's whole round trip.
        gc.collect()
        gc.freeze()
        self.load_seconds = round(time.perf_counter() - t0, 3)
        log.info(
            "worker %s model %s loaded in %.2fs", self.worker_id, self.spec.id, self.load_seconds
        )
        self.publish()
        threading.Thread(target=self._heartbeat, name="conveyor-heartbeat", daemon=True).start()
        threading.Thread(target=self._listen, name="conveyor-commands", daemon=True).start()
        threading.Thread(target=self._renew_leases, name="conveyor-lease", daemon=True).start()

    def shutdown(self) -> None:
        self.stop.set()
        self.fleet.remove(self.worker_id)
        self.backend.close()

    def facts(self) -> dict[str, Any]:
        """Return what this worker publishes about itself."""
        return {
            "worker": self.worker_id,
            "model": self.spec.id,
            "backend": self.spec.backend,
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "loaded": self.backend.loaded,
            "jobs_done": self.jobs_done,
            "current_job": self.current_job,
            "started_at": self.started_at,
            "load_seconds": getattr(self, "load_seconds", None),
            "memory": memory_stats(),
            "health": self.backend.health(),
            "at": time.time(),
        }

    def publish(self) -> None:
        self._published_at = time.monotonic()
        self.fleet.publish(self.worker_id, self.facts())

    def _publish_after_job(self) -> None:
        if time.monotonic() - self._published_at >= PUBLISH_EVERY_S:
            self.publish()
        else:
            self._unpublished.set()

    def _heartbeat(self) -> None:
        while not self.stop.is_set():
            if self._unpublished.wait(HEARTBEAT_S):
                self._unpublished.clear()
                self.stop.wait(PUBLISH_EVERY_S)
            if self.stop.is_set():
                return
            try:
                self.publish()
            except Exception:  # Redis blips must not kill the heartbeat
                log.warning("worker %s heartbeat failed", self.worker_id, exc_info=True)

    def _listen(self) -> None:
        """Obey operator commands broadcast to every worker (e.g. clean memory now)."""
        while not self.stop.is_set():
            try:
                pubsub = self.store.r.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(COMMANDS_CHANNEL)
                for message in pubsub.listen():
                    if self.stop.is_set():
                        return
                    command = json.loads(message["data"]).get("command")
                    if command == "cleanup":
                        log.info("worker %s: cleanup requested by an operator", self.worker_id)
                        self.backend.cleanup()
                        release_memory()
                        self.publish()
            except Exception:  # reconnect after Redis blips
                log.warning("worker %s command listener failed", self.worker_id, exc_info=True)
                self.stop.wait(1.0)

    @contextmanager
    def _lease(self, job_id: str):
        """Keep renewing this worker's lease on a job while it runs."""
        self._leased = job_id
        try:
            yield
        finally:
            self._leased = None

    def _renew_leases(self) -> None:
        # One thread for the process's life: starting a thread per job cost up to a
        # millisecond of every job's latency on a busy machine.
        while not self.stop.wait(self.settings.lease_s / 3):
            job_id = self._leased
            if job_id is None:
                continue
            try:
                self.store.renew_lease(job_id, self.worker_id, self.settings.lease_s)
            except Exception:
                log.warning("job %s lease renewal failed", job_id, exc_info=True)

    # jobs
    def execute(self, job_id: str, soft_limit_s: float | None = None) -> str:
        """Run one delivered job through the result store; return what happened."""
        claim, job = self.store.claim_job(
            job_id,
            self.worker_id,
            lease_s=self.settings.lease_s,
            max_deliveries=self.settings.max_deliveries,
        )
        if claim != Claim.RUN:
            log.info("job %s model %s: delivery dropped (%s)", job_id, self.spec.id, claim)
            if claim in (Claim.DONE, Claim.LOST, Claim.EXPIRED):
                self.payloads.delete(job_id)
                self.notifier.ended(job)
            return claim.value
        self.notifier.started(job)
        self.current_job = job_id
        log.info("job %s model %s: running (attempt %s)", job_id, job.model, job.attempts)
        try:
            with self._lease(job_id):
                status = self._run(job, soft_limit_s)
        finally:
            self.notifier.forget(job_id)
            self.current_job = None
            self.jobs_done += 1
            release_memory()
            self._publish_after_job()
        return status

    def _run(self, job: JobRecord, soft_limit_s: float | None) -> str:
        limit = job_deadline_s(self.spec, self.settings, job.timeout_s)
        if soft_limit_s:  # Celery's soft limit sits COOPERATIVE_GRACE_S past the deadline
            limit = min(limit, max(0.1, soft_limit_s - COOPERATIVE_GRACE_S))
        ctx = JobContext(
            job.id,
            read_media=self.payloads.read,
            media_path=self.payloads.local_path,
            emit=self._emitter(job),
            stop_requested=lambda: self.store.cancel_requested(job.id),
            deadline=time.monotonic() + limit if limit else None,
            check_interval_s=self.settings.cancel_check_interval_s,
        )
        try:
            result = self._attempt(job, ctx)
        except SoftTimeLimitExceeded:
            return self._fail(job, "timeout", f"the job ran past its {limit:g} s time limit")
        except JobFailure as exc:
            return self._fail(job, exc.type, exc.message)
        except Exception as exc:
            if is_out_of_memory(exc):
                return self._oom(job, exc)
            log.exception("job %s model %s failed", job.id, job.model)
            return self._fail(job, "internal_error", f"{type(exc).__name__}: {exc}")
        finally:
            self.payloads.delete(job.id)
        self.consecutive_oom = 0
        return self._finish(job, ctx, result)

    def _emitter(self, job: JobRecord) -> Callable[[str, dict], None]:
        """Return the backend's emit: log the event, and feed `output` webhooks."""
        parts: list[str] = []

        def emit(event: str, data: dict) -> None:
            self.store.add_event(job.id, event, data, batched=True)
            if event == "token":
                if not parts:  # the time to first token, from submit, as the client sees it
                    job.metrics.time_to_first_token_seconds = round(now() - job.created_at, 6)
                parts.append(data.get("text", ""))
            if event in ("token", "progress"):
                self.notifier.output(
                    job, lambda: {"text": "".join(parts)} if parts else {event: data}
                )

        return emit

    def _attempt(self, job: JobRecord, ctx: JobContext) -> Result:
        return self.backend.run(job.task, parse_input(job.task, job.input, self.spec), ctx)

    def _finish(self, job: JobRecord, ctx: JobContext, result: Result) -> str:
        if job.metrics.time_to_first_token_seconds is not None:
            result.metrics.setdefault(
                "time_to_first_token_seconds", job.metrics.time_to_first_token_seconds
            )
        try:
            if ctx.canceled:
                rec = self.store.mark_canceled(job.id, output=result.output, metrics=result.metrics)
                status = "canceled"
            elif ctx.timed_out:
                rec = self.store.mark_failed(
                    job.id,
                    JobError(type="timeout", message="the job ran past its time limit"),
                    output=result.output,
                    metrics=result.metrics,
                )
                status = "timeout"
            else:
                rec = self.store.mark_succeeded(job.id, result.output, result.metrics)
                status = "succeeded"
        except IllegalTransition as exc:
            log.info("job %s ended elsewhere first: %s", job.id, exc)
            return "done"
        self.notifier.ended(rec)
        log.info("job %s model %s: %s", job.id, job.model, status)
        return status

    def _fail(self, job: JobRecord, type_: str, message: str) -> str:
        try:
            rec = self.store.mark_failed(job.id, JobError(type=type_, message=message))
        except IllegalTransition as exc:
            log.info("job %s ended elsewhere first: %s", job.id, exc)
            return "done"
        self.notifier.ended(rec)
        log.warning("job %s model %s failed: %s: %s", job.id, job.model, type_, message)
        return "failed"

    def _oom(self, job: JobRecord, exc: BaseException) -> str:
        self.consecutive_oom += 1
        release_memory()
        if self.consecutive_oom >= OOM_EXIT_AFTER:
            self.should_exit = True
        return self._fail(job, "out_of_memory", f"out of memory: {exc}")
