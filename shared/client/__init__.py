"""A Python client for conveyor's job API: submit, get, wait, cancel, events, run.

    from pathlib import Path
    from shared.client import Client

    with Client("http://127.0.0.1:8000") as client:
        job = client.run("smollm2-135m", {"prompt": "What is the capital of France?"})
        print(job.output["text"])
        job = client.submit("echo", {"image": Path("photo.jpg")})  # sent as a file part
        for event in client.events(job.id):
            print(event.event, event.data)

Errors the server answers with raise APIError subclasses carrying the error envelope;
run() and wait() raise JobFailedError, JobCanceledError or JobTimeoutError.

The client is sdk.py, its errors errors.py, the event-stream parser sse.py.
"""

from shared.client.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    BadRequestError,
    ConveyorClientError,
    InternalServerError,
    InvalidInputError,
    JobCanceledError,
    JobFailedError,
    JobOutcomeError,
    JobTimeoutError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    ServiceUnavailableError,
    UnsupportedMediaTypeError,
)
from shared.client.sdk import Client, Job, raise_for_outcome
from shared.client.sse import Event, is_terminal_event, parse_sse

__all__ = [
    "APIConnectionError",
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConveyorClientError",
    "Event",
    "InternalServerError",
    "InvalidInputError",
    "Job",
    "JobCanceledError",
    "JobFailedError",
    "JobOutcomeError",
    "JobTimeoutError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RateLimitError",
    "ServiceUnavailableError",
    "UnsupportedMediaTypeError",
    "is_terminal_event",
    "parse_sse",
    "raise_for_outcome",
]
