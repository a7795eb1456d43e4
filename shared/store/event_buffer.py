"""Events from a job's hot loop (token deltas), written a few at a time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

PendingEvent = tuple[str, str, dict[str, Any]]  # (job_id, event, data), not yet written

# Longest an event waits for company. Far below what a reader of a token stream notices.
BATCH_S = 0.025


class EventBuffer:
    """Hold hot-loop events briefly and write them in one round trip per batch.

    A generation loop that wrote every token itself waited a Redis round trip per token
    (about 5% of SmolLM2's tokens/s on two cores). An event is written at once when the
    last write is `interval_s` old, else with the next event past that or at flush(): a
    slow model's tokens still go out one by one, a fast model's a few at a time.
    """

    def __init__(
        self,
        write: Callable[[list[PendingEvent]], None],
        *,
        interval_s: float = BATCH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write = write
        self._interval = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: list[PendingEvent] = []
        self._last = float("-inf")

    def add(self, job_id: str, event: str, data: dict[str, Any]) -> None:
        """Queue an event; write the queue now if the last write is old enough.

        :raises redis.RedisError: when the write fails (the queued events are dropped).
        """
        with self._lock:
            self._pending.append((job_id, event, data))
            if self._clock() - self._last >= self._interval:
                self._drain()

    def flush(self) -> None:
        """Write every queued event now. :raises redis.RedisError: when the write fails."""
        with self._lock:
            self._drain()

    def _drain(self) -> None:
        batch, self._pending = self._pending, []
        self._last = self._clock()
        if batch:
            self._write(batch)
