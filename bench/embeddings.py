"""Embeddings: 32 concurrent clients, one text each, batched vs one job at a time.

Both sides are real `conveyor worker`s of all-MiniLM-L6-v2 from the shipped registry
behind the same gunicorn: `minilm` as shipped (max_concurrency 32: the texts of
concurrent jobs share forward passes, workers/batching.py) and `minilm-one`, the same
entry with max_concurrency 1 (one job, one forward pass, at a time). Each client sends
POST /v1/embeddings with one text and waits for the answer, then sends the next; blocks
alternate between the sides (A B B A ...) so load drift hits both. Goal: batched >= 2x
the rate of one at a time.
"""

from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass

import requests
import yaml

from bench.load import ClientPool, Samples
from bench.stack import Stack
from bench.stats import Goal, Row, median, percentile

log = logging.getLogger(__name__)

MODEL = "minilm"
ONE_AT_A_TIME = "minilm-one"
GOAL = Goal(2.0, higher_is_better=True)


@dataclass
class EmbeddingsOptions:
    clients: int = 32
    jobs: int = 640  # requests per block (each client sends jobs / clients, one at a time)
    blocks: int = 4  # per side


def prepare(stack: Stack) -> None:
    """Add `minilm-one` to the run's registry; call before any component starts."""
    path = stack.settings.registry
    data = yaml.safe_load(path.read_text())
    minilm = next(m for m in data["models"] if m["id"] == MODEL)
    one = {**minilm, "id": ONE_AT_A_TIME, "aliases": [], "default": False, "max_concurrency": 1}
    data["models"].append(one)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


class Embed:
    """POST /v1/embeddings with one text; a session per client thread."""

    def __init__(self, base_url: str, model: str) -> None:
        self.url = base_url + "/v1/embeddings"
        self.model = model
        self.sessions: dict[int, requests.Session] = {}
        self.count = itertools.count()

    def __call__(self) -> int:
        session = self.sessions.setdefault(threading.get_ident(), requests.Session())
        text = f"client text {next(self.count)}: the quick brown fox jumps over the lazy dog"
        resp = session.post(self.url, json={"model": self.model, "input": text}, timeout=120)
        if resp.status_code != 200:
            raise RuntimeError(f"embeddings answered {resp.status_code}: {resp.text[:200]}")
        return len(resp.json()["data"][0]["embedding"])


def run(stack: Stack, opts: EmbeddingsOptions) -> tuple[list[Row], dict]:
    """Start both workers, alternate blocks of concurrent clients, return the rows."""
    stack.worker(MODEL, timeout=300)
    stack.worker(ONE_AT_A_TIME, timeout=300)
    url = stack.web_url()
    sides = {"batched": Embed(url, MODEL), "one_at_a_time": Embed(url, ONE_AT_A_TIME)}
    with ClientPool(opts.clients) as pool:
        for call in sides.values():  # warm: connections, the first passes
            pool.block(call, opts.clients, Samples(), deadline_s=120)
        out = pool.alternate_blocks(sides, opts.jobs, opts.blocks, deadline_s=600)
    batched, one = out["batched"], out["one_at_a_time"]
    errors = {name: s.errors[:5] for name, s in out.items() if s.errors}
    rows = [
        Row(
            f"{opts.clients} clients, one text each: requests/s",
            "req/s",
            batched.throughput,
            one.throughput,
            GOAL,
        ),
        Row(
            "latency p50",
            "ms",
            median(batched.latencies) * 1000,
            median(one.latencies) * 1000,
        ),
        Row(
            "latency p95",
            "ms",
            percentile(batched.latencies, 95) * 1000,
            percentile(one.latencies, 95) * 1000,
        ),
    ]
    details = {
        "clients": opts.clients,
        "jobs_per_block": opts.jobs,
        "blocks": opts.blocks,
        "requests": {name: s.jobs for name, s in out.items()},
        "errors": errors,
        "ratio": round(batched.throughput / one.throughput, 3) if one.throughput else None,
    }
    log.info(
        "embeddings: batched %.1f req/s, one at a time %.1f req/s, ratio %s",
        batched.throughput,
        one.throughput,
        details["ratio"],
    )
    return rows, details
