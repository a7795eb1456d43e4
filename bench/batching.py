"""Batching engines for llama.cpp, side by side: what one model copy gives many clients.

`python -m bench.batching` measures, in one run on this machine and the same GGUF and
thread count, aggregate tokens/s and time to first token at 1, 4, 8 and 16 concurrent
clients for:

- `ceiling`: bare llama-cpp-python's low-level API decoding N sequences in one batch
  (one context, n_seq_max=N, unified KV cache, greedy); no scheduler, no HTTP: the most one
  model copy can give N clients on this CPU.
- `xllamacpp`: llama.cpp's own server engine embedded in-process (slots, continuous
  batching, chunked prefill), driven through its Python API from N threads.
- `bare` (was `sequential`): llama-cpp-python's Llama, N clients arriving at once and
  served one after another by one model copy in one thread (the worker before batching).
- `engine`: conveyor's llama.cpp backend (workers/backends/llamacpp.py, the shipped
  registry entry) called from N job threads in this process: the batch engine without
  Redis or HTTP.

`python -m bench batching` runs the same sides beside conveyor over HTTP and
llama-cpp-python's own server (bench/batching_http.py).

Each side runs in its own subprocess so two copies of ggml never share a process. This is
the measurement behind the engine choice in docs/batching.md, not a goal check.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

from workers.cpu import default_threads, read_cpu

PROMPT = "Write a long story about a lighthouse keeper and a storm."
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": PROMPT},
]
CLIENTS = (1, 4, 8, 16)


def gguf_path() -> str:
    from shared.config import Settings
    from shared.registry import load_registry, resolve_source

    return str(resolve_source(load_registry(Settings().registry).get("smollm2-135m")))


def run_ceiling(path: str, threads: int, n: int, tokens: int) -> dict:
    """Decode n greedy sequences of `tokens` tokens in one llama.cpp batch per step."""
    import llama_cpp as lc
    import numpy as np

    model = lc.llama_model_load_from_file(path.encode(), lc.llama_model_default_params())
    vocab = lc.llama_model_get_vocab(model)
    text = PROMPT.encode()
    buf = (lc.llama_token * 512)()
    n_prompt = lc.llama_tokenize(vocab, text, len(text), buf, 512, True, True)
    params = lc.llama_context_default_params()
    params.n_ctx = n * (n_prompt + tokens) + 64
    params.n_batch = max(512, n_prompt)
    params.n_seq_max = n
    params.kv_unified = True
    params.n_threads = params.n_threads_batch = threads
    ctx = lc.llama_init_from_model(model, params)
    n_vocab = lc.llama_vocab_n_tokens(vocab)
    batch = lc.llama_batch_init(max(n_prompt, n), 0, n)

    def put(i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
        batch.seq_id[i][0], batch.logits[i] = seq, logits

    def prefill() -> None:
        batch.n_tokens = n_prompt
        for i in range(n_prompt):
            put(i, buf[i], i, 0, i == n_prompt - 1)
        assert lc.llama_decode(ctx, batch) == 0

    memory = lc.llama_get_memory(ctx)
    prefill()  # warm-up: thread pool and buffers, as every other side gets
    lc.llama_memory_clear(memory, True)
    t0 = time.perf_counter()
    prefill()
    for seq in range(1, n):  # the shared prompt is evaluated once, as a prefix cache does
        lc.llama_memory_seq_cp(memory, 0, seq, -1, -1)
    logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, n_prompt - 1), (n_vocab,))
    nxt = [int(logits.argmax())] * n
    first = time.perf_counter() - t0
    for step in range(tokens - 1):
        batch.n_tokens = n
        for seq in range(n):
            put(seq, nxt[seq], n_prompt + step, seq, True)
        assert lc.llama_decode(ctx, batch) == 0
        for seq in range(n):
            row = lc.llama_get_logits_ith(ctx, seq)
            nxt[seq] = int(np.ctypeslib.as_array(row, (n_vocab,)).argmax())
    wall = time.perf_counter() - t0
    lc.llama_batch_free(batch)
    lc.llama_free(ctx)
    lc.llama_model_free(model)
    return {"tok_s": n * tokens / wall, "ttft_p50": first, "ttft_p95": first}


def _summary(results: list[tuple[int, float]], wall: float) -> dict:
    """Aggregate tokens/s and time-to-first-token percentiles of (tokens, ttft) results."""
    ttft = sorted(r[1] for r in results)
    return {
        "tok_s": sum(r[0] for r in results) / wall,
        "ttft_p50": ttft[len(ttft) // 2],
        "ttft_p95": ttft[min(len(ttft) - 1, int(len(ttft) * 0.95))],
    }


def _clients(n: int, one) -> dict:
    """Run one() in n threads at once; one() returns (tokens, time to first token)."""
    results: list[tuple[int, float]] = []
    lock = threading.Lock()

    def go() -> None:
        r = one()
        with lock:
            results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=go) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return _summary(results, time.perf_counter() - t0)


def run_xllamacpp(path: str, threads: int, n: int, tokens: int) -> dict:
    """n concurrent streamed chats on llama.cpp's server engine with n_parallel = n."""
    import xllamacpp as xl

    params = xl.CommonParams()
    params.model.path = path
    params.n_parallel = n
    params.n_ctx = n * 1024
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = threads
    params.no_extra_bufts = read_cpu().has_amx
    server = xl.Server(params)
    body = {
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
    }

    def one() -> tuple[int, float]:
        t0, first, count = time.perf_counter(), None, 0

        def chunk(data) -> None:
            nonlocal first, count
            for choice in data.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    first = first or time.perf_counter() - t0
                    count += 1

        server.handle_chat_completions(body, chunk)
        return count, first or 0.0

    one()  # warm-up
    return _clients(n, one)


