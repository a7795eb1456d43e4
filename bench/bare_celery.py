"""The baseline for queue overhead: a minimal Celery app whose task does nothing.

Run as a worker with `python -m bench.bare_celery --redis-url URL`. It consumes its own
queue with the settings a conveyor worker uses (prefork, one process, late acks, prefetch
one) and stores results in the same Redis, so a round trip costs only what Celery costs.
"""

from __future__ import annotations

import argparse

from celery import Celery
from kombu import Queue

QUEUE = "bench.noop"
NOOP = "bench.noop"


def make_bare_app(redis_url: str) -> Celery:
    """Return the baseline Celery app: Redis broker and result backend, one no-op task."""
    app = Celery("bench-bare", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_queues=[Queue(QUEUE)],
        task_default_queue=QUEUE,
        task_create_missing_queues=False,
        result_expires=600,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    @app.task(name=NOOP)
    def noop() -> str:
        return "ok"

    return app


def round_trip(app: Celery, timeout: float) -> str:
    """Send the no-op task and wait for its result."""
    return app.send_task(NOOP, queue=QUEUE).get(timeout=timeout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bare_celery", description="Run the baseline no-op Celery worker."
    )
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--loglevel", default="INFO")
    args = parser.parse_args(argv)
    make_bare_app(args.redis_url).worker_main(
        [
            "worker",
            "--queues",
            QUEUE,
            "--concurrency",
            "1",
            "--pool",
            "prefork",
            "--hostname",
            "bench-bare@%h",
            "--loglevel",
            args.loglevel,
            "--without-gossip",
            "--without-mingle",
        ]
    )


if __name__ == "__main__":
    main()
