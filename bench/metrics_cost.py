"""What the metrics cost: a job's end with and without its counts, a scrape by queue size,
an HTTP request's count.

    python -m bench.metrics_cost [--jobs N] [--queued 0,1000,5000]

Runs against its own redis-server (the one `conveyor up` would use); no workers needed:
the store calls are the ones a worker makes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from bench.stats import median, percentile
from shared.config import Settings
from shared.jobs import JobRecord, Priority, new_job_id, now
from shared.metrics import store as metrics
from shared.metrics.collector import FleetCollector
from shared.metrics.store import MetricsStore
from shared.processes.redis_server import find_redis_server, free_port, redis_command
from shared.registry import load_registry
from shared.store.fleet import Fleet
from shared.store.jobs import JobStore, connect
from web.request_metrics import RequestMetrics


def job_end_ms(store: JobStore, jobs: int) -> list[float]:
    """Return the milliseconds of each claim + mark_succeeded (a worker's two writes)."""
    out = []
    for _ in range(jobs):
        job = store.create(
            JobRecord(
                id=new_job_id(),
                model="echo",
                task="echo",
                created_at=now(),
                input={"prompt": "x" * 200},
            )
        )
        t0 = time.perf_counter()
        store.claim(job.id, "bench", lease_s=5, max_deliveries=3)
        store.mark_succeeded(
            job.id, {"text": "y" * 200}, {"completion_tokens": 10, "tokens_per_second": 50.0}
        )
        out.append((time.perf_counter() - t0) * 1000)
    return out


def scrape_ms(store: JobStore, queued: int, rounds: int = 20) -> list[float]:
    """Return the milliseconds of a full /metrics body with `queued` jobs waiting."""
    spec = load_registry(Settings().registry)
    models = [s.id for s in spec]
    for n in range(queued):
        store.create(
            JobRecord(
                id=new_job_id(),
                model=models[n % len(models)],
                task="x",
                created_at=now(),
                priority=list(Priority)[n % 3],
                input={"prompt": "x" * 500},
            )
        )
    registry = CollectorRegistry(auto_describe=False)
    metrics, fleet = MetricsStore.from_store(store), Fleet.from_store(store)
    registry.register(FleetCollector(metrics, store, fleet, spec))
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        generate_latest(registry)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def observe_us(rounds: int = 100_000) -> float:
    """Return the microseconds one request's count takes (in memory; flushed later)."""
    counter = RequestMetrics(MetricsStore(connect("redis://127.0.0.1:1/0")), flush_s=3600)
    counter._flusher_pid = os.getpid()  # measure observe() alone: no flusher thread
    t0 = time.perf_counter()
    for n in range(rounds):
        counter.observe("/v1/jobs/<job_id>", "GET", 200, 0.001 * (n % 50))
    return (time.perf_counter() - t0) / rounds * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--queued", default="0,1000,5000")
    args = parser.parse_args()
    binary = find_redis_server()
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        proc = subprocess.Popen(
            redis_command(binary, Path(folder), port, appendonly=False),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            client = connect(f"redis://127.0.0.1:{port}/0")
            for _ in range(100):
                try:
                    client.ping()
                    break
                except Exception:
                    time.sleep(0.05)
            store = JobStore(client, ttl_s=3600)
            with_counts = job_end_ms(store, args.jobs)
            original = metrics.job_end_writes
            metrics.job_end_writes = lambda rec: []
            try:
                without = job_end_ms(store, args.jobs)
            finally:
                metrics.job_end_writes = original
            print(
                f"job end (claim + mark_succeeded), {args.jobs} jobs: median "
                f"{median(with_counts):.3f} ms with counts, {median(without):.3f} ms without; "
                f"p99 {percentile(with_counts, 99):.3f} / {percentile(without, 99):.3f} ms"
            )
            for queued in [int(q) for q in args.queued.split(",")]:
                client.flushdb()
                times = scrape_ms(store, queued)
                print(
                    f"scrape with {queued} queued jobs: median {median(times):.2f} ms, "
                    f"max {max(times):.2f} ms"
                )
            print(f"one HTTP request's count: {observe_us():.2f} us (in memory)")
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
