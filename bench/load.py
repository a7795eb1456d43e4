"""Drive two sides of a comparison the same way: alternated, one client or many."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

Call = Callable[[], object]


@dataclass
class Samples:
    """What one side measured: latencies (s), per-call results, errors, busy wall time."""

    latencies: list[float] = field(default_factory=list)
    results: list[object] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    jobs: int = 0
    wall_s: float = 0.0

    @property
    def throughput(self) -> float:
        return self.jobs / self.wall_s if self.wall_s else 0.0


def timed(call: Call, samples: Samples) -> None:
    """Run one call, adding its latency and result (or its error) to samples."""
    t0 = time.perf_counter()
    try:
        result = call()
    except Exception as exc:  # counted and reported, never silently dropped
        samples.errors.append(f"{type(exc).__name__}: {exc}")
        return
    samples.latencies.append(time.perf_counter() - t0)
    samples.results.append(result)
    samples.jobs += 1


def alternate_sequential(sides: dict[str, Call], rounds: int) -> dict[str, Samples]:
    """Call each side once per round, one at a time, flipping the order every round."""
    names = list(sides)
    out = {name: Samples() for name in names}
    for i in range(rounds):
        for name in names if i % 2 == 0 else reversed(names):
            timed(sides[name], out[name])
    return out


class ClientPool:
    """A fixed set of client threads (their connections persist between blocks)."""

    def __init__(self, clients: int) -> None:
        self.clients = clients
        self.executor = ThreadPoolExecutor(clients, thread_name_prefix="bench-client")
        self.stopping = threading.Event()

    def __enter__(self) -> ClientPool:
        return self

    def __exit__(self, *_exc) -> None:
        self.stopping.set()  # on Ctrl-C, clients stop after their current call
        self.executor.shutdown(wait=True, cancel_futures=True)

    def block(self, call: Call, jobs: int, samples: Samples, *, deadline_s: float) -> None:
        """Run `jobs` calls spread over every client at once; add to samples."""
        per_client = [
            jobs // self.clients + (1 if i < jobs % self.clients else 0)
            for i in range(self.clients)
        ]
        stop_at = time.monotonic() + deadline_s

        def client(count: int) -> Samples:
            mine = Samples()
            for _ in range(count):
                if self.stopping.is_set():
                    break
                if time.monotonic() > stop_at:
                    mine.errors.append("block deadline passed")
                    break
                timed(call, mine)
            return mine

        t0 = time.perf_counter()
        futures = [self.executor.submit(client, n) for n in per_client if n]
        parts = [f.result() for f in futures]
        wall = time.perf_counter() - t0
        for part in parts:
            samples.latencies += part.latencies
            samples.results += part.results
            samples.errors += part.errors
            samples.jobs += part.jobs
        samples.wall_s += wall

    def alternate_blocks(
        self, sides: dict[str, Call], jobs: int, blocks: int, *, deadline_s: float
    ) -> dict[str, Samples]:
        """Run `blocks` blocks per side, in A B B A ... order so load drift hits both."""
        names = list(sides)
        out = {name: Samples() for name in names}
        for b in range(blocks):
            for name in names if b % 2 == 0 else reversed(names):
                self.block(sides[name], jobs, out[name], deadline_s=deadline_s)
                log.info(
                    "block %s/%s %s: %.0f jobs/s so far", b + 1, blocks, name, out[name].throughput
                )
        return out
