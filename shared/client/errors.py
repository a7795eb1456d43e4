"""What the client raises: the server's error envelopes as typed exceptions, and a job
that did not succeed.

JobFailedError and JobCanceledError are also what the web's one-request routes raise
(web/blocking.py): a ConveyorError too, they answer as the error envelope with the status
that says whose fault it was.
"""

from __future__ import annotations

from typing import Any

import requests

from shared.errors import ConveyorError
from shared.jobs import JobRecord


class ConveyorClientError(Exception):
    """Base of every error this client raises."""


class APIConnectionError(ConveyorClientError):
    """The server could not be reached (or the connection broke)."""


class APIError(ConveyorClientError):
    """The server answered with an error envelope {"error": {type, message, param, code}}."""

    def __init__(
        self, status_code: int, envelope: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        err = envelope.get("error") if isinstance(envelope.get("error"), dict) else {}
        self.status_code = status_code
        self.envelope = envelope
        self.type = err.get("type")
        self.message = err.get("message") or f"HTTP {status_code}"
        self.param = err.get("param")
        self.code = err.get("code")
        self.headers = headers or {}
        super().__init__(f"{status_code} {self.type}: {self.message}")


class BadRequestError(APIError):
    """400: the body is not valid JSON, or a required part is missing."""


class AuthenticationError(APIError):
    """401: missing or invalid API key."""


class NotFoundError(APIError):
    """404: unknown (or expired) job, or unknown model."""


class PayloadTooLargeError(APIError):
    """413: the request or one media item is too large."""


class UnsupportedMediaTypeError(APIError):
    """415: wrong Content-Type."""


class InvalidInputError(APIError):
    """422: a field has an invalid value, or media could not be decoded."""


class RateLimitError(APIError):
    """429: the model's queue is full; retry after `retry_after` seconds."""

    @property
    def retry_after(self) -> float | None:
        value = self.headers.get("Retry-After")
        return float(value) if value and value.replace(".", "", 1).isdigit() else None


class ServiceUnavailableError(APIError):
    """503: Redis or the broker is unavailable."""


class InternalServerError(APIError):
    """5xx other than 503."""


_BY_STATUS = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    422: InvalidInputError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def api_error(resp: requests.Response) -> APIError:
    """Return the APIError subclass for an error answer, with its envelope."""
    try:
        envelope = resp.json()
    except ValueError:
        envelope = {}
    if not isinstance(envelope, dict) or not isinstance(envelope.get("error"), dict):
        envelope = {
            "error": {
                "type": "http_error",
                "message": resp.text[:500] or resp.reason,
                "param": None,
                "code": None,
            }
        }
    cls = _BY_STATUS.get(
        resp.status_code, InternalServerError if resp.status_code >= 500 else APIError
    )
    return cls(resp.status_code, envelope, dict(resp.headers))


# How a failed job answers over HTTP: the client's fault (422), the worker's (5xx).
FAILED_STATUS = {
    "invalid_input": 422,
    "invalid_media": 422,
    "timeout": 504,
    "expired": 504,  # no worker started it within its queue_timeout_s
    "out_of_memory": 503,
    "worker_lost": 502,
}
# The queue already retried what was worth retrying; OpenAI clients obey this header.
NO_RETRY = {"x-should-retry": "false"}


class JobOutcomeError(ConveyorClientError, ConveyorError):
    """A job did not succeed; `job` is its latest record.

    Raised by Client.run() and wait(), and by the web's one-request routes, which answer
    it as an error envelope (with the job's headers and x-should-retry: false).
    """

    def __init__(self, job: JobRecord, message: str, *, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={**NO_RETRY, **job.headers()})
        self.job = job


class JobFailedError(JobOutcomeError):
    """The job ended as failed; job.error says why, and the status whose fault it was."""

    status_code = 500
    type = "job_failed"

    def __init__(self, job: JobRecord, message: str | None = None) -> None:
        error = job.error
        kind = error.type if error else "job_failed"
        if message is None:
            message = error.message if error else "the job failed"
        super().__init__(job, message, code=kind)
        self.status_code = FAILED_STATUS.get(kind, 500)
        self.type = kind if self.status_code == 422 else "job_failed"


class JobCanceledError(JobOutcomeError):
    """The job was canceled before it finished."""

    status_code = 409
    type = "job_canceled"

    def __init__(self, job: JobRecord, message: str | None = None) -> None:
        message = message or f"job {job.id} was canceled before it finished"
        super().__init__(job, message, code="job_canceled")


class JobTimeoutError(JobOutcomeError, TimeoutError):
    """The job did not end within the time the caller was willing to wait."""

    status_code = 504
    type = "timeout"

    def __init__(self, job: JobRecord, message: str) -> None:
        super().__init__(job, message, code="timeout")
