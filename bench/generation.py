"""Generation: SmolLM2 tokens/s through conveyor against bare llama-cpp-python.

conveyor side: a chat job over HTTP with `Prefer: wait`, served by a real
`conveyor worker --model smollm2-135m`; tokens/s = completion tokens / wall time of the
request, and the worker's own metrics.tokens_per_second. The worker runs the shipped
registry as a user would (its thread default included). Baseline: llama-cpp-python's
create_chat_completion in this process on the same GGUF, n_ctx, messages and sampling fields
(seed included), at its fastest n_threads on this machine (probed first), alternated with
the conveyor requests; a streamed bare call (what the worker does inside) runs in the same
rounds for reference. `--threads N` pins both sides to N instead.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import requests

from bench.load import alternate_sequential
from bench.stack import Stack
from bench.stats import Goal, Row, median, paired_ratio
from shared.registry import load_registry, resolve_source

log = logging.getLogger(__name__)

MODEL = "smollm2-135m"
GOAL = Goal(0.95, higher_is_better=True)
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."},
]


@dataclass
class GenerationOptions:
    rounds: int = 10  # requests per side
    max_tokens: int = 128
    warmup: int = 1


@dataclass
class Generated:
    wall_s: float
    completion_tokens: int
    text: str
    worker_tps: float | None = None

    @property
    def tps(self) -> float:
        return self.completion_tokens / self.wall_s


def sampling(max_tokens: int) -> dict:
    """Return the sampling fields both sides use, spelled out so no default differs."""
    return {
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "top_p": 0.95,
        "top_k": 40,
        "seed": 1234,
        "repeat_penalty": 1.1,
    }


class ConveyorChat:
    """A chat job over HTTP, held open with Prefer: wait until it ends."""

    def __init__(self, base_url: str, max_tokens: int) -> None:
        self.url = base_url + "/v1/jobs"
        self.body = {
            "model": MODEL,
            "task": "chat",
            "input": {"messages": MESSAGES, **sampling(max_tokens)},
        }
        self.session = requests.Session()

    def __call__(self) -> Generated:
        t0 = time.perf_counter()
        resp = self.session.post(
            self.url, json=self.body, headers={"Prefer": "wait=60"}, timeout=90
        )
        wall = time.perf_counter() - t0
        job = resp.json()
        if resp.status_code != 200 or job.get("status") != "succeeded":
            raise RuntimeError(f"chat job answered {resp.status_code}: {job}")
        metrics = job["metrics"]
        return Generated(
            wall, metrics["completion_tokens"], job["output"]["text"], metrics["tokens_per_second"]
        )


class BareChat:
    """create_chat_completion in this process; streamed like the worker's, or not."""

    def __init__(self, llm, max_tokens: int, *, stream: bool) -> None:
        self.llm = llm
        self.params = sampling(max_tokens)
        self.stream = stream

    def __call__(self) -> Generated:
        t0 = time.perf_counter()
        if not self.stream:
            resp = self.llm.create_chat_completion(messages=MESSAGES, stop=None, **self.params)
            wall = time.perf_counter() - t0
            return Generated(
                wall,
                resp["usage"]["completion_tokens"],
                resp["choices"][0]["message"]["content"] or "",
            )
        parts = [
            chunk["choices"][0]["delta"].get("content")
            for chunk in self.llm.create_chat_completion(
                messages=MESSAGES, stop=None, stream=True, **self.params
            )
        ]
        wall = time.perf_counter() - t0
        parts = [p for p in parts if p]  # counted as the worker counts: non-empty deltas
        return Generated(wall, len(parts), "".join(parts))


def load_bare(stack: Stack, threads: int):
    """Open the worker's GGUF in this process with the worker's options and `threads`."""
    from llama_cpp import Llama

    spec = load_registry(stack.settings.registry).get(MODEL)
    opts = spec.options
    return Llama(
        model_path=str(resolve_source(spec)),
        n_ctx=int(opts.get("n_ctx") or 2048),
        n_threads=threads,
        n_threads_batch=threads,
        n_batch=int(opts.get("n_batch") or 512),
        seed=0xFFFFFFFF,
        verbose=False,
    )


