"""Server-Sent Events for one job: replay from the start or Last-Event-ID, then live."""

from __future__ import annotations

import json
import re

from flask import Blueprint, Response, current_app, request, stream_with_context

from shared.errors import InvalidInput
from web.service import JobService

bp = Blueprint("events", __name__)
_EVENT_ID = re.compile(r"^\d+-\d+$")


def sse(event_id: str, event: str, data: dict) -> str:
    """Format one SSE frame."""
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data)}\n\n"


def job_event_frames(jobs: JobService, job_id: str, after: str, heartbeat_s: float):
    """Yield SSE frames for a job until it ends (or is gone); heartbeats while idle."""
    yield "retry: 2000\n\n"
    for item in jobs.follow(job_id, after, heartbeat_s):
        yield ": heartbeat\n\n" if item is None else sse(*item)


@bp.get("/v1/jobs/<job_id>/events")
def events(job_id: str):
    services = current_app.extensions["conveyor"]
    job = services.jobs.get(job_id)  # 404 for unknown ids
    after = request.headers.get("Last-Event-ID") or request.args.get("last_event_id") or "0-0"
    if not _EVENT_ID.match(after):
        raise InvalidInput("Last-Event-ID must look like '<ms>-<seq>'", param="Last-Event-ID")
    frames = job_event_frames(services.jobs, job_id, after, services.settings.sse_heartbeat_s)
    return services.holds.stream(
        lambda: Response(
            stream_with_context(frames),
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **job.headers()},
        )
    )
