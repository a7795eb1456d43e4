"""A worker's model process: load the model once, then consume model.<ID> with Celery's
threads pool, up to max_concurrency jobs at once against that one copy.

`conveyor worker` (workers/main.py) starts this process and restarts it when it dies; it
is not meant to be run by hand.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from functools import partial

import redis
from celery import Celery
from celery.exceptions import Reject
from celery.signals import worker_ready
from celery.utils.nodenames import host_format

from shared.celery_app import RUN_JOB, enqueue_webhook, make_celery
from shared.config import Settings
from shared.logs import setup_logging
from shared.registry import ModelSpec, Registry, load_registry
from workers.main import StartState
from workers.reaper import Reaper
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)
EXIT_LOAD_FAILED = 3


def node_name(spec: ModelSpec) -> str:
    """Return the Celery node name of a model's worker (what Flower lists)."""
    return f"{spec.id}@%h"


def build_app(settings: Settings, registry: Registry, runtime: WorkerRuntime) -> Celery:
    """Return the Celery app that feeds the runtime: its task, and how it stops consuming."""
    app = make_celery(settings, registry)
    queue = runtime.spec.queue

    @app.task(name=RUN_JOB, bind=True)
    def run_job(self, job_id: str) -> str:
        hard, soft = self.request.timelimit or (None, None)
        try:
            return runtime.execute(job_id, soft, hard)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # The job store is unreachable: hand the message back rather than ack it away.
            log.error("job %s: Redis unavailable (%s); requeueing the message", job_id, exc)
            time.sleep(1.0)
            raise Reject(exc, requeue=True) from exc

    def on_ready(sender=None, **_kwargs) -> None:
        consumer = sender
        hub = getattr(consumer, "hub", None)

        def stop_consuming() -> None:
            # Thread-safe: the consumer's own event loop runs the cancel.
            if hub is not None:
                hub.call_soon(consumer.cancel_task_queue, queue)
            else:
                app.control.cancel_consumer(queue, destination=[consumer.hostname])

        runtime.stop_consuming = stop_consuming
        runtime.freeze_heap()  # Celery's worker, now set up, lives as long as the process

    worker_ready.connect(on_ready, weak=False)
    return app


def serve(settings: Settings, model: str, folder: str, concurrency: int | None) -> int:
    """Load the model, consume its queue until told to stop; return the exit status."""
    registry = load_registry(settings.registry)
    spec = registry.get(model)
    state = StartState(folder)
    state.loading_started()
    try:
        # The app that sends webhooks; the consuming app is built once the model is loaded.
        runtime = WorkerRuntime(
            settings,
            registry,
            spec,
            send_webhook=partial(enqueue_webhook, make_celery(settings, registry)),
            journal=state.journal(),
        )
        runtime.start()
    except Exception as exc:
        log.exception("model %s failed to load", model)
        state.fail(f"model {model} failed to load: {exc}")
        state.loading_done()  # it said why; the supervisor must not call it a crash
        return EXIT_LOAD_FAILED
    state.loading_done()
    concurrency = concurrency or runtime.max_concurrency
    app = build_app(settings, registry, runtime)
    Reaper(
        runtime.store,
        registry,
        app,
        settings,
        payloads=runtime.payloads,
        notifier=runtime.notifier,
    ).start(runtime.stop)
    try:
        app.worker_main(
            [
                "worker",
                "--queues",
                spec.queue,
                "--pool",
                "threads",
                "--concurrency",
                str(concurrency),
                "--hostname",
                host_format(node_name(spec)),
                "--loglevel",
                settings.log_level,
                "--without-gossip",
                "--without-mingle",
            ]
        )
    finally:
        runtime.shutdown()
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workers.serve")
    parser.add_argument("--model", required=True)
    parser.add_argument("--state", required=True, help="the supervisor's StartState folder")
    parser.add_argument("--concurrency", type=int, default=None)
    args = parser.parse_args(argv)
    settings = Settings()
    setup_logging(settings.log_level, settings.log_format, capture_output=True, model=args.model)
    sys.exit(serve(settings, args.model, args.state, args.concurrency))


if __name__ == "__main__":
    main()