def run_sequential(path: str, threads: int, n: int, tokens: int) -> dict:
    """n clients served one at a time by one llama-cpp-python Llama (today's worker)."""
    from llama_cpp import Llama

    llm = Llama(
        model_path=path, n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False
    )

    def one(t0: float) -> tuple[int, float]:
        first, count = None, 0
        for chunk in llm.create_chat_completion(
            messages=MESSAGES,
            max_tokens=tokens,
            temperature=0,
            stream=True,
        ):
            if chunk["choices"][0]["delta"].get("content"):
                first = first or time.perf_counter() - t0
                count += 1
        return count, first or 0.0

    # One thread, as a pool process runs its jobs: llama.cpp's OpenMP team belongs to the
    # thread that calls it, and a new calling thread per client measured half the speed.
    one(time.perf_counter())
    t0 = time.perf_counter()  # every client arrives now; client i waits for the i before it
    results = [one(t0) for _ in range(n)]
    return _summary(results, time.perf_counter() - t0)


def run_engine(path: str, threads: int, n: int, tokens: int) -> dict:
    """n clients at once, each a job thread calling conveyor's llama.cpp backend."""
    from shared.config import Settings
    from shared.inputs import ChatInput
    from shared.registry import load_registry
    from workers.backends.base import JobContext
    from workers.backends.llamacpp import LlamaCppBackend

    settings = Settings()
    spec = load_registry(settings.registry).get("smollm2-135m")
    spec.options.update(n_threads=threads)
    backend = LlamaCppBackend(spec, settings)
    backend.load()

    def one() -> tuple[int, float]:
        t0, first = time.perf_counter(), []

        def emit(kind: str, _data: dict) -> None:
            if kind == "token" and not first:
                first.append(time.perf_counter() - t0)

        ctx = JobContext(
            "bench",
            read_media=lambda ref: b"",
            emit=emit,
            stop_requested=lambda: False,
            deadline=None,
            check_interval_s=1.0,
        )
        inputs = ChatInput(messages=MESSAGES, max_tokens=tokens, temperature=0)
        result = backend.run("chat", inputs, ctx)
        return result.metrics["completion_tokens"], first[0] if first else 0.0

    try:
        one()  # warm-up
        return _clients(n, one)
    finally:
        backend.close()


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


SIDES = {
    "ceiling": run_ceiling,
    "engine": run_engine,
    "bare": run_sequential,
    "xllamacpp": run_xllamacpp,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batching", description=__doc__)
    parser.add_argument("--side", choices=SIDES, help="(internal) run one side and print JSON")
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=["ceiling", "engine", "bare"])
    parser.add_argument("--clients", type=int, nargs="+", default=list(CLIENTS))
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=default_threads(read_cpu()))
    args = parser.parse_args(argv)
    if args.side:
        for n in args.clients:
            out = SIDES[args.side](gguf_path(), args.threads, n, args.tokens)
            print(json.dumps({"side": args.side, "clients": n, **out}), flush=True)
        return 0
    from bench.batching_http import in_process, side_by_side

    cpu = read_cpu()
    print(
        f"# {cpu.model_name}, {cpu.physical_cores} cores, {args.threads} threads, "
        f"{args.tokens} tokens per client, load {os.getloadavg()[0]:.2f}"
    )
    rows: dict[str, dict[int, dict]] = {side: {} for side in args.sides}
    for n in args.clients:  # sides alternate per client count, so drift hits all alike
        for side in args.sides:
            rows[side][n] = in_process(side, n, args.threads, args.tokens)
    print(side_by_side(rows, args.clients))
    for n in args.clients:
        for side in args.sides[1:]:
            base = args.sides[0]
            share = ratio(rows[side][n]["tok_s"], rows[base][n]["tok_s"])
            print(f"{n} clients: {side} / {base} = {share}")
    print(f"# load after: {os.getloadavg()[0]:.2f}")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
