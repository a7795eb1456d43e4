"""A job's event log (a Redis stream) and the stream that marks its end.

Events are appended with the state change they report (in the job store's compare-and-set)
or on their own (token deltas, progress, webhook attempts), read after an id, and followed
across many jobs at once by a StreamReader.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from shared.jobs import TERMINAL
from shared.store import keys
from shared.store.event_buffer import EventBuffer, PendingEvent

EVENTS_MAXLEN = 200_000

Entry = tuple[str, str, dict[str, Any]]  # (event_id, event, data) as read back


class EventLog:
    """Append to, read and wait on jobs' event logs; every key expires with its job."""

    def __init__(self, client: redis.Redis, *, ttl_s: int) -> None:
        self._r = client
        self.ttl_s = ttl_s
        self._batch = EventBuffer(self._write)

    def queue(self, pipe, job_id: str, event: str, data: dict[str, Any]) -> None:
        """Queue an append on a pipeline (or the store's Writes); a terminal status also
        writes the job's end stream."""
        key = keys.events(job_id)
        pipe.xadd(
            key, {"event": event, "data": json.dumps(data)}, maxlen=EVENTS_MAXLEN, approximate=True
        )
        pipe.expire(key, self.ttl_s)
        if event == "status" and data.get("status") in TERMINAL:
            end = keys.end(job_id)
            pipe.xadd(end, {"status": data["status"]}, maxlen=1)
            pipe.expire(end, self.ttl_s)

    def add(
        self, job_id: str, event: str, data: dict[str, Any], *, batched: bool = False
    ) -> str | None:
        """Append an event; return its id (None when batched: see JobStore.add_event)."""
        if batched:
            self._batch.add(job_id, event, data)
            return None
        self.flush()
        pipe = self._r.pipeline(transaction=False)
        self.queue(pipe, job_id, event, data)
        return pipe.execute()[0]

    def flush(self) -> None:
        """Write the events held back by add(batched=True) now."""
        self._batch.flush()

    def _write(self, events: list[PendingEvent]) -> None:
        pipe = self._r.pipeline(transaction=False)
        for job_id, event, data in events:
            self.queue(pipe, job_id, event, data)
        pipe.execute()

    def read(
        self, job_id: str, after: str = "0-0", *, block_ms: int | None = None, count: int = 500
    ) -> list[Entry]:
        """Return (event_id, event, data) after an id, waiting up to block_ms for new ones."""
        resp = self._r.xread({keys.events(job_id): after}, count=count, block=block_ms)
        return [_entry(eid, fields) for _stream, entries in resp or [] for eid, fields in entries]

    def wait_end(self, job_id: str, block_ms: int) -> bool:
        """Wait up to block_ms for the job's end; return whether it ended."""
        return bool(self._r.xread({keys.end(job_id): "0-0"}, count=1, block=block_ms))

    def reader(self) -> StreamReader:
        """Return a reader of many jobs' events and ends on a connection of its own."""
        return StreamReader(self._r)


def _entry(eid: str, fields: dict[str, str]) -> Entry:
    return eid, fields.get("event", "message"), json.loads(fields["data"])


class StreamReader:
    """Blocking reads of many jobs' event logs and end streams in one command.

    It holds one connection of its own, so a web process follows every job its clients
    wait on with one blocked XREAD, not one per client. interrupt(), from another thread,
    wakes a blocked read so that a job added since joins the next one at once.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._shared = client  # for CLIENT UNBLOCK, which must not wait behind the read
        self._r: redis.Redis | None = None  # connected at the first read, not at start-up
        self._client_id: int | None = None

    def _client(self) -> redis.Redis:
        if self._r is None:
            pool = self._shared.connection_pool
            self._r = redis.Redis(
                connection_pool=redis.ConnectionPool(
                    connection_class=pool.connection_class, **pool.connection_kwargs
                ),
                single_connection_client=True,
            )
        return self._r

    def read(
        self, events: dict[str, str], ends: list[str], *, block_ms: int, count: int = 500
    ) -> tuple[dict[str, list[Entry]], set[str]]:
        """Wait up to block_ms for events after each job's id, or the end of the jobs in ends.

        Return the new events by job id and the ids of the jobs in ends that ended.
        :raises redis.RedisError: when Redis cannot be reached (the next read reconnects).
        """
        streams = {keys.events(j): after for j, after in events.items()}
        streams.update({keys.end(j): "0-0" for j in ends})
        if not streams:
            return {}, set()
        try:
            client = self._client()
            if self._client_id is None:
                self._client_id = client.client_id()
            resp = client.xread(streams, count=count, block=block_ms)
        except redis.RedisError:
            self._client_id = None
            raise
        found: dict[str, list[Entry]] = {}
        ended: set[str] = set()
        for key, entries in resp or []:
            kind, job_id = keys.stream_job(key)
            if kind == "end":
                ended.add(job_id)
                continue
            found[job_id] = [_entry(eid, fields) for eid, fields in entries]
        return found, ended

    def interrupt(self) -> bool:
        """Wake a read blocked now; False when none was (or the connection is not up yet)."""
        if self._client_id is None:
            return False
        return bool(self._shared.client_unblock(self._client_id))

    def close(self) -> None:
        if self._r is not None:
            self._r.close()
