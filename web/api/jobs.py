"""The job API: submit, get, list, cancel, wait."""

from __future__ import annotations

import re
from contextlib import nullcontext

from flask import Blueprint, request

from shared.errors import InvalidInput
from shared.jobs import JobRecord, JobStatus
from web.app_services import services
from web.bodies import submission
from web.protocols.jobs import JobDetail, JobList, JobRequest, JobView
from web.protocols.parsing import parse_model
from web.responses import json_response

bp = Blueprint("jobs", __name__)
_WAIT = re.compile(r"\bwait(?:=(\d+(?:\.\d+)?))?\b")
MAX_WAIT_S = 60.0


def _held(wait: float | None):
    """Hold a place under the process's cap while a request waits (nothing when it does not).

    :raises ServiceUnavailable: past the cap, before anything is submitted.
    """
    return services().holds.hold("wait") if wait else nullcontext()


def _base_url() -> str:
    return request.host_url.rstrip("/")


def _record(job: JobRecord, status: int = 200):
    detail = JobDetail.of_queued(job, _base_url(), services().jobs.queue_position(job))
    return json_response(detail, status, job.headers())


def prefer_wait() -> float | None:
    """Return the seconds asked for by `Prefer: wait=N` (capped at 60), or None."""
    match = _WAIT.search(request.headers.get("Prefer", ""))
    if not match:
        return None
    return min(float(match.group(1) or MAX_WAIT_S), MAX_WAIT_S)


@bp.post("/v1/jobs")
def submit():
    body, files = submission()
    wait, jobs = prefer_wait(), services().jobs
    with _held(wait):
        job = jobs.submit(parse_model(JobRequest, body), files)
        if wait:
            job = jobs.wait(job.id, wait, known=True)
    resp = _record(job, 200 if job.status.is_terminal() else 202)
    resp.headers["Location"] = f"/v1/jobs/{job.id}"
    if wait:
        resp.headers["Preference-Applied"] = f"wait={wait:g}"
    return resp


@bp.get("/v1/jobs/<job_id>")
def get(job_id: str):
    wait, jobs = prefer_wait(), services().jobs
    with _held(wait):
        return _record(jobs.wait(job_id, wait) if wait else jobs.get(job_id))


@bp.get("/v1/jobs")
def index():
    status = request.args.get("status") or None
    if status and status not in {s.value for s in JobStatus}:
        raise InvalidInput(f"status must be one of {[s.value for s in JobStatus]}", param="status")
    limit = request.args.get("limit", "20")
    if not limit.isdigit() or not 1 <= int(limit) <= 1000:
        raise InvalidInput("limit must be an integer from 1 to 1000", param="limit")
    jobs = services().jobs.list(status, request.args.get("model") or None, int(limit))
    listing = JobList(data=[JobView.of(j, _base_url()) for j in jobs])
    return json_response(listing)


@bp.post("/v1/jobs/<job_id>/cancel")
def cancel(job_id: str):
    return _record(services().jobs.cancel(job_id))
