"""The native job API's bodies: the submit request, the job as clients see it, lists, and the
error envelope every conveyor route answers failures with."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.errors import ConveyorError
from shared.jobs import JobRecord, Priority

WEBHOOK_EVENTS = ("start", "output", "completed")


class JobRequest(BaseModel):
    """The body of POST /v1/jobs (multipart: its `request` part), and what every front door
    translates its requests into."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="Registry id or alias of the model.")
    task: str | None = Field(None, description="Left out: the first task the model lists.")
    input: dict[str, Any] = Field(
        default_factory=dict,
        description="The task's input (README 'Tasks'); media as base64 or data: URLs.",
    )
    webhook: str | None = Field(None, max_length=2048, description="URL told of the job's events.")
    webhook_events_filter: list[str] | None = Field(
        None, description="Which of the events start, output, completed to send (default all)."
    )
    priority: Priority = Priority.NORMAL
    timeout_s: float | None = Field(None, gt=0, le=86_400, description="Time limit once running.")
    queue_timeout_s: float | None = Field(
        None, gt=0, le=86_400, description="Fail as `expired` if no worker starts it by then."
    )


class JobUrls(BaseModel):
    get: str
    cancel: str
    events: str


class JobView(JobRecord):
    """One job as GET /v1/jobs lists it: the record and its URLs."""

    urls: JobUrls

    @classmethod
    def of(cls, job: JobRecord, base_url: str = "") -> JobView:
        """Return a job record with its URLs under base_url."""
        path = f"{base_url}/v1/jobs/{job.id}"
        urls = JobUrls(get=path, cancel=f"{path}/cancel", events=f"{path}/events")
        return cls(**dict(job), urls=urls)


class JobDetail(JobView):
    """One job as submit, get and cancel answer it: with its place in the queue."""

    queue_position: int | None = Field(
        None, description="Jobs of its model ahead of it while queued; null otherwise."
    )

    @classmethod
    def of_queued(cls, job: JobRecord, base_url: str, queue_position: int | None) -> JobDetail:
        """Return a job record with its URLs and queue position."""
        return cls(**dict(JobView.of(job, base_url)), queue_position=queue_position)


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobView]


class ErrorDetail(BaseModel):
    type: str = Field(description="What kind of failure: invalid_input, not_found, ...")
    message: str
    param: str | None = Field(None, description="The request field at fault, when one is.")
    code: str | None = Field(None, description="A finer, stable reason: model_not_found, ...")


class ErrorEnvelope(BaseModel):
    """The body of every conveyor error answer."""

    error: ErrorDetail

    @classmethod
    def of(cls, exc: ConveyorError) -> ErrorEnvelope:
        """Return the envelope of a conveyor error."""
        return cls(
            error=ErrorDetail(type=exc.type, message=exc.message, param=exc.param, code=exc.code)
        )
