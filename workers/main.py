"""`conveyor worker --model ID`: a supervisor and the one model process it keeps running.

The model process (workers/serve.py) loads the model once and consumes model.<ID> with
Celery's threads pool: up to max_concurrency jobs at once against that one copy. This
process loads nothing. It watches the model process, which can die in ways it cannot
report itself (a native kernel that crashes on this CPU, the OOM killer):

- dead while loading or warming up: the worker's start fails (exit 2) naming the fault;
- dead while running jobs: each of those jobs records why (`lost_reason`; the reaper
  queues it again once its lease lapses), and a fresh model process starts;
- exited to be recycled (RSS ceiling, repeated out-of-memory, a step stuck past its hard
  time limit), after its running jobs finished: a fresh one starts.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from shared.config import Settings
from shared.errors import ConveyorError
from shared.hub import ensure_weights
from shared.processes.child import child_env, die_with_parent
from shared.registry import ModelSpec, load_registry, resolve_source
from shared.store.jobs import JobStore, connect
from workers.journal import EXIT_RECYCLE, Journal

log = logging.getLogger(__name__)
RESTART_PAUSE_S = 1.0  # between restarts of a model process that died soon after starting
STABLE_S = 30.0  # a model process that lived this long restarts at once
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
# glibc gives each thread that allocates a heap of its own, up to 8 per core, each reserving
# 64 MiB of address space: with a pool thread per job that inflates RSS and, under
# options.memory_limit_mb's address-space cap, left no room to start a pool thread at all.
# Python's small objects do not use malloc (pymalloc), so two heaps cost no speed.
MALLOC_ARENA_MAX = "2"


class WorkerStartError(Exception):
    """The worker cannot serve its model; the message says why."""


class FileJournal(Journal):
    """A model process's running jobs, one empty file each, for its supervisor to read."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def started(self, job_id: str) -> None:
        (self.folder / job_id).touch()

    def ended(self, job_id: str) -> None:
        (self.folder / job_id).unlink(missing_ok=True)


class StartState:
    """Files through which a model process tells its supervisor how it fares.

    A model process that dies by a signal cannot report anything itself. So it writes a
    marker while it loads its model, points Python's faulthandler at a file of its own for
    its whole life, and notes the jobs it runs; the supervisor reads them once it died.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.failure = self.folder / "failure"

    def fail(self, message: str) -> None:
        self.failure.write_text(message)

    def failed(self) -> str:
        return self.failure.read_text() if self.failure.exists() else ""

    def crash_file(self, pid: int) -> Path:
        return self.folder / f"{pid}.crash"

    def crash_report(self, pid: int | None) -> str:
        """Return what the fault handler of model process `pid` wrote, if anything."""
        path = self.crash_file(pid) if pid else None
        return path.read_text(errors="replace").strip() if path and path.exists() else ""

    def loading_started(self) -> None:
        """In the model process: record that it is loading, and have faults written down."""
        pid = os.getpid()
        # Kept open for the process's life: the fault handler writes to its descriptor.
        self._crash = open(self.crash_file(pid), "w")  # noqa: SIM115
        faulthandler.enable(self._crash)
        (self.folder / f"{pid}.loading").touch()

    def loading_done(self) -> None:
        (self.folder / f"{os.getpid()}.loading").unlink(missing_ok=True)

    def was_loading(self, pid: int) -> bool:
        return (self.folder / f"{pid}.loading").exists()

    def journal(self) -> FileJournal:
        """In the model process: where it notes its running jobs."""
        return FileJournal(self._jobs_folder(os.getpid()))

    def running_jobs(self, pid: int) -> list[str]:
        """Return the jobs model process `pid` was running when it stopped."""
        folder = self._jobs_folder(pid)
        return sorted(p.name for p in folder.iterdir()) if folder.exists() else []

    def forget(self, pid: int) -> None:
        """Drop what a dead model process left here."""
        for path in (self.crash_file(pid), self.folder / f"{pid}.loading"):
            path.unlink(missing_ok=True)
        folder = self._jobs_folder(pid)
        if folder.exists():
            for path in folder.iterdir():
                path.unlink(missing_ok=True)
            folder.rmdir()

    def _jobs_folder(self, pid: int) -> Path:
        return self.folder / f"{pid}.jobs"


def describe_exit(returncode: int) -> str:
    """Say how a process ended, as billiard does: `signal 11 (SIGSEGV)` or `exitcode 3`."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown"
        return f"signal {-returncode} ({name})"
    return f"exitcode {returncode}"


