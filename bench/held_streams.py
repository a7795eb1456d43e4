"""Thousands of clients waiting at once: event streams and `Prefer: wait` held by one process.

A few long echo jobs run; thousands of clients follow their events over SSE while hundreds
of `Prefer: wait` submits wait for echo jobs queued behind them. While all of them are
held, a probe thread times `/healthz`, `/readyz` and plain submits. The client is asyncio
(aiohttp), one connection per client, all on loopback; every count and wait is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field

import aiohttp
import psutil
import redis
import requests

from bench.stats import percentile

log = logging.getLogger(__name__)

TERMINAL = ("succeeded", "failed", "canceled")
RAMP_BATCH = 250  # clients opened at once, then a short pause: a burst past the listen
RAMP_PAUSE_S = 0.1  # backlog would cost the last ones a SYN retry (1 s and more)


@dataclass
class HeldOptions:
    streams: int = 2000  # SSE clients, spread over the long jobs
    waits: int = 500  # `Prefer: wait` submits of echo jobs queued behind the long ones
    jobs: int = 4  # long echo jobs (the echo worker needs as many pool processes)
    job_s: float = 30.0  # how long each long job runs
    probe_s: float = 10.0  # how long the probes run while everything is held
    quiet_s: float = 3.0  # window for Redis commands/s, idle and held
    first_event_s: float = 5.0  # the goal for a stream's first event
    wait_s: int = 60  # Prefer: wait=N of the waiting submits


@dataclass
class Client:
    """What one held client saw, in seconds since it sent its request."""

    job_id: str
    first: float | None = None
    terminal: str | None = None
    ended: float | None = None
    error: str | None = None


@dataclass
class Probes:
    """Latencies of requests made while the clients are held, per route, in seconds."""

    latency: dict[str, list[float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def p99(self, route: str) -> float:
        values = self.latency.get(route) or []
        return percentile(values, 99) if values else float("nan")


def submit(url: str, body: dict, timeout: float = 10) -> dict:
    """Submit a job and return its record. :raises requests.HTTPError: not accepted."""
    resp = requests.post(f"{url}/v1/jobs", json=body, timeout=timeout)
    resp.raise_for_status()
    return resp.json()


def start_long_jobs(url: str, opts: HeldOptions, timeout: float = 60) -> list[str]:
    """Submit the long echo jobs and wait until every one runs; return their ids.

    :raises TimeoutError: when they do not all start within timeout.
    """
    ids = [
        submit(url, {"model": "echo", "input": {"sleep_s": opts.job_s, "n": i}})["id"]
        for i in range(opts.jobs)
    ]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [requests.get(f"{url}/v1/jobs/{i}", timeout=10).json()["status"] for i in ids]
        if all(s == "running" for s in states):
            return ids
        time.sleep(0.2)
    raise TimeoutError(f"long jobs did not all start: {states}")


async def _stream(session: aiohttp.ClientSession, url: str, client: Client) -> None:
    t0 = time.monotonic()
    event = None
    try:
        async with session.get(f"{url}/v1/jobs/{client.job_id}/events") as resp:
            if resp.status != 200:
                client.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return
            async for raw in resp.content:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("event:"):
                    event = line[6:].strip()
                    if client.first is None:
                        client.first = time.monotonic() - t0
                elif line.startswith("data:") and event == "status":
                    status = next((s for s in TERMINAL if f'"{s}"' in line), None)
                    if status:
                        client.terminal, client.ended = status, time.monotonic() - t0
                        return
    except (TimeoutError, aiohttp.ClientError) as exc:
        client.error = repr(exc)


async def _wait(session: aiohttp.ClientSession, url: str, client: Client, wait_s: int) -> None:
    t0 = time.monotonic()
    try:
        async with session.post(
            f"{url}/v1/jobs",
            json={"model": "echo", "input": {"w": 1}},
            headers={"Prefer": f"wait={wait_s}"},
        ) as resp:
            body = await resp.json()
            client.first = client.ended = time.monotonic() - t0
            client.job_id = body.get("id", "")
            if resp.status == 200:
                client.terminal = body.get("status")
            else:
                client.error = f"HTTP {resp.status}: {body.get('status') or body}"
    except (TimeoutError, aiohttp.ClientError) as exc:
        client.error = repr(exc)


async def _hold(
    url: str, job_ids: list[str], opts: HeldOptions, held: threading.Event, limit_s: float
) -> tuple[list[Client], list[Client]]:
    streams = [Client(job_ids[i % len(job_ids)]) for i in range(opts.streams)]
    waits = [Client("") for _ in range(opts.waits)]
    timeout = aiohttp.ClientTimeout(total=limit_s, sock_connect=30)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        # Streams and waits interleaved, so both ramp up together.
        total = len(streams) + len(waits)
        starts = [(i * total / len(streams), _stream, c) for i, c in enumerate(streams)]
        starts += [(i * total / len(waits), _wait, c) for i, c in enumerate(waits)]
        starts.sort(key=lambda item: item[0])
        tasks = []
        for first in range(0, total, RAMP_BATCH):
            for _order, kind, client in starts[first : first + RAMP_BATCH]:
                coro = (
                    _stream(session, url, client)
                    if kind is _stream
                    else _wait(session, url, client, opts.wait_s)
                )
                tasks.append(asyncio.ensure_future(coro))
            await asyncio.sleep(RAMP_PAUSE_S)
        deadline = time.monotonic() + limit_s
        while any(c.first is None and c.error is None for c in streams):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the last waits reach the server
        held.set()
        await asyncio.wait(tasks, timeout=max(1.0, deadline - time.monotonic()))
        for task in tasks:
            task.cancel()
    return streams, waits


def hold(
    url: str, job_ids: list[str], opts: HeldOptions, *, while_held=None, limit_s: float = 120
) -> tuple[list[Client], list[Client], object]:
    """Hold the streams and waits on job_ids until their jobs end; return what each saw.

    while_held(), when given, runs in a thread once every stream had its first event, and
    its return value comes back third.
    """
    held = threading.Event()
    out: dict = {}

    def measure() -> None:
        if held.wait(limit_s) and while_held is not None:
            out["value"] = while_held()

    thread = threading.Thread(target=measure, daemon=True)
    thread.start()
    streams, waits = asyncio.run(_hold(url, job_ids, opts, held, limit_s))
    thread.join(limit_s)
    return streams, waits, out.get("value")


def probe(url: str, seconds: float, *, rate_hz: float = 20.0) -> Probes:
    """Time /healthz, /readyz and a plain submit, one after another, for seconds."""
    probes = Probes()
    session = requests.Session()
    calls = {
        "healthz": lambda: session.get(f"{url}/healthz", timeout=10),
        "readyz": lambda: session.get(f"{url}/readyz", timeout=10),
        "submit": lambda: session.post(
            f"{url}/v1/jobs", timeout=10, json={"model": "echo", "input": {"probe": True}}
        ),
    }
    expected = {"healthz": 200, "readyz": 200, "submit": 202}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for route, call in calls.items():
            t0 = time.monotonic()
            try:
                status = call().status_code
            except requests.RequestException as exc:
                probes.failures.append(f"{route}: {exc!r}")
                continue
            probes.latency.setdefault(route, []).append(time.monotonic() - t0)
            if status != expected[route]:
                probes.failures.append(f"{route}: HTTP {status}")
        time.sleep(1 / rate_hz)
    return probes


# the benchmark
@dataclass(frozen=True)
class Sample:
    """Redis connections and commands/s, and the web workers' memory, over a window."""

    connections: int
    commands_per_s: float
    rss_bytes: int
    top: dict[str, float]  # the busiest commands, calls/s


