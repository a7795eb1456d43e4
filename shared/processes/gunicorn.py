"""gunicorn's command line for the web tier, built in one place.

`conveyor web`, `conveyor up`, the benchmarks and the tests all serve the API with the
command built here, so they run the same server the same way.

The workers are gevent's: a client that streams a job's events or waits for a job holds
a greenlet (a few KiB), not a thread, so thousands can wait at once while health checks
and submits stay fast. gunicorn's gevent worker monkey-patches the standard library before
it imports web.wsgi, so redis-py's blocking reads, kombu's sockets (Celery's send_task)
and requests all yield to the event loop.
"""

from __future__ import annotations

import logging
import resource
import sys

from shared.config import Settings

log = logging.getLogger(__name__)

APP = "web.wsgi:app"
WORKER_CLASS = "gevent"
TIMEOUT_S = 120  # a worker whose event loop is stuck this long is restarted
GRACEFUL_TIMEOUT_S = 10  # on shutdown, held streams get this long to finish
# Connections a worker accepts beyond its cap on held streams and waits, so health checks,
# submits and polls find room while every hold is taken (those get 503, not a hang).
SPARE_CONNECTIONS = 1000
# Open files a worker needs besides its client sockets: Redis and broker pools, logs.
SPARE_FILES = 1000


def gunicorn_command(
    settings: Settings, bind: str, *, workers: int = 1, access_log: bool = True
) -> list[str]:
    """Return the argv that serves the API with gunicorn on bind ("host:port")."""
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        APP,
        "--bind",
        bind,
        "--workers",
        str(workers),
        "--worker-class",
        WORKER_CLASS,
        "--worker-connections",
        str(settings.max_held_requests + SPARE_CONNECTIONS),
        "--timeout",
        str(TIMEOUT_S),
        "--graceful-timeout",
        str(GRACEFUL_TIMEOUT_S),
        "--logger-class",  # gunicorn's own lines in CONVEYOR_LOG_FORMAT too
        "shared.processes.gunicorn_logger.GunicornLogger",
    ]
    if access_log:
        cmd += ["--access-logfile", "-"]
    return cmd


def open_files_needed(settings: Settings) -> int:
    """Return the open-files limit one web worker needs to hold its cap of requests."""
    return settings.max_held_requests + SPARE_CONNECTIONS + SPARE_FILES


def raise_open_files_limit(wanted: int) -> int:
    """Raise this process's soft open-files limit toward wanted (children inherit it).

    Never lowers it, and stops at the hard limit; returns the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft < wanted:
        log.warning(
            "open-files limit is %d, below the %d needed to hold every stream; "
            "raise the hard limit (ulimit -Hn)",
            soft,
            wanted,
        )
    return soft
