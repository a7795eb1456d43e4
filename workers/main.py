"""`conveyor worker --model ID`: a Celery worker that consumes only model.<ID>."""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import time
from functools import partial
from pathlib import Path

import redis
from celery import Celery
from celery.exceptions import Reject
from celery.signals import worker_process_init, worker_process_shutdown

from shared.celery_app import RUN_JOB, enqueue_webhook, make_celery
from shared.config import Settings
from shared.errors import ConveyorError
from shared.registry import ModelSpec, load_registry, resolve_source
from workers.reaper import Reaper
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)
EXIT_RECYCLE = 70


class WorkerStartError(Exception):
    """The worker cannot serve its model; the message says why."""


def build_worker_app(settings: Settings, spec: ModelSpec) -> Celery:
    """Return the Celery app of a worker for one model, with its task and signals."""
    registry = load_registry(settings.registry)
    app = make_celery(settings, registry)
    if settings.worker_max_memory_mb:
        app.conf.worker_max_memory_per_child = settings.worker_max_memory_mb * 1024
    app.conveyor_runtime = None
    app.conveyor_failure_file = None

    @app.task(name=RUN_JOB, bind=True)
    def run_job(self, job_id: str) -> str:
        runtime: WorkerRuntime = app.conveyor_runtime
        soft = (self.request.timelimit or (None, None))[1]
        try:
            status = runtime.execute(job_id, soft)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # The job store is unreachable: hand the message back rather than ack it away.
            log.error("job %s: Redis unavailable (%s); requeueing the message", job_id, exc)
            time.sleep(1.0)
            raise Reject(exc, requeue=True) from exc
        if runtime.should_exit:
            log.error("worker %s keeps running out of memory; exiting to be replaced",
                      runtime.worker_id)
            os._exit(EXIT_RECYCLE)
        return status

    def on_process_init(**_kwargs) -> None:
        # Runs in each pool process after the fork: the only place a model is loaded.
        try:
            runtime = WorkerRuntime(settings, registry, spec,
                                    send_webhook=partial(enqueue_webhook, app))
            runtime.start()
        except Exception as exc:
            log.exception("model %s failed to load", spec.id)
            _report_failure(app, f"model {spec.id} failed to load: {exc}")
            os.kill(os.getppid(), signal.SIGTERM)
            os._exit(3)
        app.conveyor_runtime = runtime
        Reaper(runtime.store, registry, app, settings, payloads=runtime.payloads,
               notifier=runtime.notifier).start(runtime.stop)

    def on_process_shutdown(**_kwargs) -> None:
        if app.conveyor_runtime is not None:
            app.conveyor_runtime.shutdown()

    worker_process_init.connect(on_process_init, weak=False)
    worker_process_shutdown.connect(on_process_shutdown, weak=False)
    return app


def _report_failure(app: Celery, message: str) -> None:
    if app.conveyor_failure_file:
        Path(app.conveyor_failure_file).write_text(message)


def run_worker(settings: Settings, model: str, *, concurrency: int = 1,
               loglevel: str = "INFO") -> None:
    """Start a worker for one model and block until it stops.

    :raises WorkerStartError: unknown model, weights missing, or the model failed to load.
    """
    registry = load_registry(settings.registry)
    spec = registry.get(model)
    if spec is None:
        raise WorkerStartError(
            f"model {model!r} is not in {settings.registry}; known: {[s.id for s in registry]}"
        )
    try:
        resolve_source(spec)
    except ConveyorError as exc:
        raise WorkerStartError(exc.message) from None
    app = build_worker_app(settings, spec)
    with tempfile.NamedTemporaryFile("w+", prefix="conveyor-worker-", suffix=".err") as fail:
        app.conveyor_failure_file = fail.name
        app.worker_main([
            "worker", "--queues", spec.queue, "--concurrency", str(concurrency),
            "--pool", "prefork", "--hostname", f"{spec.id}@%h", "--loglevel", loglevel,
            "--without-gossip", "--without-mingle",
        ])
        failure = Path(fail.name).read_text()
    if failure:
        raise WorkerStartError(failure)


