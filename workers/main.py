"""`conveyor worker --model ID`: a Celery worker that consumes only model.<ID>."""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import psutil
import redis
from billiard.exceptions import WorkerLostError
from celery import Celery, Task
from celery.exceptions import Reject
from celery.signals import worker_process_init, worker_process_shutdown
from celery.worker.request import Request

from shared.celery_app import RUN_JOB, enqueue_webhook, make_celery
from shared.config import Settings
from shared.errors import ConveyorError
from shared.hub import ensure_weights
from shared.jobs import JobError
from shared.payloads import PayloadStore
from shared.registry import ModelSpec, load_registry, resolve_source
from shared.store.jobs import IllegalTransition, JobStore, connect
from shared.webhooks import WebhookNotifier
from workers.reaper import Reaper
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)
EXIT_RECYCLE = 70
WATCH_LOAD_S = 0.5


class WorkerStartError(Exception):
    """The worker cannot serve its model; the message says why."""


def build_worker_app(settings: Settings, spec: ModelSpec) -> Celery:
    """Return the Celery app of a worker for one model, with its task and signals."""
    registry = load_registry(settings.registry)
    app = make_celery(settings, registry)
    if settings.worker_max_memory_mb:
        app.conf.worker_max_memory_per_child = settings.worker_max_memory_mb * 1024
    app.conveyor_runtime = None
    app.conveyor_state = None  # a StartState once run_worker starts the pool

    class JobRequest(Request):
        """A job's message in the worker's main process, which sees its pool process die."""

        def on_failure(self, exc_info, send_failed_event=True, return_ok=False):
            exc = getattr(exc_info, "exception", None)
            exc = getattr(exc, "exc", exc)  # billiard wraps it in an ExceptionWithTraceback
            if isinstance(exc, WorkerLostError) and self.args:
                _record_loss(settings, spec, app.conveyor_state, self.args[0], exc, self.worker_pid)
            return super().on_failure(exc_info, send_failed_event, return_ok)

        def on_timeout(self, soft, timeout):
            # The hard limit kills the pool process mid-step: the job ends here, or its
            # lease would lapse and the reaper would run the same stuck step again.
            if not soft and self.args:
                _end_at_hard_limit(settings, app, self.args[0], timeout)
            return super().on_timeout(soft, timeout)

    class JobTask(Task):
        Request = JobRequest

    @app.task(name=RUN_JOB, bind=True, base=JobTask)
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
            log.error(
                "worker %s keeps running out of memory; exiting to be replaced", runtime.worker_id
            )
            os._exit(EXIT_RECYCLE)
        return status

    def on_process_init(**_kwargs) -> None:
        # Runs in each pool process after the fork: the only place a model is loaded.
        state: StartState | None = app.conveyor_state
        if state is not None:
            state.loading_started()
        try:
            runtime = WorkerRuntime(
                settings, registry, spec, send_webhook=partial(enqueue_webhook, app)
            )
            runtime.start()
        except Exception as exc:
            log.exception("model %s failed to load", spec.id)
            if state is not None:
                state.fail(f"model {spec.id} failed to load: {exc}")
                state.loading_done()  # it said why; the watch must not call it a crash
            os.kill(os.getppid(), signal.SIGTERM)
            os._exit(3)
        if state is not None:
            state.loading_done()
        app.conveyor_runtime = runtime
        Reaper(
            runtime.store,
            registry,
            app,
            settings,
            payloads=runtime.payloads,
            notifier=runtime.notifier,
        ).start(runtime.stop)

    def on_process_shutdown(**_kwargs) -> None:
        if app.conveyor_runtime is not None:
            app.conveyor_runtime.shutdown()

    worker_process_init.connect(on_process_init, weak=False)
    worker_process_shutdown.connect(on_process_shutdown, weak=False)
    return app


