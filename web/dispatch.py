"""The only web module that talks to Celery: send jobs by task name and queue."""

from __future__ import annotations

import logging

from kombu.exceptions import OperationalError

from shared.celery_app import enqueue_job, enqueue_webhook, make_celery
from shared.config import Settings
from shared.errors import ServiceUnavailable
from shared.jobs import JobRecord
from shared.registry import ModelSpec, Registry

log = logging.getLogger(__name__)


class Dispatcher:
    """Send run_job messages; the web never imports workers."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.app = make_celery(settings, registry)

    def enqueue(self, job: JobRecord, spec: ModelSpec) -> None:
        """Queue a job on its model's queue.

        :raises ServiceUnavailable: when the broker cannot be reached.
        """
        try:
            enqueue_job(self.app, self.settings, spec, job.id, job.priority, job.timeout_s)
        except OperationalError as exc:
            log.error("job %s model %s: broker unavailable: %s", job.id, job.model, exc)
            raise ServiceUnavailable(f"the job broker is unavailable: {exc}") from exc

    def send_webhook(self, msg_id: str) -> None:
        """Queue the delivery of one webhook event (its body is already frozen in Redis).

        :raises OperationalError: when the broker cannot be reached.
        """
        enqueue_webhook(self.app, msg_id)