def best_threads(stack: Stack, max_tokens: int) -> tuple[int, dict[int, float]]:
    """Return bare llama-cpp-python's fastest n_threads on this machine, and what each gave.

    The worker runs the shipped registry (its own thread default), so the baseline is bare
    llama-cpp-python at its best, not at whatever the worker chose.
    """
    cores = os.cpu_count() or 1
    counts = sorted(n for n in {1, 2, 4, 8, 16, cores} if n <= cores)
    speed: dict[int, float] = {}
    for threads in counts:
        llm = load_bare(stack, threads)
        try:
            chat = BareChat(llm, max_tokens, stream=False)
            chat()  # warm-up
            speed[threads] = round(median([chat().tps for _ in range(2)]), 2)
        finally:
            llm.close()
    return max(speed, key=speed.get), speed


def run(stack: Stack, opts: GenerationOptions) -> tuple[list[Row], dict]:
    """Measure every side; return report rows and raw details."""
    stack.worker(MODEL)
    conveyor = ConveyorChat(stack.web_url(), opts.max_tokens)
    if stack.threads:
        threads, probe = stack.threads, {}
    else:
        threads, probe = best_threads(stack, opts.max_tokens)
        log.info("generation: bare llama-cpp-python tokens/s by n_threads %s", probe)
    llm = load_bare(stack, threads)
    try:
        sides = {
            "conveyor": conveyor,
            "bare": BareChat(llm, opts.max_tokens, stream=False),
            "bare_stream": BareChat(llm, opts.max_tokens, stream=True),
        }
        log.info("generation: warm-up")
        alternate_sequential(sides, opts.warmup)
        log.info(
            "generation: %s alternated requests per side, max_tokens %s, bare n_threads %s",
            opts.rounds,
            opts.max_tokens,
            threads,
        )
        res = alternate_sequential(sides, opts.rounds)
    finally:
        llm.close()
    for name, samples in res.items():
        if samples.errors:
            raise RuntimeError(
                f"generation: {len(samples.errors)} {name} requests failed: {samples.errors[:3]}"
            )
    conv: list[Generated] = res["conveyor"].results
    bare: list[Generated] = res["bare"].results
    stream: list[Generated] = res["bare_stream"].results
    e2e, worker = [g.tps for g in conv], [g.worker_tps or 0.0 for g in conv]
    rows = [
        Row(
            "tokens/s end to end (HTTP, Prefer: wait)",
            "tok/s",
            median(e2e),
            median([g.tps for g in bare]),
            GOAL,
            paired_ratio(e2e, [g.tps for g in bare]),
        ),
        Row(
            "tokens/s worker-side (metrics)",
            "tok/s",
            median(worker),
            median([g.tps for g in bare]),
            GOAL,
            paired_ratio(worker, [g.tps for g in bare]),
        ),
        Row(
            "tokens/s end to end vs bare streamed",
            "tok/s",
            median(e2e),
            median([g.tps for g in stream]),
            None,
            paired_ratio(e2e, [g.tps for g in stream]),
        ),
        Row(
            "request wall time p50",
            "s",
            median([g.wall_s for g in conv]),
            median([g.wall_s for g in bare]),
            None,
            paired_ratio([g.wall_s for g in conv], [g.wall_s for g in bare]),
        ),
        Row(
            "completion tokens p50",
            "tokens",
            median([g.completion_tokens for g in conv]),
            median([g.completion_tokens for g in bare]),
        ),
    ]
    details = {
        "rounds": opts.rounds,
        "max_tokens": opts.max_tokens,
        "worker_n_threads": stack.threads or "registry default",
        "bare_n_threads": threads,
        "bare_tokens_per_s_by_threads": probe,
        "same_text_as_bare": sum(c.text == b.text for c, b in zip(conv, bare, strict=True)),
        "tokens_per_s": {
            "conveyor_e2e": [round(t, 2) for t in e2e],
            "conveyor_worker": worker,
            "bare": [round(g.tps, 2) for g in bare],
            "bare_stream": [round(g.tps, 2) for g in stream],
        },
    }
    return rows, details
