"""The web <-> worker contract: job states and the job record."""

from __future__ import annotations

import time
import uuid
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    def is_terminal(self) -> bool:
        """Return True for states a job never leaves."""
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def celery_priority(self) -> int:
        """Return the kombu Redis priority step (0 is served first)."""
        return {"high": 0, "normal": 3, "low": 6}[self.value]


class JobError(BaseModel):
    type: str
    message: str


class JobMetrics(BaseModel):
    # Backends may report more than these (e.g. frames decoded); keep what they send.
    model_config = ConfigDict(extra="allow")

    queue_seconds: float | None = None
    run_seconds: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tokens_per_second: float | None = None
    # From submit to the first generated token, as the client saw it (queue wait included).
    time_to_first_token_seconds: float | None = None


class WebhookDelivery(BaseModel):
    """One attempt to deliver one webhook event: HTTP status, or why none came back."""

    id: str | None = None  # the webhook-id header, the same on every retry of an event
    event: str
    status: int | str  # HTTP status, or "network_error" / "refused"
    attempt: int
    at: float
    error: str | None = None


class Webhook(BaseModel):
    url: str
    events: list[str] = Field(default_factory=lambda: ["start", "output", "completed"])
    deliveries: list[WebhookDelivery] = Field(default_factory=list)


class JobRecord(BaseModel):
    """One job as stored in Redis and returned over HTTP."""

    id: str
    model: str
    task: str
    status: JobStatus = JobStatus.QUEUED
    created_at: float
    started_at: float | None = None
    completed_at: float | None = None
    input: dict[str, Any] = Field(default_factory=dict)
    output: dict[str, Any] | None = None
    error: JobError | None = None
    metrics: JobMetrics = Field(default_factory=JobMetrics)
    attempts: int = 0
    priority: Priority = Priority.NORMAL
    timeout_s: float | None = None
    queue_timeout_s: float | None = None
    webhook: Webhook | None = None
    notice: str | None = None
    # Why the last worker running this job was lost, when the worker saw it (e.g. its pool
    # process died by SIGSEGV); kept so a job that fails as worker_lost says why.
    lost_reason: str | None = None

    def queue_expired(self, t: float) -> bool:
        """Return True when no worker started this queued job within its queue_timeout_s."""
        return (
            self.status == JobStatus.QUEUED
            and self.started_at is None
            and self.queue_timeout_s is not None
            and t - self.created_at >= self.queue_timeout_s
        )

    def expired_error(self) -> JobError:
        """Return the error an expired job fails with."""
        return JobError(
            type="expired", message=f"no worker started the job within {self.queue_timeout_s:g} s"
        )

    def headers(self) -> dict[str, str]:
        """Return the response headers that name this job (gunicorn's access lines read them)."""
        return {"X-Conveyor-Job-Id": self.id, "X-Conveyor-Model": self.model}

    def public(self, base_url: str = "") -> dict[str, Any]:
        """Return the record as clients see it, with its URLs."""
        data = self.model_dump(mode="json")
        data["urls"] = {
            "get": f"{base_url}/v1/jobs/{self.id}",
            "cancel": f"{base_url}/v1/jobs/{self.id}/cancel",
            "events": f"{base_url}/v1/jobs/{self.id}/events",
        }
        return data


def new_job_id() -> str:
    """Return a fresh, URL-safe job id."""
    return uuid.uuid4().hex


def now() -> float:
    """Return the wall-clock time stamped on records."""
    return time.time()
