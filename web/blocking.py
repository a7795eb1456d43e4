"""Answer in one request: hold it until the job ends, and turn how it ended into errors.

The OpenAI-compatible routes and the seed servers' routes answer with the result itself,
not a job record; the job still goes through the queue like any other.
"""

from __future__ import annotations

import logging

from shared.client.errors import NO_RETRY, JobCanceledError, JobFailedError
from shared.errors import ConveyorError
from shared.jobs import JobRecord, JobStatus
from web.service import JobService

log = logging.getLogger(__name__)


def _headers(job: JobRecord) -> dict[str, str]:
    return {**NO_RETRY, **job.headers()}


class JobWaitTimeout(ConveyorError):
    """The job did not end within the time a request may be held."""

    status_code = 504
    type = "timeout"

    def __init__(self, job: JobRecord, wait_s: float) -> None:
        super().__init__(
            f"job {job.id} did not finish within {wait_s:g} s (it was "
            f"{job.status.value}); it has been canceled",
            code="timeout",
            headers=_headers(job),
        )
        self.job = job


def settle(jobs: JobService, job: JobRecord, wait_s: float) -> JobRecord:
    """Wait for a submitted job to end and return it when it succeeded.

    :raises JobFailedError: it failed. :raises JobCanceledError: it was canceled.
    :raises JobWaitTimeout: it did not end within wait_s (it is canceled then).
    """
    job = jobs.wait(job.id, wait_s, known=True)
    if not job.status.is_terminal():
        log.warning("job %s model %s: no answer within %gs; canceling", job.id, job.model, wait_s)
        error = JobWaitTimeout(job, wait_s)
        jobs.cancel(job.id)
        raise error
    if job.status == JobStatus.FAILED:
        raise JobFailedError(job)
    if job.status == JobStatus.CANCELED:
        raise JobCanceledError(job)
    return job
