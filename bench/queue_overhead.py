"""Queue overhead: an `echo` job through HTTP against a bare Celery no-op round trip.

conveyor side: POST /v1/jobs {"model": "echo"} with `Prefer: wait` to gunicorn (gthread,
web.wsgi:app), a real `conveyor worker --model echo`, the answer read from the response.
Baseline: `send_task` of a no-op to a minimal Celery worker on the same Redis server, result
backend in Redis, `AsyncResult.get()`. Both run in the same process with the same client
threads, alternated, so machine load hits both alike.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import requests

from bench.bare_celery import round_trip
from bench.load import ClientPool, Samples, alternate_sequential
from bench.stack import Stack
from bench.stats import Goal, Row, Summary

log = logging.getLogger(__name__)

WAIT_S = 30
LATENCY_GOAL = Goal(2.0, higher_is_better=False)
THROUGHPUT_GOAL = Goal(0.5, higher_is_better=True)


@dataclass
class QueueOptions:
    rounds: int = 200  # one-client round trips per side
    clients: int = 16
    jobs: int = 320  # jobs per throughput block
    blocks: int = 3  # throughput blocks per side
    warmup: int = 20


class EchoClient:
    """POST an echo job with Prefer: wait; one keep-alive session per client thread."""

    def __init__(self, base_url: str) -> None:
        self.url = base_url + "/v1/jobs"
        self.local = threading.local()

    def __call__(self) -> str:
        session = getattr(self.local, "session", None)
        if session is None:
            session = self.local.session = requests.Session()
        resp = session.post(
            self.url,
            json={"model": "echo", "input": {"ping": 1}},
            headers={"Prefer": f"wait={WAIT_S}"},
            timeout=WAIT_S + 10,
        )
        job = resp.json()
        if resp.status_code != 200 or job.get("status") != "succeeded":
            raise RuntimeError(f"echo job answered {resp.status_code}: {job}")
        return job["id"]


def run(stack: Stack, opts: QueueOptions) -> tuple[list[Row], dict]:
    """Measure both sides; return report rows and raw details."""
    stack.worker("echo")
    conveyor = EchoClient(stack.web_url())
    bare_app = stack.bare_celery()
    sides = {"conveyor": conveyor, "bare": lambda: round_trip(bare_app, WAIT_S)}

    log.info("queue: warm-up")
    alternate_sequential(sides, opts.warmup)
    log.info("queue: %s alternated one-client rounds", opts.rounds)
    single = alternate_sequential(sides, opts.rounds)
    with ClientPool(opts.clients) as pool:
        for call in sides.values():  # open every client's connections before timing
            pool.block(call, opts.clients * 2, Samples(), deadline_s=60)
        log.info(
            "queue: %s x %s jobs per side with %s clients", opts.blocks, opts.jobs, opts.clients
        )
        loaded = pool.alternate_blocks(sides, opts.jobs, opts.blocks, deadline_s=120)

    for phase in (single, loaded):
        for name, samples in phase.items():
            if not samples.latencies:
                raise RuntimeError(f"queue: every {name} call failed: {samples.errors[:3]}")
    errors = {
        f"{phase} {name}": s.errors[:5]
        for phase, res in (("one client", single), ("loaded", loaded))
        for name, s in res.items()
        if s.errors
    }
    one = {name: Summary.of(s.latencies) for name, s in single.items()}
    many = {name: Summary.of(s.latencies) for name, s in loaded.items()}
    rows = [
        Row(
            "latency p50, 1 client",
            "ms",
            one["conveyor"].p50 * 1e3,
            one["bare"].p50 * 1e3,
            LATENCY_GOAL,
        ),
        Row("latency p95, 1 client", "ms", one["conveyor"].p95 * 1e3, one["bare"].p95 * 1e3),
        Row(
            f"throughput, {opts.clients} clients",
            "jobs/s",
            loaded["conveyor"].throughput,
            loaded["bare"].throughput,
            THROUGHPUT_GOAL,
        ),
        Row(
            f"latency p50, {opts.clients} clients",
            "ms",
            many["conveyor"].p50 * 1e3,
            many["bare"].p50 * 1e3,
        ),
        Row(
            f"latency p95, {opts.clients} clients",
            "ms",
            many["conveyor"].p95 * 1e3,
            many["bare"].p95 * 1e3,
        ),
    ]
    details = {
        "rounds": opts.rounds,
        "clients": opts.clients,
        "jobs_per_block": opts.jobs,
        "blocks_per_side": opts.blocks,
        "jobs": {name: single[name].jobs + loaded[name].jobs for name in sides},
        "errors": errors,
    }
    return rows, details
