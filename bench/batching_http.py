"""Batching through the whole stack: `python -m bench batching`.

At 1, 4, 8 and 16 concurrent clients, each streaming chats over HTTP, side by side in one
run on the same GGUF and thread count:

- conveyor: the OpenAI chat route of a real gunicorn in front of a real
  `conveyor worker --model smollm2-135m` with the shipped registry (its max_concurrency);
- llama_cpp.server: llama-cpp-python's own OpenAI server (`python -m llama_cpp.server`,
  the stack of the llama.cpp seed server), same GGUF, n_ctx and threads;
- ceiling: bare llama-cpp-python decoding N greedy sequences in one batch (bench/batching.py);
- bare: llama-cpp-python's Llama serving the N clients one at a time in one thread;
- engine: conveyor's llama.cpp backend called from N threads in one process (no HTTP).

Aggregate tokens/s = content deltas received by all clients / wall time; time to first
token is per request, from sending it to its first content delta. Goals (issue 11): at 8
clients >= 3x llama_cpp.server and >= 0.8x the ceiling; at 1 client >= 0.95x bare.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import requests

from bench.procs import wait_until
from bench.stack import HOST, ROOT, Stack
from bench.stats import Goal, Row, percentile
from shared.processes.child import Child, child_env
from shared.processes.redis_server import free_port
from shared.registry import load_registry, resolve_source
from workers.cpu import default_threads, read_cpu

log = logging.getLogger(__name__)

MODEL = "smollm2-135m"
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."},
]
IN_PROCESS = ("ceiling", "bare", "engine")


@dataclass
class BatchingOptions:
    clients: tuple[int, ...] = (1, 4, 8, 16)
    requests: int = 2  # chats per client, one after another
    max_tokens: int = 128


def stream_chat(session: requests.Session, url: str, max_tokens: int) -> tuple[int, float]:
    """Stream one chat; return (content deltas, seconds to the first one)."""
    body = {
        "model": MODEL,
        "messages": MESSAGES,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    t0 = time.perf_counter()
    first, count = None, 0
    with session.post(url + "/v1/chat/completions", json=body, stream=True, timeout=600) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{url} answered {resp.status_code}: {resp.text[:300]}")
        for line in resp.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    first = first if first is not None else time.perf_counter() - t0
                    count += 1
    return count, first if first is not None else time.perf_counter() - t0


def http_clients(url: str, n: int, opts: BatchingOptions) -> dict:
    """n clients at once, each sending opts.requests streamed chats one after another."""
    results: list[tuple[int, float]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client() -> None:
        session = requests.Session()
        for _ in range(opts.requests):
            try:
                r = stream_chat(session, url, opts.max_tokens)
            except Exception as exc:  # reported after the run
                with lock:
                    errors.append(exc)
                return
            with lock:
                results.append(r)

    stream_chat(requests.Session(), url, 4)  # warm-up
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} clients failed at {url}: {errors[0]}")
    ttft = [r[1] for r in results]
    return {
        "tok_s": sum(r[0] for r in results) / wall,
        "ttft_p50": percentile(ttft, 50),
        "ttft_p95": percentile(ttft, 95),
    }


def start_llama_server(stack: Stack, path: str, threads: int, n_ctx: int) -> str:
    """Start `python -m llama_cpp.server` on the GGUF; return its base URL."""
    port = free_port(HOST)
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        path,
        "--host",
        HOST,
        "--port",
        str(port),
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        "--n_ctx",
        str(n_ctx),
        # its default cuts a streaming request off when the next one arrives; queue them
        "--interrupt_requests",
        "False",
    ]
    child = Child("llama-server", cmd, child_env(None), stack.logs / "llama-server.log", cwd=ROOT)
    stack.children.append(child.start())
    url = f"http://{HOST}:{port}"

    def up() -> bool:
        try:
            return requests.get(url + "/v1/models", timeout=1).ok
        except requests.RequestException:
            return False

    wait_until(up, timeout=120, what="llama_cpp.server", child=child)
    return url


def in_process(side: str, n: int, threads: int, tokens: int) -> dict:
    """Run one side of bench/batching.py in its own process (one copy of ggml per process)."""
    cmd = [sys.executable, "-m", "bench.batching", "--side", side, "--clients", str(n)]
    cmd += ["--tokens", str(tokens), "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"bench.batching --side {side} failed: {proc.stderr[-500:]}")
    return json.loads(lines[-1])


def run(stack: Stack, opts: BatchingOptions) -> tuple[list[Row], dict]:
    spec = load_registry(stack.settings.registry).get(MODEL)
    path = str(resolve_source(spec))
    threads = int(spec.options.get("n_threads") or stack.threads or default_threads(read_cpu()))
    n_ctx = int(spec.options.get("n_ctx") or 2048)
    stack.worker(MODEL)
    conveyor = stack.web_url()
    server = start_llama_server(stack, path, threads, n_ctx)
    rows: dict[str, dict[int, dict]] = {}
    for n in opts.clients:  # sides alternate per client count, so drift hits all alike
        log.info("batching: %s clients", n)
        rows.setdefault("conveyor", {})[n] = http_clients(conveyor, n, opts)
        rows.setdefault("llama_cpp.server", {})[n] = http_clients(server, n, opts)
        for side in IN_PROCESS:
            rows.setdefault(side, {})[n] = in_process(side, n, threads, opts.max_tokens)
    return report(rows, opts), {
        "threads": threads,
        "max_tokens": opts.max_tokens,
        "requests_per_client": opts.requests,
        "load": os.getloadavg(),
        "sides": {side: {str(n): v for n, v in by_n.items()} for side, by_n in rows.items()},
        "table": side_by_side(rows, opts.clients),
    }


def report(rows: dict[str, dict[int, dict]], opts: BatchingOptions) -> list[Row]:
    """The goal rows, then conveyor against llama_cpp.server at every client count."""

    def tps(side: str, n: int) -> float:
        return rows[side].get(n, {}).get("tok_s", float("nan"))

    out = []
    if 8 in opts.clients:
        out.append(
            Row(
                "8 clients vs llama_cpp.server",
                "tok/s",
                tps("conveyor", 8),
                tps("llama_cpp.server", 8),
                Goal(3.0, True),
            )
        )
        out.append(
            Row(
                "8 clients vs ceiling",
                "tok/s",
                tps("conveyor", 8),
                tps("ceiling", 8),
                Goal(0.8, True),
            )
        )
    if 1 in opts.clients:
        out.append(
            Row("1 client vs bare", "tok/s", tps("conveyor", 1), tps("bare", 1), Goal(0.95, True))
        )
    for n in opts.clients:
        out.append(
            Row(
                f"{n} clients vs llama_cpp.server",
                "tok/s",
                tps("conveyor", n),
                tps("llama_cpp.server", n),
            )
        )
        p50 = [rows[s][n]["ttft_p50"] for s in ("conveyor", "llama_cpp.server")]
        out.append(Row(f"{n} clients TTFT p50 vs llama_cpp.server", "s", *p50))
    return out


def side_by_side(rows: dict[str, dict[int, dict]], clients) -> str:
    """Every side at every client count: tokens/s and TTFT p50/p95."""
    sides = list(rows)
    lines = [
        "| clients | "
        + " | ".join(f"{s} tok/s" for s in sides)
        + " | "
        + " | ".join(f"{s} TTFT p50/p95 s" for s in sides)
        + " |",
        "|---" * (1 + 2 * len(sides)) + "|",
    ]
    for n in clients:
        r = {s: rows[s][n] for s in sides}
        lines.append(
            f"| {n} | "
            + " | ".join(f"{r[s]['tok_s']:.1f}" for s in sides)
            + " | "
            + " | ".join(f"{r[s]['ttft_p50']:.2f}/{r[s]['ttft_p95']:.2f}" for s in sides)
            + " |"
        )
    return "\n".join(lines)
