"""The Celery app factory shared by web (to send) and workers (to consume)."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from shared.config import Settings
from shared.jobs import Priority
from shared.registry import ModelSpec, Registry

RUN_JOB = "conveyor.run_job"
DELIVER_WEBHOOK = "conveyor.deliver_webhook"
WEBHOOK_QUEUE = "webhooks"
# Time a worker has past a job's soft limit to record the failure before the hard kill.
HARD_LIMIT_GRACE_S = 15
# Time a backend has past its deadline to notice it and stop on its own, output kept.
COOPERATIVE_GRACE_S = 1.0
PRIORITY_STEPS = [0, 3, 6, 9]
PRIORITY_SEP = ":"  # kombu names a queue's priority lists <queue><sep><step>


def make_celery(settings: Settings, registry: Registry) -> Celery:
    """Build the Celery app: JSON only, late acks, one prefetch, declared queues only."""
    app = Celery("conveyor", broker=settings.redis_url, set_as_current=False)
    queues = [Queue(spec.queue) for spec in registry] + [Queue(WEBHOOK_QUEUE)]
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=queues,
        task_default_queue=WEBHOOK_QUEUE,
        task_create_missing_queues=False,
        task_time_limit=settings.default_time_limit_s + HARD_LIMIT_GRACE_S,
        task_soft_time_limit=settings.default_time_limit_s,
        # Events cost a Redis publish per state change; Flower switches workers' events on
        # by itself (enable_events) while it runs, so they stay off unless asked for.
        task_send_sent_event=settings.task_events,
        worker_send_task_events=settings.task_events,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "priority_steps": PRIORITY_STEPS,
            "sep": PRIORITY_SEP,
            "queue_order_strategy": "priority",
        },
        # Loading a model happens in worker_process_init; give it time.
        worker_proc_alive_timeout=900,
        worker_hijack_root_logger=False,
    )
    return app


def job_deadline_s(spec: ModelSpec, settings: Settings, timeout_s: float | None) -> float:
    """Return the seconds a job may run: its own timeout capped by its model's limit."""
    cap = spec.limits.time_limit_s or settings.default_time_limit_s
    return min(cap, timeout_s) if timeout_s else cap


def job_time_limits(spec: ModelSpec, settings: Settings, timeout_s: float | None) -> tuple:
    """Return Celery's (soft, hard) seconds for a job, a little past its deadline.

    The backend stops itself at the deadline and keeps its partial output; the soft limit
    is the backstop for a step that does not return, the hard limit for one that hangs.
    """
    soft = job_deadline_s(spec, settings, timeout_s) + COOPERATIVE_GRACE_S
    hard = soft + HARD_LIMIT_GRACE_S
    if hard >= settings.visibility_timeout_s:
        hard = settings.visibility_timeout_s - 1
        soft = max(1, hard - HARD_LIMIT_GRACE_S)
    return soft, hard


def broker_keys(queue: str) -> list[str]:
    """Return the Redis lists that hold a queue's messages, one per priority step.

    kombu's Redis transport keeps step 0 in the queue's own key and every other step in
    `<queue><sep><step>`.
    """
    return [queue] + [f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS if step]


def enqueue_job(
    app: Celery,
    settings: Settings,
    spec: ModelSpec,
    job_id: str,
    priority: Priority,
    timeout_s: float | None,
) -> None:
    """Send the run_job message for a job to its model's queue (ids only, never payloads)."""
    soft, hard = job_time_limits(spec, settings, timeout_s)
    app.send_task(
        RUN_JOB,
        args=[job_id],
        queue=spec.queue,
        priority=priority.celery_priority,
        soft_time_limit=soft,
        time_limit=hard,
    )


def enqueue_webhook(
    app: Celery, msg_id: str, attempt: int = 1, countdown: float | None = None
) -> None:
    """Send one webhook delivery attempt to the webhooks queue (the event's id only)."""
    app.send_task(DELIVER_WEBHOOK, args=[msg_id, attempt], queue=WEBHOOK_QUEUE, countdown=countdown)