class Supervisor:
    """Run a model's model process, restart it when it dies, record what it lost."""

    def __init__(
        self, settings: Settings, spec: ModelSpec, folder: str, concurrency: int | None
    ) -> None:
        self.settings = settings
        self.spec = spec
        self.state = StartState(folder)
        self.concurrency = concurrency
        self.proc: subprocess.Popen | None = None
        self.stopping = False
        self.arenas = os.environ.get("MALLOC_ARENA_MAX", MALLOC_ARENA_MAX)

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "workers.serve", "--model", self.spec.id]
        cmd += ["--state", str(self.state.folder)]
        if self.concurrency:
            cmd += ["--concurrency", str(self.concurrency)]
        return cmd

    def run(self) -> None:
        """Block until the worker stops. :raises WorkerStartError: the model cannot load."""
        previous = {sig: signal.signal(sig, self._forward) for sig in FORWARDED}
        try:
            while not self.stopping:
                started = time.monotonic()
                # In this process's session, so launchers that stop a worker's session
                # (shared/processes/child.py) reach it too.
                self.proc = subprocess.Popen(
                    self.command(),
                    env=child_env(self.settings, {"MALLOC_ARENA_MAX": self.arenas}),
                    preexec_fn=die_with_parent,
                )
                returncode = self.proc.wait()
                if not self._after_exit(self.proc.pid, returncode):
                    return
                if time.monotonic() - started < STABLE_S:
                    time.sleep(RESTART_PAUSE_S)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _forward(self, signum, _frame) -> None:
        self.stopping = True
        # SIGINT is passed on as SIGTERM, the same warm shutdown: a terminal's Ctrl-C also
        # reaches the model process itself, and a second SIGINT would make it a cold one.
        forward = signal.SIGTERM if signum == signal.SIGINT else signum
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(forward)

    def _after_exit(self, pid: int, returncode: int) -> bool:
        """Handle the end of model process pid; return whether to start another."""
        try:
            if self.stopping:
                return False
            failure = self.state.failed()
            if failure:
                raise WorkerStartError(failure)
            report = self.state.crash_report(pid)
            if self.state.was_loading(pid):
                cause = report.splitlines()[0] if report else describe_exit(returncode)
                log.error(
                    "model %s: model process %s died while loading: %s\n%s",
                    self.spec.id,
                    pid,
                    cause,
                    report,
                )
                raise WorkerStartError(
                    f"model {self.spec.id} crashed while loading or warming up ({cause}); "
                    "see the worker log, and README 'Troubleshooting'"
                )
            if returncode == EXIT_RECYCLE:
                log.warning("model %s: model process %s recycled", self.spec.id, pid)
                return True
            if returncode == 0:
                return False  # Celery stopped on its own (e.g. a remote shutdown)
            self._record_losses(pid, describe_exit(returncode), report)
            return True
        finally:
            self.state.forget(pid)

    def _record_losses(self, pid: int, how: str, report: str) -> None:
        """Keep why the model process was lost on each job it ran, its fault report in
        the log; the reaper queues each job again once its lease lapses."""
        reason = f"pool process {pid} on model {self.spec.id} exited: {how}"
        jobs = self.state.running_jobs(pid)
        log.error(
            "model %s: model process %s exited (%s) running %s jobs; starting a fresh one\n%s",
            self.spec.id,
            pid,
            how,
            len(jobs),
            report,
        )
        if not jobs:
            return
        try:
            store = JobStore(connect(self.settings.redis_url), ttl_s=self.settings.result_ttl_s)
            for job_id in jobs:
                log.error("job %s model %s: %s", job_id, self.spec.id, reason)
                store.note_loss(job_id, reason)
        except redis.RedisError:
            log.warning("could not record why jobs %s were lost", jobs, exc_info=True)


def run_worker(
    settings: Settings, model: str, *, concurrency: int | None = None, loglevel: str = "INFO"
) -> None:
    """Start a worker for one model and block until it stops.

    concurrency: jobs at once (default: the model's max_concurrency), against one copy.
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
    settings = settings.model_copy(update={"log_level": loglevel})
    with tempfile.TemporaryDirectory(prefix="conveyor-worker-") as folder:
        Supervisor(settings, spec, folder, concurrency).run()
