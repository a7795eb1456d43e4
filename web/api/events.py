"""Server-Sent Events for one job: replay from the start or Last-Event-ID, then live."""

from __future__ import annotations

import re

from flask import Blueprint, Response, request, stream_with_context

from shared.errors import InvalidInput
from web.app_services import services
from web.serving.events import job_event_frames

bp = Blueprint("events", __name__)
_EVENT_ID = re.compile(r"^\d+-\d+$")


@bp.get("/v1/jobs/<job_id>/events")
def events(job_id: str):
    svc = services()
    job = svc.jobs.get(job_id)  # 404 for unknown ids
    after = request.headers.get("Last-Event-ID") or request.args.get("last_event_id") or "0-0"
    if not _EVENT_ID.match(after):
        raise InvalidInput("Last-Event-ID must look like '<ms>-<seq>'", param="Last-Event-ID")
    frames = job_event_frames(svc.jobs, job_id, after, svc.settings.sse_heartbeat_s)
    return svc.holds.stream(
        lambda: Response(
            stream_with_context(frames),
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **job.headers()},
        )
    )