def _calls(client: redis.Redis) -> dict[str, int]:
    return {
        name.removeprefix("cmdstat_"): stat["calls"]
        for name, stat in client.info("commandstats").items()
    }


def sample(client: redis.Redis, pids: list[int], seconds: float) -> Sample:
    """Measure Redis and the web workers' RSS over a quiet window of seconds."""
    before = _calls(client)
    t0 = time.monotonic()
    time.sleep(seconds)
    after = _calls(client)
    elapsed = time.monotonic() - t0
    rates = {k: (v - before.get(k, 0)) / elapsed for k, v in after.items()}
    rates["info"] = max(0.0, rates.get("info", 0.0) - 1 / elapsed)  # less our own INFO
    top = dict(
        sorted(((k, round(v, 1)) for k, v in rates.items() if v > 0), key=lambda kv: -kv[1])[:6]
    )
    rss = sum(psutil.Process(pid).memory_info().rss for pid in pids)
    return Sample(client.info("clients")["connected_clients"], sum(rates.values()), rss, top)


def _row(metric: str, unit: str, idle: float, held: float, goal: float | None) -> dict:
    return {
        "metric": metric,
        "unit": unit,
        "idle": idle,
        "held": held,
        "goal": None if goal is None else f"<= {goal:g}",
        "met": None if goal is None else (held <= goal),
    }


