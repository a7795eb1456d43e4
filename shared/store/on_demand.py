"""What `conveyor up` starts on demand: the models it can start, and when each one stops.

`conveyor up` publishes this board every time it looks at its queues; the web tier reads it
to tell a synchronous request that a worker is on its way (instead of answering 503) and to
show on-demand workers in the fleet views. The record expires soon after `conveyor up`
stops publishing it, so a stack that went away never promises a worker.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from shared.store import keys
from shared.store.job_reads import JobReads


@dataclass
class OnDemandWorker:
    """A worker `conveyor up` started because a job arrived for its model."""

    model: str
    pid: int | None
    started_at: float
    keep_alive_s: float
    state: str = "starting"  # starting | ready | stopping
    last_active_at: float = 0.0

    @property
    def stops_at(self) -> float | None:
        """When it stops if nothing else arrives (None while it starts or works)."""
        if self.state != "ready" or self.keep_alive_s <= 0:
            return None
        return self.last_active_at + self.keep_alive_s

    def describe(self) -> dict[str, Any]:
        return {**asdict(self), "stops_at": self.stops_at}


@dataclass
class Board:
    """The published record."""

    startable: list[str] = field(default_factory=list)
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> describe()
    keep_alive_s: float = 0.0
    max_workers: int = 0
    at: float = 0.0

    def can_start(self, model: str) -> bool:
        return model in self.startable


class OnDemandBoard:
    """Read and write the on-demand board in Redis."""

    def __init__(self, client: redis.Redis, *, ttl_s: float = 10.0) -> None:
        self._r = client
        self.ttl_s = ttl_s

    @classmethod
    def from_store(cls, store: JobReads, **kwargs: Any) -> OnDemandBoard:
        """Return the board on the job store's connection pool."""
        return cls(store.r, **kwargs)

    def publish(self, board: Board) -> None:
        board.at = time.time()
        self._r.set(keys.ON_DEMAND, json.dumps(asdict(board)), px=int(self.ttl_s * 1000))

    def clear(self) -> None:
        self._r.delete(keys.ON_DEMAND)

    def read(self) -> Board:
        """Return the board; an empty one when no `conveyor up` publishes it."""
        raw = self._r.get(keys.ON_DEMAND)
        return Board(**json.loads(raw)) if raw else Board()
