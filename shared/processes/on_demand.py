"""Workers `conveyor up` starts when a job arrives for them, and stops when they idle.

Like Ollama loading a model on its first request: a job queued for a registered model whose
weights are on this machine, with no worker serving it, makes `conveyor up` start a worker
for it. The job runs once the model is loaded (a synchronous request waits for it). The
worker stops after `keep_alive_s` idle; when `max_workers` are already running, the least
recently used idle on-demand worker stops first to make room. Workers of models named with
`--model` are never stopped.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from typing import Any

from shared.config import Settings
from shared.errors import ConveyorError
from shared.processes.child import Child
from shared.registry import Registry, resolve_source
from shared.store.fleet import Fleet
from shared.store.jobs import JobStore, connect
from shared.store.on_demand import Board, OnDemandBoard, OnDemandWorker

log = logging.getLogger(__name__)

WEIGHTS_RECHECK_S = 30.0  # how often models' weights are looked for again (a pull while up)
FAILED_START_BACKOFF_S = 60.0  # a model whose worker died while starting waits this long
STOP_GRACE_S = 30.0  # an idle worker that has not exited this long after SIGTERM is killed


class OnDemand:
    """Decide, on every tick of `conveyor up`'s loop, which on-demand workers run."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        *,
        redis_url: str,
        pinned: list[str],
        spawn: Callable[[str], Child],
        keep_alive_s: float,
        max_workers: int,
        startup_timeout_s: float = 300.0,
    ) -> None:
        client = connect(redis_url)
        self.store = JobStore(client, ttl_s=settings.result_ttl_s)
        self.fleet = Fleet.from_url(redis_url)
        self.board = OnDemandBoard(client)
        self.registry = registry
        self.settings = settings
        self.pinned = set(pinned)
        self.spawn = spawn
        self.keep_alive_s = keep_alive_s
        self.max_workers = max_workers
        self.startup_timeout_s = startup_timeout_s
        self.children: dict[str, Child] = {}
        self.workers: dict[str, OnDemandWorker] = {}
        self._weights: dict[str, str | None] = {}  # model -> why it cannot start (None: it can)
        self._weights_at = float("-inf")
        self._failed_until: dict[str, float] = {}
        self._jobs_done: dict[str, int] = {}
        self._waiting_logged: set[str] = set()

    # what can start
    def _check_weights(self, t: float) -> None:
        if t - self._weights_at < WEIGHTS_RECHECK_S:
            return
        self._weights_at = t
        for spec in self.registry:
            try:
                resolve_source(spec)
                why = None
            except ConveyorError as exc:
                why = exc.message
            if self._weights.get(spec.id, "") != why:  # changes only, not every look
                log.log(
                    logging.INFO if why is None else logging.DEBUG,
                    "on demand: model %s %s",
                    spec.id,
                    "can start" if why is None else f"cannot start: {why}",
                )
            self._weights[spec.id] = why

    def startable(self) -> list[str]:
        """Models a job may wait for here: weights on this machine (pinned ones included)."""
        t = time.monotonic()
        return [
            m
            for m, why in self._weights.items()
            if why is None and self._failed_until.get(m, 0) <= t
        ]

    # the loop
    def tick(self) -> None:
        """Look at queues and workers once: start, mark ready, stop idle, make room."""
        t = time.monotonic()
        self._check_weights(t)
        startable = self.startable()
        wanted = [m for m in startable if m not in self.pinned]
        depths = {m: sum(d.values()) for m, d in self.store.queue_depths(wanted).items()}
        serving: dict[str, list[dict[str, Any]]] = {}
        for facts in self.fleet.workers():
            serving.setdefault(facts.get("model"), []).append(facts)
        for model in list(self.workers):
            self._follow(model, t, depths.get(model, 0), serving.get(model, []))
        for model in wanted:
            if depths.get(model) and model not in self.workers and not serving.get(model):
                self._start_when_room(model, t)
        self._publish(startable)

    def _follow(self, model: str, t: float, depth: int, facts: list[dict[str, Any]]) -> None:
        worker, child = self.workers[model], self.children[model]
        if not child.alive():
            if worker.state == "starting":
                self._failed_until[model] = t + FAILED_START_BACKOFF_S
                log.error(
                    "on demand: the worker for %s exited with code %s while starting; not "
                    "starting it again for %.0f s. Last lines of %s:\n%s",
                    model,
                    child.proc.returncode,
                    FAILED_START_BACKOFF_S,
                    child.log_path,
                    child.tail(),
                )
            elif worker.state != "stopping":
                log.warning("on demand: the worker for %s exited unexpectedly", model)
            else:
                log.info("on demand: the worker for %s stopped", model)
            del self.workers[model], self.children[model]
            self._jobs_done.pop(model, None)
            return
        if worker.state == "stopping":
            if t - worker.last_active_at > STOP_GRACE_S:
                child.signal(signal.SIGKILL)
            return
        if worker.state == "starting":
            if any(f.get("loaded") for f in facts):
                worker.state, worker.last_active_at = "ready", t
                log.info("on demand: the worker for %s is ready", model)
            elif t - worker.started_at > self.startup_timeout_s:
                log.error("on demand: the worker for %s did not load in time; stopping it", model)
                self._failed_until[model] = t + FAILED_START_BACKOFF_S
                self._stop(model, t)
            return
        done = sum(int(f.get("jobs_done") or 0) for f in facts)
        running = any(f.get("current_job") or f.get("running_jobs") for f in facts)
        if depth or running or done != self._jobs_done.get(model):
            worker.last_active_at = t
            self._jobs_done[model] = done
        elif worker.stops_at is not None and t >= worker.stops_at:
            log.info(
                "on demand: the worker for %s was idle %.0f s; stopping it",
                model,
                t - worker.last_active_at,
            )
            self._stop(model, t)

    def _start_when_room(self, model: str, t: float) -> None:
        if len(self.pinned) + len(self.workers) >= self.max_workers:
            idle = [
                (w.last_active_at, m)
                for m, w in self.workers.items()
                if w.state == "ready" and w.last_active_at < t  # _follow stamps busy ones t
            ]
            stopping = any(w.state == "stopping" for w in self.workers.values())
            if idle and not stopping:
                _, victim = min(idle)
                log.info(
                    "on demand: %s workers running (--max-workers); stopping %s, the least "
                    "recently used idle one, to start %s",
                    self.max_workers,
                    victim,
                    model,
                )
                self._stop(victim, t)
            elif model not in self._waiting_logged:
                self._waiting_logged.add(model)
                log.warning(
                    "on demand: jobs wait for %s, but %s workers run (--max-workers) and none "
                    "is idle; it starts when one is",
                    model,
                    self.max_workers,
                )
            return
        self._waiting_logged.discard(model)
        log.info("on demand: jobs wait for %s and no worker serves it; starting one", model)
        child = self.spawn(model)
        child.restart = False  # this loop, not the supervisor's restart loop, owns it
        child.start()
        self.children[model] = child
        self.workers[model] = OnDemandWorker(
            model=model,
            pid=child.pid,
            started_at=t,
            keep_alive_s=self.keep_alive_s,
            last_active_at=t,
        )

    def _stop(self, model: str, t: float) -> None:
        worker = self.workers[model]
        worker.state, worker.last_active_at = "stopping", t
        # SIGTERM: Celery's warm shutdown lets a job that slipped in meanwhile finish.
        self.children[model].signal(signal.SIGTERM)

    def _publish(self, startable: list[str]) -> None:
        wall = time.time() - time.monotonic()  # monotonic times -> wall clock for readers
        described = {}
        for model, worker in self.workers.items():
            info = worker.describe()
            for key in ("started_at", "last_active_at", "stops_at"):
                if info[key] is not None:
                    info[key] = round(info[key] + wall, 3)
            described[model] = info
        self.board.publish(
            Board(
                startable=startable,
                workers=described,
                keep_alive_s=self.keep_alive_s,
                max_workers=self.max_workers,
            )
        )

    def stop_all(self, grace_s: float = 10.0) -> None:
        """Stop every on-demand worker (conveyor up is stopping) and take the board down."""
        for child in self.children.values():
            child.signal(signal.SIGTERM)
        for child in self.children.values():
            child.stop(grace_s)
        self.children.clear()
        self.workers.clear()
        try:
            self.board.clear()
        except Exception:  # Redis may already be gone; the record expires by itself
            log.debug("on demand: could not clear the board", exc_info=True)
