"""Serve a job's events as Server-Sent Events frames."""

from __future__ import annotations

import json
from collections.abc import Iterator

from web.service import JobService

RETRY = "retry: 2000\n\n"  # how long an EventSource waits before it reconnects
HEARTBEAT = ": heartbeat\n\n"


def sse(event_id: str, event: str, data: dict) -> str:
    """Format one SSE frame."""
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data)}\n\n"


def job_event_frames(
    jobs: JobService, job_id: str, after: str, heartbeat_s: float
) -> Iterator[str]:
    """Yield SSE frames for a job until it ends (or is gone); heartbeats while idle."""
    yield RETRY
    for item in jobs.follow(job_id, after, heartbeat_s):
        yield HEARTBEAT if item is None else sse(*item)