class StartState:
    """Files through which pool processes tell the worker's main process how they fare.

    A pool process that dies by a signal (a kernel that crashes on this CPU, the OOM killer)
    cannot report anything itself. So each one writes a marker while it loads its model and
    points Python's faulthandler at a file of its own; the main process watches the markers
    and, when a loader dies, fails the start with what the fault handler wrote.
    """

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.failure = self.folder / "failure"

    def fail(self, message: str) -> None:
        self.failure.write_text(message)

    def failed(self) -> str:
        return self.failure.read_text() if self.failure.exists() else ""

    def crash_file(self, pid: int) -> Path:
        return self.folder / f"{pid}.crash"

    def crash_report(self, pid: int | None) -> str:
        """Return what the fault handler of pool process `pid` wrote, if it wrote anything."""
        path = self.crash_file(pid) if pid else None
        return path.read_text(errors="replace").strip() if path and path.exists() else ""

    def loading_started(self) -> None:
        """In a pool process: record that it is loading, and have faults written down."""
        pid = os.getpid()
        # Kept open for the process's life: the fault handler writes to its descriptor.
        self._crash = open(self.crash_file(pid), "w")  # noqa: SIM115
        faulthandler.enable(self._crash)
        (self.folder / f"{pid}.loading").touch()

    def loading_done(self) -> None:
        (self.folder / f"{os.getpid()}.loading").unlink(missing_ok=True)

    def dead_loader(self) -> int | None:
        """Return the pid of a pool process that died while loading, if there is one."""
        for marker in self.folder.glob("*.loading"):
            pid = int(marker.stem)
            try:
                alive = psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                alive = False
            if not alive:
                return pid
        return None

    def watch(self, model: str, stop: threading.Event) -> None:
        """In the main process: stop the worker when a pool process dies loading `model`."""
        while not stop.wait(WATCH_LOAD_S):
            pid = self.dead_loader()
            if pid is None or self.failed():
                continue
            report = self.crash_report(pid)
            cause = report.splitlines()[0] if report else "killed by a signal (no fault report)"
            log.error(
                "model %s: pool process %s died while loading: %s\n%s", model, pid, cause, report
            )
            self.fail(
                f"model {model} crashed while loading or warming up ({cause}); "
                "see the worker log, and README 'Troubleshooting'"
            )
            os.kill(os.getpid(), signal.SIGTERM)
            return


def _record_loss(
    settings: Settings,
    spec: ModelSpec,
    state: StartState | None,
    job_id: str,
    exc: WorkerLostError,
    pid: int | None,
) -> None:
    """Keep why a pool process was lost on its job, and its fault report in the log."""
    how = str(exc).removeprefix("Worker exited prematurely: ").split(" Job:")[0]
    reason = f"pool process {pid} on model {spec.id} exited: {how}"
    report = state.crash_report(pid) if state else ""
    log.error("job %s model %s: %s\n%s", job_id, spec.id, reason, report)
    try:
        JobStore(connect(settings.redis_url), ttl_s=settings.result_ttl_s).note_loss(job_id, reason)
    except redis.RedisError:
        log.warning("job %s: could not record why its worker was lost", job_id, exc_info=True)


def _end_at_hard_limit(settings: Settings, app: Celery, job_id: str, limit_s: float) -> None:
    """Fail a job whose step outlived Celery's hard time limit: its pool process is gone."""
    store = JobStore(connect(settings.redis_url), ttl_s=settings.result_ttl_s)
    error = JobError(
        type="timeout",
        message=f"a step of the job did not return within the {limit_s:g} s hard time limit; "
        "its pool process was replaced",
    )
    try:
        rec = store.mark_failed(job_id, error)
    except IllegalTransition:
        return  # it ended some other way first
    except redis.RedisError:
        log.warning("job %s: could not record its hard time limit", job_id, exc_info=True)
        return
    log.error("job %s model %s: %s", job_id, rec.model, error.message)
    PayloadStore(settings.payload_location, max_bytes=settings.max_media_bytes).delete(job_id)
    WebhookNotifier(store.r, partial(enqueue_webhook, app), ttl_s=settings.result_ttl_s).ended(rec)


def run_worker(
    settings: Settings, model: str, *, concurrency: int = 1, loglevel: str = "INFO"
) -> None:
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
        ensure_weights(spec, settings)  # CONVEYOR_AUTO_PULL
        resolve_source(spec)
    except ConveyorError as exc:
        raise WorkerStartError(exc.message) from None
    app = build_worker_app(settings, spec)
    stop_watching = threading.Event()
    with tempfile.TemporaryDirectory(prefix="conveyor-worker-") as folder:
        state = app.conveyor_state = StartState(folder)
        threading.Thread(
            target=state.watch,
            args=(spec.id, stop_watching),
            name="conveyor-load-watch",
            daemon=True,
        ).start()
        try:
            app.worker_main(
                [
                    "worker",
                    "--queues",
                    spec.queue,
                    "--concurrency",
                    str(concurrency),
                    "--pool",
                    "prefork",
                    "--hostname",
                    f"{spec.id}@%h",
                    "--loglevel",
                    loglevel,
                    "--without-gossip",
                    "--without-mingle",
                ]
            )
        finally:
            stop_watching.set()
        failure = state.failed()
    if failure:
        raise WorkerStartError(failure)
