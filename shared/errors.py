"""Typed errors: each class owns its HTTP status and envelope type."""

from __future__ import annotations


class ConveyorError(Exception):
    """Base of every error conveyor reports to a client."""

    status_code = 500
    type = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


class BadRequest(ConveyorError):
    status_code = 400
    type = "invalid_request_error"


class Unauthorized(ConveyorError):
    status_code = 401
    type = "authentication_error"


class NotFound(ConveyorError):
    status_code = 404
    type = "not_found"


class Conflict(ConveyorError):
    status_code = 409
    type = "conflict"


class PayloadTooLarge(ConveyorError):
    status_code = 413
    type = "payload_too_large"


class UnsupportedMediaType(ConveyorError):
    status_code = 415
    type = "unsupported_media_type"


class InvalidInput(ConveyorError):
    status_code = 422
    type = "invalid_input"


class InvalidMedia(InvalidInput):
    type = "invalid_media"


class RateLimited(ConveyorError):
    status_code = 429
    type = "rate_limited"

    def __init__(self, message: str, *, retry_after: int = 1, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.headers["Retry-After"] = str(retry_after)


class ServiceUnavailable(ConveyorError):
    status_code = 503
    type = "service_unavailable"

    def __init__(self, message: str, *, retry_after: int = 2, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.headers["Retry-After"] = str(retry_after)


class ModelNotAvailable(ConveyorError):
    """The model's weights are not on disk (or cannot be fetched)."""

    status_code = 503
    type = "model_not_available"


# Failures recorded on a job by a worker: {type, message} travels as data, not as pickles.
class JobFailure(Exception):
    """A job failed for a reason worth telling the client; never retried."""

    type = "job_failed"

    def __init__(self, message: str, *, type: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if type:
            self.type = type


class MediaDecodeError(JobFailure):
    type = "invalid_media"


class InputRejected(JobFailure):
    type = "invalid_input"
