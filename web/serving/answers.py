"""Answer in one request: submit a job, hold the request until it ends, answer its result."""

from __future__ import annotations

from collections.abc import Callable

from flask import Response
from pydantic import BaseModel

from shared.jobs import JobRecord
from web.app_services import services
from web.blocking import settle
from web.protocols.jobs import JobRequest
from web.responses import json_response


def answer(
    job_request: JobRequest,
    reply: Callable[[JobRecord], BaseModel | str],
    files: dict[str, list[bytes]] | None = None,
) -> Response:
    """Submit a job, hold the request until it succeeds and answer with reply(job).

    The job must find a worker now (or one `conveyor up` starts for it): a job none will
    take would hold the client until CONVEYOR_SYNC_WAIT_S.
    :raises ConveyorError: it could not be submitted, failed, was canceled or timed out.
    """
    svc = services()
    with svc.holds.hold("wait"):
        job = svc.jobs.submit(job_request, files, need_worker=True)
        body = reply(settle(svc.jobs, job, svc.settings.sync_wait_s))
    if isinstance(body, str):  # e.g. a transcription asked for as text
        resp = Response(body, mimetype="text/plain")
        resp.headers.update(job.headers())
        return resp
    return json_response(body, headers=job.headers())