def table(title: str, rows: list[dict]) -> str:
    """Return the rows as a Markdown table: idle, held, goal."""
    lines = [f"### {title}", "", "| metric | idle | held | goal |", "| --- | ---: | ---: | --- |"]
    for r in rows:
        goal = "" if r["goal"] is None else f"{r['goal']} {'met' if r['met'] else 'MISSED'}"
        idle = "" if r["idle"] is None else f"{r['idle']:.3g}"
        lines.append(f"| {r['metric']} ({r['unit']}) | {idle} | {r['held']:.3g} | {goal} |")
    return "\n".join(lines)


def run(stack, opts: HeldOptions) -> tuple[list[dict], dict]:
    """Hold the streams and waits against one gunicorn worker; return rows and details."""
    url = stack.web_url()
    stack.worker("echo", concurrency=opts.jobs, name="worker-echo-held")
    pids = stack.web_worker_pids()
    client = redis.Redis.from_url(stack.settings.redis_url)
    idle = probe(url, 3.0)
    job_ids = start_long_jobs(url, opts)
    base = sample(client, pids, opts.quiet_s)
    log.info(
        "held: %d streams on %d jobs of %gs, %d waits",
        opts.streams,
        opts.jobs,
        opts.job_s,
        opts.waits,
    )

    def while_held() -> tuple[Sample, Probes]:
        return sample(client, pids, opts.quiet_s), probe(url, opts.probe_s)

    streams, waits, measured = hold(
        url, job_ids, opts, while_held=while_held, limit_s=opts.job_s + opts.wait_s + 30
    )
    if measured is None:
        raise RuntimeError("the streams were never all held")
    held, probes = measured
    errors = [c.error for c in streams + waits if c.error] + probes.failures
    firsts = [c.first for c in streams if c.first is not None]
    details = {
        "streams": opts.streams,
        "waits": opts.waits,
        "jobs": opts.jobs,
        "job_s": opts.job_s,
        "first_event_p50_s": percentile(firsts, 50) if firsts else None,
        "first_event_p99_s": percentile(firsts, 99) if firsts else None,
        "probes": {route: len(v) for route, v in probes.latency.items()},
        "redis_connections": {"base": base.connections, "held": held.connections},
        "redis_commands_per_s": {
            "base": round(base.commands_per_s, 1),
            "held": round(held.commands_per_s, 1),
        },
        "redis_top_commands_per_s": {"base": base.top, "held": held.top},
        "web_rss_mib": {
            "base": round(base.rss_bytes / 2**20, 1),
            "held": round(held.rss_bytes / 2**20, 1),
        },
        "errors": errors[:10],
    }
    return _rows(opts, streams, waits, errors, (idle, probes), (base, held)), details


def _rows(
    opts: HeldOptions,
    streams: list[Client],
    waits: list[Client],
    errors: list[str],
    probes: tuple[Probes, Probes],
    samples: tuple[Sample, Sample],
) -> list[dict]:
    """Return the goals' rows and the per-client costs, idle against held."""
    idle, held_probes = probes
    base, held = samples
    clients = opts.streams + opts.waits
    firsts = [c.first for c in streams if c.first is not None]
    first_max = max(firsts) if len(firsts) == len(streams) else float("inf")
    rows = [
        _row("streams' first event, max", "s", None, first_max, opts.first_event_s),
        _row(
            "streams without their terminal event",
            "clients",
            None,
            sum(c.terminal is None for c in streams),
            0,
        ),
        _row(
            "waits not answered 200 with the ended job",
            "clients",
            None,
            sum(c.terminal not in TERMINAL for c in waits),
            0,
        ),
        _row("errors (clients and probes)", "count", None, len(errors), 0),
    ]
    for route in ("healthz", "readyz", "submit"):
        name = "submit p99" if route == "submit" else f"/{route} p99"
        rows.append(_row(name, "ms", idle.p99(route) * 1e3, held_probes.p99(route) * 1e3, 100))
    return rows + [
        _row(
            "web memory per held client",
            "KiB",
            None,
            (held.rss_bytes - base.rss_bytes) / clients / 1024,
            None,
        ),
        _row(
            "Redis connections per held client",
            "conn",
            None,
            (held.connections - base.connections) / clients,
            None,
        ),
        _row(
            "Redis commands/s per held client",
            "cmd/s",
            None,
            (held.commands_per_s - base.commands_per_s) / clients,
            None,
        ),
    ]
