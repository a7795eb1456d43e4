"""A worker's runtime: load the backend once, run up to max_concurrency jobs at once on it,
clean up when the batch drains."""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from shared.celery_app import (
    COOPERATIVE_GRACE_S,
    HARD_LIMIT_GRACE_S,
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
from shared.store.fleet import PUBLISH_INTERVAL_S, Fleet
from shared.store.job_end import JobEnd
from shared.store.jobs import Claim, JobStore, connect
from shared.webhooks import WebhookNotifier
from workers.backends import backend_class
from workers.backends.base import Backend, JobContext, Result
from workers.journal import EXIT_RECYCLE, Journal
from workers.memory import Releaser, is_out_of_memory, memory_stats
from workers.slots import Slot, Slots

log = logging.getLogger(__name__)

# After a job, facts are published at once unless they were less than this long ago; then
# the heartbeat thread publishes them this much later, so a burst of short jobs costs a
# few writes a second instead of one per job.
PUBLISH_EVERY_S = 0.25
OOM_EXIT_AFTER = 3  # consecutive out-of-memory failures before the process asks to be replaced
ACK_GRACE_S = 0.5  # after the last job of a recycled process, time for Celery to ack it


class WorkerRuntime:
    """Everything a worker's model process needs to run jobs for its model.

    execute() is called from up to max_concurrency Celery pool threads at once; each job
    gets its own JobContext (events, cancel, deadline), lease and time limits.
    """

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        spec: ModelSpec,
        send_webhook: Callable[[str], None] | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.spec = spec
        self.worker_id = f"{spec.id}@{socket.gethostname()}:{os.getpid()}"
        self.store = JobStore(connect(settings.redis_url), ttl_s=settings.result_ttl_s)
        self.payloads = PayloadStore(settings.payload_location, max_bytes=settings.max_media_bytes)
        self.fleet = Fleet.from_store(self.store)
        if send_webhook is None:
            send_webhook = partial(enqueue_webhook, make_celery(settings, registry))
        self.notifier = WebhookNotifier(self.store, send_webhook, ttl_s=settings.result_ttl_s)
        self.ends = JobEnd(self.store, self.payloads, self.notifier)
        self.backend: Backend = backend_class(spec.backend)(spec, settings)
        self.max_concurrency = self.backend.max_concurrency
        self.journal = journal or Journal()
        self.slots = Slots()
        self.releaser = Releaser()
        self.jobs_done = 0
        self.consecutive_oom = 0
        self.started_at = time.time()
        self.stop = threading.Event()
        self.recycling: str | None = None  # why this process is being replaced
        # Set by the process that consumes the queue: stop taking jobs, and exit.
        self.stop_consuming: Callable[[], None] = lambda: None
        self.exit: Callable[[int], None] = os._exit
        self._lock = threading.Lock()
        self._published_at = 0.0
        self._unpublished = threading.Event()

    # lifecycle
    def start(self) -> None:
        """Load the model and start publishing this worker's heartbeat."""
        t0 = time.perf_counter()
        self.backend.load()
        self.freeze_heap()
        self.load_seconds = round(time.perf_counter() - t0, 3)
        log.info(
            "worker %s model %s loaded in %.2fs (up to %s jobs at once)",
            self.worker_id,
            self.spec.id,
            self.load_seconds,
            self.max_concurrency,
        )
        self.publish()
        threading.Thread(target=self._heartbeat, name="conveyor-heartbeat", daemon=True).start()
        threading.Thread(target=self._listen, name="conveyor-commands", daemon=True).start()
        threading.Thread(target=self._renew_leases, name="conveyor-lease", daemon=True).start()
        self.slots.watch(self.stop, self._hard_limit)

    @staticmethod
    def freeze_heap() -> None:
        """Keep what is alive now out of every later gc pass.

        What is alive after load (imports, the model) and once Celery's worker is up (its
        consumer, bootsteps, kombu) lives as long as the process. Frozen, the gc.collect()
        after a batch scans only what jobs allocated: a full pass over all of it cost 50-90
        ms, and unfrozen Celery objects cut echo jobs from 580 to 70 a second.
        """
        gc.collect()
        gc.freeze()

    def shutdown(self) -> None:
        self.stop.set()
        self.fleet.remove(self.worker_id)
        self.backend.close()

    def facts(self) -> dict[str, Any]:
        """Return what this worker publishes about itself."""
        running = self.slots.live_ids()
        return {
            "worker": self.worker_id,
            "model": self.spec.id,
            "backend": self.spec.backend,
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "loaded": self.backend.loaded,
            "jobs_done": self.jobs_done,
            "current_job": running[0] if running else None,
            "running_jobs": running,
            "max_concurrency": self.max_concurrency,
            "recycling": self.recycling,
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
            if self._unpublished.wait(PUBLISH_INTERVAL_S):
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
                for message in self.fleet.commands():
                    if self.stop.is_set():
                        return
                    if message.get("command") == "cleanup":
                        log.info("worker %s: cleanup requested by an operator", self.worker_id)
                        self.backend.cleanup()
                        self.releaser.release()
                        self.publish()
            except Exception:  # reconnect after Redis blips
                log.warning("worker %s command listener failed", self.worker_id, exc_info=True)
                self.stop.wait(1.0)

    def _renew_leases(self) -> None:
        # One thread for the process's life renews every running job's lease: starting a
        # thread per job cost up to a millisecond of every job's latency on a busy machine.
        while not self.stop.wait(self.settings.lease_s / 3):
            for job_id in self.slots.live_ids():
                try:
                    renewed = self.store.renew_lease(job_id, self.worker_id, self.settings.lease_s)
                    if not renewed and job_id in self.slots.live_ids():  # else: it just ended
                        log.warning("job %s: its lease is no longer this worker's", job_id)
                except Exception:
                    log.warning("job %s lease renewal failed", job_id, exc_info=True)

    # jobs
    def execute(
        self, job_id: str, soft_limit_s: float | None = None, hard_limit_s: float | None = None
    ) -> str:
        """Run one delivered job through the job store; return what happened.

        soft_limit_s and hard_limit_s are Celery's time limits from the job's message.
        """
        claim, job = self.store.claim_job(
            job_id,
            self.worker_id,
            lease_s=self.settings.lease_s,
            max_deliveries=self.settings.max_deliveries,
        )
        if claim != Claim.RUN:
            log.info("job %s model %s: delivery dropped (%s)", job_id, self.spec.id, claim)
            if claim in (Claim.DONE, Claim.LOST, Claim.EXPIRED):
                self.ends.ended(job)
            return claim.value
        self.journal.started(job_id)
        self.notifier.started(job)
        log.info("job %s model %s: running (attempt %s)", job_id, job.model, job.attempts)
        limit = job_deadline_s(self.spec, self.settings, job.timeout_s)
        if soft_limit_s:  # Celery's soft limit sits COOPERATIVE_GRACE_S past the deadline
            limit = min(limit, max(0.1, soft_limit_s - COOPERATIVE_GRACE_S))
        soft = soft_limit_s or limit + COOPERATIVE_GRACE_S
        hard = hard_limit_s or soft + HARD_LIMIT_GRACE_S
        slot = self.slots.enter(job_id, soft, hard)
        try:
            status = self._run(job, slot, limit)
        finally:
            left = self.slots.leave(slot)
            self.notifier.forget(job_id)
            self.journal.ended(job_id)
            with self._lock:
                self.jobs_done += 1
            self._after_job(left)
        return status

    def _run(self, job: JobRecord, slot: Slot, limit: float) -> str:
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
            result = self._call_backend(job, ctx, slot)
        except SoftTimeLimitExceeded:
            return self._fail(job, "timeout", f"the job ran past its {limit:g} s time limit")
        except JobFailure as exc:
            return self._fail(job, exc.type, exc.message)
        except Exception as exc:
            if is_out_of_memory(exc):
                return self._oom(job, exc)
            log.exception("job %s model %s failed", job.id, job.model)
            return self._fail(job, "internal_error", f"{type(exc).__name__}: {exc}")
        with self._lock:
            self.consecutive_oom = 0
        return self._finish(job, ctx, result)

    def _call_backend(self, job: JobRecord, ctx: JobContext, slot: Slot) -> Result:
        # The watchdog raises SoftTimeLimitExceeded in this thread at most once, and only
        # before slots.finishing() returned: it surfaces here, inside the try of _run.
        try:
            return self.backend.run(job.task, parse_input(job.task, job.input, self.spec), ctx)
        finally:
            self.slots.finishing(slot)

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

    def _finish(self, job: JobRecord, ctx: JobContext, result: Result) -> str:
        if job.metrics.time_to_first_token_seconds is not None:
            result.metrics.setdefault(
                "time_to_first_token_seconds", job.metrics.time_to_first_token_seconds
            )
        if ctx.canceled:
            rec = self.ends.canceled(job.id, output=result.output, metrics=result.metrics)
            status = "canceled"
        elif ctx.timed_out:
            error = JobError(type="timeout", message="the job ran past its time limit")
            rec = self.ends.failed(job.id, error, output=result.output, metrics=result.metrics)
            status = "timeout"
        else:
            rec = self.ends.succeeded(job.id, result.output, result.metrics)
            status = "succeeded"
        if rec is None:
            return "done"
        log.info("job %s model %s: %s", job.id, job.model, status)
        return status

    def _fail(self, job: JobRecord, type_: str, message: str) -> str:
        if self.ends.failed(job.id, JobError(type=type_, message=message)) is None:
            return "done"
        log.warning("job %s model %s failed: %s: %s", job.id, job.model, type_, message)
        return "failed"

    def _oom(self, job: JobRecord, exc: BaseException) -> str:
        with self._lock:
            self.consecutive_oom += 1
            again = self.consecutive_oom >= OOM_EXIT_AFTER
        if again:
            self.recycle(f"{OOM_EXIT_AFTER} jobs in a row ran out of memory")
        return self._fail(job, "out_of_memory", f"out of memory: {exc}")

    def _hard_limit(self, slot: Slot) -> None:
        """A job's step outlived its hard time limit: end the job, replace the process."""
        error = JobError(
            type="timeout",
            message="a step of the job did not return within its hard time limit; "
            "its worker process was replaced",
        )
        rec = self.ends.failed(slot.job_id, error)
        if rec is not None:
            log.error("job %s model %s: %s", slot.job_id, rec.model, error.message)
        self.recycle(f"job {slot.job_id} is stuck in a step past its hard time limit")

    # memory and recycling
    def _after_job(self, left: int) -> None:
        """Clean up when the batch drained (or now and then if it never does), and
        recycle the process past its RSS ceiling."""
        self.releaser.after_job(drained=left == 0)
        ceiling = self.settings.worker_max_memory_mb
        if ceiling and memory_stats()["rss_bytes"] > ceiling * 2**20:
            self.recycle(f"its RSS is past CONVEYOR_WORKER_MAX_MEMORY_MB={ceiling}")
        self._publish_after_job()

    def recycle(self, why: str) -> None:
        """Take no new job, let the running ones finish, then exit to be replaced."""
        with self._lock:
            if self.recycling:
                return
            self.recycling = why
        log.warning("worker %s: %s; replacing it once its jobs finish", self.worker_id, why)
        try:
            self.stop_consuming()
        except Exception:
            log.warning("worker %s: could not stop consuming", self.worker_id, exc_info=True)
        threading.Thread(target=self._exit_when_drained, name="conveyor-recycle").start()

    def _exit_when_drained(self) -> None:
        if not self.slots.wait_drained(self.stop):
            return  # shutting down anyway
        time.sleep(ACK_GRACE_S)  # the last job's task returns and Celery acks its message
        log.warning("worker %s: exiting to be replaced (%s)", self.worker_id, self.recycling)
        try:
            self.store.flush_events()
            self.fleet.remove(self.worker_id)
        finally:
            self.exit(EXIT_RECYCLE)
