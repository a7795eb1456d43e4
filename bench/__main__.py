"""`python -m bench [all|queue|generation|held]`: run benchmarks and print their tables."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time

from bench import batching_http, embeddings, generation, held_streams, queue_overhead
from bench.procs import StartFailed
from bench.report import machine, table
from bench.stack import Stack
from shared.logs import setup_logging
from shared.processes.gunicorn import raise_open_files_limit

log = logging.getLogger("bench")

BENCHMARKS = ("queue", "generation", "held", "embeddings", "batching")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    q, g = queue_overhead.QueueOptions(), generation.GenerationOptions()
    h = held_streams.HeldOptions()
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark conveyor against bare baselines, side by side in one run: "
        "queue (echo job over HTTP vs a bare Celery no-op) and generation "
        "(SmolLM2 through conveyor vs bare llama-cpp-python), and held (thousands "
        "of SSE clients and Prefer: wait requests held by one web process, with "
        "health and submit latency meanwhile), and embeddings (32 clients, one text "
        "each, MiniLM batched vs one job at a time). Only the ratios mean something on "
        "a busy machine. See docs/benchmarks.md.",
    )
    parser.add_argument(
        "benchmark",
        nargs="?",
        default="all",
        choices=("all", *BENCHMARKS),
        help="which benchmark to run (default: all)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=q.rounds,
        help="queue: one-client round trips per side (default %(default)s)",
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=q.clients,
        help="queue: concurrent clients for throughput (default %(default)s)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=q.jobs,
        help="queue: jobs per throughput block (default %(default)s)",
    )
    parser.add_argument(
        "--blocks",
        type=int,
        default=q.blocks,
        help="queue: throughput blocks per side (default %(default)s)",
    )
    parser.add_argument(
        "--gen-rounds",
        type=int,
        default=g.rounds,
        help="generation: requests per side (default %(default)s)",
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=g.max_tokens,
        help="generation: max_tokens per request (default %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="generation: pin llama.cpp n_threads on both sides (default: the "
        "worker runs the shipped registry, bare runs at its best count)",
    )
    parser.add_argument(
        "--streams", type=int, default=h.streams, help="held: SSE clients (default %(default)s)"
    )
    parser.add_argument(
        "--waits",
        type=int,
        default=h.waits,
        help="held: Prefer: wait submits (default %(default)s)",
    )
    parser.add_argument(
        "--held-jobs",
        type=int,
        default=h.jobs,
        help="held: long echo jobs the streams follow (default %(default)s)",
    )
    parser.add_argument(
        "--job-s",
        type=float,
        default=h.job_s,
        help="held: seconds each long job runs (default %(default)s)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few rounds only: checks the benchmark runs, not the numbers",
    )
    emb = embeddings.EmbeddingsOptions()
    parser.add_argument(
        "--emb-jobs",
        type=int,
        default=emb.jobs,
        help=f"embeddings: requests per block, over {emb.clients} clients (default %(default)s)",
    )
    parser.add_argument(
        "--emb-blocks",
        type=int,
        default=emb.blocks,
        help="embeddings: blocks per side (default %(default)s)",
    )
    parser.add_argument(
        "--batch-clients",
        type=int,
        nargs="+",
        default=list(batching_http.BatchingOptions.clients),
        help="batching: concurrent clients, one run each (default %(default)s)",
    )
    parser.add_argument(
        "--batch-requests",
        type=int,
        default=batching_http.BatchingOptions.requests,
        help="batching: streamed chats per client (default %(default)s)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument(
        "--keep-logs",
        action="store_true",
        help="keep the components' logs (printed path) after the run",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.jobs, args.blocks = 20, args.clients * 2, 1
        args.gen_rounds, args.max_tokens = 1, 32
        args.streams, args.waits, args.job_s = 200, 50, 20.0
        args.emb_jobs, args.emb_blocks = 64, 1
        args.batch_clients, args.batch_requests = [1, 4], 1
    for name in (
        "rounds",
        "clients",
        "jobs",
        "blocks",
        "gen_rounds",
        "max_tokens",
        "streams",
        "waits",
        "held_jobs",
        "emb_jobs",
        "emb_blocks",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> dict:
    """Run the chosen benchmarks on one stack; print each table as it completes."""
    chosen = BENCHMARKS if args.benchmark == "all" else (args.benchmark,)
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "load_before": os.getloadavg(),
        "benchmarks": {},
    }
    with Stack(threads=args.threads, keep_logs=args.keep_logs) as stack:
        if "embeddings" in chosen:
            embeddings.prepare(stack)  # its second model, before the web reads the registry
        for name in chosen:
            t0 = time.monotonic()
            if name == "embeddings":
                rows, details = embeddings.run(
                    stack,
                    embeddings.EmbeddingsOptions(jobs=args.emb_jobs, blocks=args.emb_blocks),
                )
                title = "Embeddings: 32 clients, one text each, batched vs one job at a time"
            elif name == "batching":
                rows, details = batching_http.run(
                    stack,
                    batching_http.BatchingOptions(
                        clients=tuple(args.batch_clients),
                        requests=args.batch_requests,
                        max_tokens=args.max_tokens,
                    ),
                )
                title = "Batching: SmolLM2 for many clients, conveyor vs llama_cpp.server"
                print(f"\n{details['table']}", flush=True)
            elif name == "queue":
                rows, details = queue_overhead.run(
                    stack,
                    queue_overhead.QueueOptions(
                        rounds=args.rounds, clients=args.clients, jobs=args.jobs, blocks=args.blocks
                    ),
                )
                title = "Queue overhead: echo job over HTTP vs bare Celery no-op"
            elif name == "generation":
                rows, details = generation.run(
                    stack,
                    generation.GenerationOptions(
                        rounds=args.gen_rounds, max_tokens=args.max_tokens
                    ),
                )
                title = "Generation: SmolLM2 through conveyor vs bare llama-cpp-python"
            else:
                raise_open_files_limit(args.streams + args.waits + 1000)  # our client sockets
                held_rows, details = held_streams.run(
                    stack,
                    held_streams.HeldOptions(
                        streams=args.streams,
                        waits=args.waits,
                        jobs=args.held_jobs,
                        job_s=args.job_s,
                    ),
                )
                title = (
                    f"Held: {args.streams} SSE clients and {args.waits} Prefer: wait "
                    f"requests on one gunicorn worker"
                )
                details["seconds"] = round(time.monotonic() - t0, 1)
                print(
                    f"\n{held_streams.table(title, held_rows)}\n\n{json.dumps(details)}", flush=True
                )
                results["benchmarks"][name] = {"rows": held_rows, **details}
                continue
            details["seconds"] = round(time.monotonic() - t0, 1)
            print(f"\n{table(title, rows)}\n\n{json.dumps(details)}", flush=True)
            results["benchmarks"][name] = {"rows": [r.as_dict() for r in rows], **details}
    results["load_after"] = os.getloadavg()
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(os.environ.get("BENCH_LOG_LEVEL", "INFO"))
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    try:
        results = run(args)
    except KeyboardInterrupt:
        print("\nbench: interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    except StartFailed as exc:
        print(f"bench: a component did not start: {exc}", file=sys.stderr)
        return 2
    m = results["machine"]
    print(
        f"\nmachine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Python "
        f"{m['python']}; load average before {results['load_before'][0]:.2f}, after "
        f"{results['load_after'][0]:.2f}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    missed = [
        r["metric"] for b in results["benchmarks"].values() for r in b["rows"] if r["met"] is False
    ]
    if missed:
        print(f"goals missed: {', '.join(missed)}")
    return 1 if missed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
