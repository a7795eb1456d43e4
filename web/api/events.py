"""Server-Sent Events for one job: replay from the start or Last-Event-ID, then live."""

from __future__ import annotations

import json
import re

from flask import Blueprint, Response, current_app, request, stream_with_context

from shared.errors import InvalidInput

bp = Blueprint("events", __name__)
HEARTBEAT_S = 15.0
_EVENT_ID = re.compile(r"^\d+-\d+$")
TERMINAL = {"succeeded", "failed", "canceled"}


def sse(event_id: str, event: str, data: dict) -> str:
    """Format one SSE frame."""
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data)}\n\n"


def job_event_frames(store, job_id: str, after: str, heartbeat_s: float = HEARTBEAT_S):
    """Yield SSE frames for a job until its terminal status event; heartbeats while idle."""
    yield "retry: 2000\n\n"
    for item in store.iter_events(job_id, after, idle_s=heartbeat_s):
        if item is None:
            job = store.get(job_id)
            if job is None or job.status.is_terminal():
                return  # expired, or ended before the client's Last-Event-ID
            yield ": heartbeat\n\n"
            continue
        event_id, event, data = item
        yield sse(event_id, event, data)
        if event == "status" and data.get("status") in TERMINAL:
            return


@bp.get("/v1/jobs/<job_id>/events")
def events(job_id: str):
    services = current_app.extensions["conveyor"]
    services.jobs.get(job_id)  # 404 for unknown ids
    after = request.headers.get("Last-Event-ID") or request.args.get("last_event_id") or "0-0"
    if not _EVENT_ID.match(after):
        raise InvalidInput("Last-Event-ID must look like '<ms>-<seq>'", param="Last-Event-ID")
    frames = job_event_frames(services.store, job_id, after, services.settings.sse_heartbeat_s)
    return Response(stream_with_context(frames), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
