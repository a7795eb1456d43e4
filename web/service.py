"""The job lifecycle behind every front door: validate, store media, record, enqueue,
wait, follow and cancel."""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Iterator

from shared.config import Settings
from shared.errors import (
    InvalidInput,
    ModelNotAvailable,
    NotFound,
    RateLimited,
    ServiceUnavailable,
)
from shared.inputs import parse_input
from shared.jobs import JobError, JobRecord, Webhook, new_job_id, now
from shared.payloads import PayloadStore
from shared.registry import ModelSpec, Registry, resolve_source
from shared.store.events import Entry
from shared.store.fleet import Fleet
from shared.store.job_end import JobEnd
from shared.store.jobs import JobStore, QueueFull
from shared.store.on_demand import Board, OnDemandBoard
from shared.webhooks import WebhookNotifier, check_target
from web.dispatch import Dispatcher
from web.intake import Intake
from web.job_feeds import JobFeeds
from web.protocols.jobs import WEBHOOK_EVENTS, JobRequest

log = logging.getLogger(__name__)

ONLINE_CACHE_S = 1.0
NO_WORKER = "no worker is online for model {}; the job stays queued until one starts"
STARTING = "no worker is online for model {}; conveyor up is starting one for it"


class JobService:
    """Everything the HTTP layers do with jobs (models: web/catalog.py)."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        store: JobStore,
        payloads: PayloadStore,
        dispatcher: Dispatcher,
        fleet: Fleet,
        feeds: JobFeeds,
        on_demand: OnDemandBoard | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.payloads = payloads
        self.dispatcher = dispatcher
        self.fleet = fleet
        self.feeds = feeds
        self.on_demand = on_demand
        self.webhook_hook = self._check_webhook_target
        # Jobs canceled while queued end here, so their `completed` webhook starts here too.
        self.notifier = WebhookNotifier(store, dispatcher.send_webhook, ttl_s=settings.result_ttl_s)
        self.ends = JobEnd(store, payloads, self.notifier)
        self._online: dict[str, tuple[float, bool]] = {}

    def _worker_online(self, model: str) -> bool:
        """Return whether a worker serves the model; looked up at most once a second.

        The answer only sets a job's advisory notice, so a second's lag beats two Redis
        round trips on every submit.
        """
        t = time.monotonic()
        cached = self._online.get(model)
        if cached is None or t - cached[0] > ONLINE_CACHE_S:
            cached = (t, bool(self.fleet.workers(model)))
            self._online[model] = cached
        return cached[1]

    def submit(
        self,
        req: JobRequest,
        files: dict[str, list[bytes]] | None = None,
        *,
        need_worker: bool = False,
    ) -> JobRecord:
        """Create and queue a job; with need_worker, only if a worker serves its model now.

        Routes that answer in one request pass need_worker: a job no worker will take would
        hold the client until SYNC_WAIT_S. The job API queues it regardless, with a notice.

        :raises NotFound: unknown model. :raises InvalidInput: bad task or input.
        :raises RateLimited: the model's queue is full.
        :raises ServiceUnavailable: need_worker and no worker is online for the model.
        """
        spec = self.registry.get(req.model)
        if spec is None:
            raise NotFound(
                f"model {req.model!r} is not in the registry", param="model", code="model_not_found"
            )
        task = req.task or spec.default_task()
        if task not in spec.tasks:
            raise InvalidInput(
                f"model {spec.id} does not support task {task!r} (it supports {spec.tasks})",
                param="task",
                code="unsupported_task",
            )
        webhook = self._webhook(req)
        job_id = new_job_id()
        try:
            inputs = Intake(self.payloads, job_id).process(req.input, files or {})
            parsed = parse_input(task, inputs, spec)
        except Exception:
            self.payloads.delete(job_id)
            raise
        if need_worker and not self.fleet.workers(spec.id) and not self._board().can_start(spec.id):
            self.payloads.delete(job_id)
            raise ServiceUnavailable(
                f"model {spec.id} has no worker online, so this request cannot be answered; "
                f"start one with `conveyor worker --model {spec.id}` (or `conveyor up --model "
                f"{spec.id}`), or submit to POST /v1/jobs to queue it until one starts."
                + _weights_hint(spec),
                retry_after=10,
                code="no_worker",
            )
        job = JobRecord(
            id=job_id,
            model=spec.id,
            task=task,
            created_at=now(),
            input=parsed.model_dump(mode="json", exclude_none=True),
            priority=req.priority,
            timeout_s=self._timeout(req.timeout_s, spec),
            queue_timeout_s=req.queue_timeout_s,
            webhook=webhook,
        )
        if not self._worker_online(spec.id):
            starting = self._board().can_start(spec.id)
            job.notice = (STARTING if starting else NO_WORKER).format(spec.id)
        try:
            self.store.create(job, max_queued=self.settings.max_queued_per_model)
        except QueueFull as exc:
            self.payloads.delete(job.id)
            raise RateLimited(
                f"model {spec.id} has {exc.depth} queued jobs, the limit; retry later",
                retry_after=5,
                code="queue_full",
            ) from None
        try:
            self.dispatcher.enqueue(job, spec)
        except Exception:
            self.ends.failed(
                job.id, JobError(type="enqueue_failed", message="could not queue the job")
            )
            raise
        log.info("job %s model %s task %s queued", job.id, spec.id, task)
        return job

    def _webhook(self, req: JobRequest) -> Webhook | None:
        if not req.webhook:
            return None
        hook = Webhook(url=req.webhook)
        if req.webhook_events_filter is not None:
            bad = sorted(set(req.webhook_events_filter) - set(WEBHOOK_EVENTS))
            if bad:
                raise InvalidInput(
                    f"webhook_events_filter: unknown events {bad}", param="webhook_events_filter"
                )
            hook.events = req.webhook_events_filter
        if self.webhook_hook:
            self.webhook_hook(hook)
        return hook

    def _check_webhook_target(self, hook: Webhook) -> None:
        check_target(hook.url, allow_private=self.settings.webhook_allow_private)

    def _timeout(self, timeout_s: float | None, spec: ModelSpec) -> float | None:
        """Return a job's own time limit capped by its model's (what the worker enforces)."""
        cap = spec.limits.time_limit_s or self.settings.default_time_limit_s
        return None if timeout_s is None else min(timeout_s, cap)

    def get(self, job_id: str) -> JobRecord:
        """Return a job. :raises NotFound: unknown or expired id."""
        job = self.store.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found (unknown or expired)", code="job_not_found")
        if job.queue_expired(now()):
            job = self._expire(job)
        return job

    def _expire(self, job: JobRecord) -> JobRecord:
        """Fail a job past its queue timeout now; workers' reapers do it too, when any run."""
        return self.ends.expire(job) or self.store.get(job.id) or job

    def wait(self, job_id: str, timeout_s: float, *, known: bool = False) -> JobRecord:
        """Return the job once it ends or timeout_s passes (known: just submitted here).

        :raises NotFound: unknown or expired id.
        """
        if not known:
            job = self.get(job_id)
            if job.status.is_terminal():
                return job
        self.feeds.wait_end(job_id, timeout_s)  # shares one Redis read with every other wait
        return self.get(job_id)

    def follow(self, job_id: str, after: str, idle_s: float) -> Iterator[Entry | None]:
        """Yield a job's events after an id, None after idle_s of silence, until it ends."""
        return self.feeds.follow(job_id, after, idle_s=idle_s)

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a job: at once when queued, at its next step when running."""
        job = self.store.request_cancel(job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found (unknown or expired)", code="job_not_found")
        self.ends.ended(job)  # a queued job ends here; a running one ends in its worker
        log.info("job %s model %s cancel requested (now %s)", job.id, job.model, job.status)
        return job

    def queue_position(self, job: JobRecord) -> int | None:
        """Return how many of its model's jobs wait ahead of a queued job (None if not queued)."""
        return self.store.queue_position(job)

    def _board(self) -> Board:
        """Return what `conveyor up` starts on demand (empty without `conveyor up`)."""
        return self.on_demand.read() if self.on_demand is not None else Board()

    def list(self, status: str | None, model: str | None, limit: int) -> list[JobRecord]:
        """Return recent jobs, newest first."""
        return self.store.list(status=status, model=model, limit=limit)


def _weights_hint(spec: ModelSpec) -> str:
    """Say how to get a model's weights when they are not on this machine, if that is known."""
    if spec.source.hf_repo and importlib.util.find_spec("huggingface_hub") is None:
        return ""  # a web host without the hub client cannot tell; the worker will
    try:
        resolve_source(spec)
    except ModelNotAvailable as exc:
        return f" Its weights are not on this machine: {exc.message}"
    return ""
