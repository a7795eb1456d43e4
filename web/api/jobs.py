"""The job API: submit, get, list, cancel, wait."""

from __future__ import annotations

import re
from contextlib import nullcontext

from flask import Blueprint, current_app, jsonify, request

from shared.errors import InvalidInput
from shared.jobs import JobStatus
from web.bodies import submission
from web.service import parse_request

bp = Blueprint("jobs", __name__)
_WAIT = re.compile(r"\bwait(?:=(\d+(?:\.\d+)?))?\b")
MAX_WAIT_S = 60.0


def _service():
    return current_app.extensions["conveyor"].jobs


def _held(wait: float | None):
    """Hold a place under the process's cap while a request waits (nothing when it does not).

    :raises ServiceUnavailable: past the cap, before anything is submitted.
    """
    return current_app.extensions["conveyor"].holds.hold("wait") if wait else nullcontext()


def _record(job, status: int = 200):
    data = job.public(request.host_url.rstrip("/"))
    data["queue_position"] = _service().queue_position(job)
    resp = jsonify(data)
    resp.status_code = status
    resp.headers.update(job.headers())
    return resp


def prefer_wait() -> float | None:
    """Return the seconds asked for by `Prefer: wait=N` (capped at 60), or None."""
    match = _WAIT.search(request.headers.get("Prefer", ""))
    if not match:
        return None
    return min(float(match.group(1) or MAX_WAIT_S), MAX_WAIT_S)


@bp.post("/v1/jobs")
def submit():
    body, files = submission()
    wait = prefer_wait()
    with _held(wait):
        job = _service().submit(parse_request(body), files)
        if wait:
            job = _service().wait(job.id, wait, known=True)
    resp = _record(job, 200 if job.status.is_terminal() else 202)
    resp.headers["Location"] = f"/v1/jobs/{job.id}"
    if wait:
        resp.headers["Preference-Applied"] = f"wait={wait:g}"
    return resp


@bp.get("/v1/jobs/<job_id>")
def get(job_id: str):
    wait = prefer_wait()
    svc = _service()
    with _held(wait):
        return _record(svc.wait(job_id, wait) if wait else svc.get(job_id))


@bp.get("/v1/jobs")
def index():
    status = request.args.get("status") or None
    if status and status not in {s.value for s in JobStatus}:
        raise InvalidInput(f"status must be one of {[s.value for s in JobStatus]}", param="status")
    limit = request.args.get("limit", "20")
    if not limit.isdigit() or not 1 <= int(limit) <= 1000:
        raise InvalidInput("limit must be an integer from 1 to 1000", param="limit")
    jobs = _service().list(status, request.args.get("model") or None, int(limit))
    base = request.host_url.rstrip("/")
    return jsonify({"object": "list", "data": [j.public(base) for j in jobs]})


@bp.post("/v1/jobs/<job_id>/cancel")
def cancel(job_id: str):
    return _record(_service().cancel(job_id))
