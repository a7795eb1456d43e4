"""HTTP request counts and latencies of one web process, added to the fleet's metrics.

Each request is summed in memory; a background thread (a greenlet under gunicorn's gevent
workers) adds the sums to the Redis metrics hash once a second, in one round trip, and
again when the process exits. So a request never waits on Redis for its metrics, a Redis
outage costs no request anything (the sums wait for the next flush), and whichever web
process answers a scrape reports every process's requests, on every host.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections import defaultdict

import redis

from shared.metrics.store import MetricsStore, http_writes

log = logging.getLogger(__name__)

FLUSH_S = 1.0
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


WARN_AFTER_FAILURES = 10  # flushes in a row that found Redis down before a warning


class RequestMetrics:
    """Sum requests per (route, method, status) and flush the sums to Redis."""

    def __init__(self, store: MetricsStore, *, flush_s: float = FLUSH_S) -> None:
        self.store = store
        self.flush_s = flush_s
        self._totals: dict[tuple[str, str], float] = defaultdict(float)
        self._lock = threading.Lock()
        self._flusher_pid: int | None = None
        self._failures = 0  # flushes failed in a row

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one request; route is its URL rule ("/v1/jobs/<job_id>"), never its path."""
        method = method if method in METHODS else "OTHER"
        with self._lock:
            for command, name, amount in http_writes(route, method, status, seconds):
                self._totals[(command, name)] += amount
        if self._flusher_pid != os.getpid():  # first request of this (forked) process
            self._start_flusher()

    def flush(self, *, last: bool = False) -> None:
        """Add what was counted since the last flush to Redis; keep it if Redis is down."""
        with self._lock:
            batch, self._totals = self._totals, defaultdict(float)
        if not batch:
            return
        try:
            self.store.add_totals(batch)
            self._failures = 0
        except redis.RedisError as exc:
            if last:  # the process exits: nothing to keep it for
                log.info("HTTP metrics of this process lost at exit: %s", exc)
                return
            # One warning per outage, once it has lasted a while; a blip stays quiet.
            self._failures += 1
            (log.warning if self._failures == WARN_AFTER_FAILURES else log.debug)(
                "HTTP metrics not flushed for %s tries (kept for the next): %s", self._failures, exc
            )
            with self._lock:
                for key, amount in batch.items():
                    self._totals[key] += amount

    def _start_flusher(self) -> None:
        with self._lock:
            if self._flusher_pid == os.getpid():
                return
            self._flusher_pid = os.getpid()
        threading.Thread(target=self._loop, name="conveyor-http-metrics", daemon=True).start()
        atexit.register(self.flush, last=True)

    def _loop(self) -> None:
        stop = threading.Event()
        while not stop.wait(self.flush_s):
            self.flush()
