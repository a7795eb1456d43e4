"""The cap on requests a web process holds open: event streams and waits."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from flask import Response

from shared.errors import ServiceUnavailable

log = logging.getLogger(__name__)

RETRY_AFTER_S = 2


class HoldLimit:
    """Count held requests; refuse one past the cap with 503 and Retry-After.

    The web server accepts more connections than this cap (see shared/processes/gunicorn.py),
    so health checks, submits and polls still find room while every hold is taken.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        return self._held

    def acquire(self, what: str) -> None:
        """Take one place.

        :raises ServiceUnavailable: when the process already holds cap requests.
        """
        with self._lock:
            if self._held >= self.cap:
                log.warning("holding %d requests, the cap: refusing a %s", self._held, what)
                raise ServiceUnavailable(
                    f"this server holds {self.cap} streams and waits, its limit "
                    f"(CONVEYOR_MAX_HELD_REQUESTS); retry shortly",
                    retry_after=RETRY_AFTER_S,
                    code="too_many_held_requests",
                )
            self._held += 1

    def release(self) -> None:
        """Give a place back."""
        with self._lock:
            self._held -= 1

    @contextmanager
    def hold(self, what: str) -> Iterator[None]:
        """Hold one place for the block. :raises ServiceUnavailable: past the cap."""
        self.acquire(what)
        try:
            yield
        finally:
            self.release()

    def stream(self, start: Callable[[], Response]) -> Response:
        """Hold one place for the streamed response start() returns, until it closes.

        :raises ServiceUnavailable: past the cap, before start() runs (no job is submitted).
        """
        self.acquire("stream")
        try:
            resp = start()
        except BaseException:
            self.release()
            raise
        resp.call_on_close(self.release)
        return resp
