"""Server-Sent Events of a job, parsed from the text lines of GET /v1/jobs/{id}/events."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, NamedTuple

from shared.jobs import JobStatus


class Event(NamedTuple):
    """One Server-Sent Event of a job: id, event (status|token|progress|...), data."""

    id: str | None
    event: str
    data: dict[str, Any]


def parse_sse(lines: Iterator[str]) -> Iterator[Event]:
    """Parse Server-Sent Events from text lines (comments and retry: are skipped)."""
    event_id, name, data = None, "message", []
    for line in lines:
        if line == "":
            if data:
                yield Event(event_id, name, json.loads("\n".join(data)))
            event_id, name, data = None, "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "id":
            event_id = value
        elif field == "event":
            name = value
        elif field == "data":
            data.append(value)


def is_terminal_event(event: Event) -> bool:
    """Return True for the status event that ends a job's stream."""
    return event.event == "status" and event.data.get("status") in {
        s.value for s in JobStatus if s.is_terminal()
    }
