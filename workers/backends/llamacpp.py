"""llama.cpp backend: GGUF chat and completion, many jobs at once in one continuous batch.

Jobs run in the batch engine (llama_batch.py) from their own threads; what the batch cannot
run goes to its side path, still on the engine thread:
- chats with `tools` (llama-cpp-python's tool-call handling),
- every job of a model with `options.cache` (llama-cpp-python's prompt cache),
- chat formats whose handler does more than render a prompt.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shared.errors import InputRejected, ModelNotAvailable
from shared.inputs import ChatInput, CompleteInput
from workers.backends.base import Backend, JobContext, Result, tokens_per_second
from workers.backends.llama_batch import BatchEngine, Request, SideJob
from workers.backends.llama_prompts import NotBatchable, chat_request, completion_request
from workers.cpu import default_threads, extra_buffers_enabled, read_cpu

log = logging.getLogger(__name__)

# How often a job thread waiting for its next token looks at cancel and deadline.
POLL_S = 0.05


class LlamaCppBackend(Backend):
    tasks = ("chat", "complete")
    default_max_concurrency = 8

    def load_model(self, path: Path | None) -> None:
        """Start the batch engine (the model loads on its thread): max_concurrency slots of
        n_ctx cells each. :raises ModelNotAvailable:"""
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise ModelNotAvailable(
                "llama-cpp-python is not installed (pip install 'conveyor[llama]')"
            ) from exc
        opts = self.spec.options
        cpu = read_cpu()
        threads = int(opts.get("n_threads") or self.settings.cpu_threads or default_threads(cpu))
        try:
            extra = extra_buffers_enabled(str(opts.get("extra_buffers") or "auto"), cpu)
        except ValueError as exc:
            raise ModelNotAvailable(f"model {self.spec.id}: options.{exc}") from None
        if opts.get("cache") not in (None, "", "ram", "disk"):
            raise ValueError(f"model {self.spec.id}: options.cache must be ram or disk")
        n_ctx = int(opts.get("n_ctx") or 2048)
        n_batch = int(opts.get("n_batch") or 512)

        def open_llm():
            with _extra_buffer_types(extra):
                llm = Llama(
                    model_path=str(path),
                    n_ctx=n_ctx,
                    n_threads=threads,
                    n_threads_batch=int(opts.get("n_threads_batch") or threads),
                    n_batch=n_batch,
                    n_gpu_layers=int(opts.get("n_gpu_layers") or 0),
                    flash_attn=bool(opts.get("flash_attn", True)),
                    chat_format=opts.get("chat_format") or None,
                    seed=int(opts.get("seed", 0xFFFFFFFF)),
                    verbose=False,
                )
            self._set_prompt_cache(llm, opts)
            return llm

        self.engine = BatchEngine(
            open_llm, slots=self.max_concurrency, n_ctx=n_ctx, n_batch=n_batch
        )
        self.engine.start()
        self.llm = self.engine.llm
        self.n_ctx = n_ctx
        self.side_only = bool(opts.get("cache"))
        self.cpu = {**cpu.describe(), "threads": threads, "extra_buffers": extra}
        self.path = path
        log.info(
            "model %s: llama.cpp on %s with %s threads, extra buffer types %s, %s slots of "
            "%s tokens",
            self.spec.id,
            cpu.model_name,
            threads,
            "on" if extra else "off",
            self.max_concurrency,
            n_ctx,
        )

    def warm_up(self) -> None:
        """Generate two tokens the way a job does, then forget them."""
        if "chat" in self.spec.tasks:
            self.chat(
                ChatInput(messages=[{"role": "user", "content": "Hello"}], max_tokens=2), None
            )
        else:
            self.complete(CompleteInput(prompt="Hello", max_tokens=2), None)
        self.engine.call(self.engine.clear)
        self.engine.call(self.llm.reset)

    def _set_prompt_cache(self, llm, opts: dict[str, Any]) -> None:
        """Reuse evaluated prompt prefixes across jobs: `cache: ram | disk` in options."""
        kind = opts.get("cache")
        if not kind:
            return
        from llama_cpp import LlamaDiskCache, LlamaRAMCache

        capacity = int(opts.get("cache_capacity_bytes") or 1 << 30)
        if kind == "ram":
            llm.set_cache(LlamaRAMCache(capacity_bytes=capacity))
        else:
            folder = opts.get("cache_dir") or str(
                self.settings.data_dir / "llama-cache" / self.spec.id
            )
            llm.set_cache(LlamaDiskCache(cache_dir=folder, capacity_bytes=capacity))

    def health(self) -> dict[str, Any]:
        info = super().health()
        if self.loaded:
            info.update(
                path=str(self.path), n_ctx=self.n_ctx, slots=self.max_concurrency, cpu=self.cpu
            )
        return info

    def close(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()
            self.engine = self.llm = None
        super().close()

    def _params(self, inputs: ChatInput | CompleteInput) -> dict[str, Any]:
        p = inputs.generation_params(self.spec)
        return {
            "max_tokens": p["max_tokens"],
            "temperature": p["temperature"],
            "top_p": p["top_p"],
            "top_k": p["top_k"],
            "stop": p["stop"] or None,
            "seed": p["seed"],
            "repeat_penalty": p["repeat_penalty"],
        }

    def chat(self, inputs: ChatInput, ctx: JobContext | None) -> Result:
        """Chat from OpenAI-style messages; tools go to the side path."""
        messages = inputs.text_messages(self.spec.id, self.spec.options.get("system_prompt"))
        params = self._params(inputs)
        if not inputs.tools and not self.side_only:
            try:
                request = chat_request(
                    self.llm, self.n_ctx, messages, inputs.response_format, params
                )
            except NotBatchable as why:
                log.debug("model %s: chat on the side path: %s", self.spec.id, why)
            else:
                return self._run_batch(request, ctx)
        deltas = _ChatDeltas()

        def start():
            # Streamed even with tools or a response format, so a cancel or deadline stops
            # it between tokens like any other chat.
            return self.llm.create_chat_completion(
                messages=messages,
                stream=True,
                tools=inputs.tools,
                tool_choice=inputs.tool_choice,
                response_format=inputs.response_format,
                **params,
            )

        result = self._run_side(SideJob(start), ctx, deltas)
        if deltas.tool_calls:
            result.output["tool_calls"] = [deltas.tool_calls[i] for i in sorted(deltas.tool_calls)]
        return result

    def complete(self, inputs: CompleteInput, ctx: JobContext | None) -> Result:
        """Continue a raw prompt."""
        params = self._params(inputs)
        if not self.side_only:
            return self._run_batch(
                completion_request(self.llm, self.n_ctx, inputs.prompt, params), ctx
            )

        def start():
            return self.llm.create_completion(prompt=inputs.prompt, stream=True, **params)

        result = self._run_side(SideJob(start), ctx, _completion_delta)
        result.metrics["prompt_tokens"] = len(
            self.llm.tokenize(inputs.prompt.encode("utf-8"), add_bos=True, special=True)
        )
        return result

    def _run_batch(self, request: Request, ctx: JobContext | None) -> Result:
        """Run a job in the batch and stream its text from this (the job's) thread."""
        t0 = time.perf_counter()
        self.engine.submit(request)
        parts: list[str] = []
        finish, produced = "stop", 0
        for event in _events(request, ctx):
            if event[0] == "text":
                parts.append(event[1])
                if ctx is not None:
                    ctx.token(event[1])
            elif event[0] == "end":
                finish, produced = event[1], event[2]
            else:
                if isinstance(event[1], ValueError):  # a grammar llama.cpp cannot parse
                    raise InputRejected(f"llama.cpp rejected the request: {event[1]}")
                raise event[1]
        elapsed = time.perf_counter() - t0
        output = {"text": "".join(parts), "finish_reason": finish}
        return Result(output, _metrics(len(request.tokens), produced, elapsed))

    def _run_side(self, job: SideJob, ctx: JobContext | None, delta_of) -> Result:
        """Run a job through Llama's own stream on the engine's side path."""
        t0 = time.perf_counter()
        self.engine.submit(job)
        parts: list[str] = []
        finish, completion, n_tokens = None, 0, 0
        for event in _events(job, ctx):
            if event[0] == "chunk":
                text, produced = delta_of(event[1])
                if text:
                    parts.append(text)
                    if ctx is not None:
                        ctx.token(text)
                completion += produced
                finish = event[1]["choices"][0].get("finish_reason") or finish
            elif event[0] == "end":
                finish, n_tokens = event[1] or finish, event[2]
            elif isinstance(event[1], ValueError) and job.chunks == 0:
                if job.stream is None:  # a schema or tool choice llama.cpp cannot use
                    raise InputRejected(f"llama.cpp rejected the request: {event[1]}")
                raise InputRejected(
                    f"the prompt does not fit the model's context window: {event[1]}"
                )
            else:
                raise event[1]
        elapsed = time.perf_counter() - t0
        # llama.cpp keeps prompt + generated tokens in its context; the rest is the prompt.
        prompt = max(0, n_tokens - completion) if n_tokens else None
        output = {"text": "".join(parts), "finish_reason": finish or "stop"}
        return Result(output, _metrics(prompt, completion, elapsed))


def _events(job: Request | SideJob, ctx: JobContext | None) -> Iterator[tuple]:
    """Yield a job's events until its end; cancel it in the engine when the job should stop,
    or when this thread leaves early (the worker's time-limit watchdog raises in it)."""
    ended = False
    try:
        while True:
            try:
                event = job.events.get(timeout=POLL_S)
            except queue.Empty:
                event = None
            if ctx is not None and job.stop_reason is None and ctx.should_stop():
                job.cancel("canceled" if ctx.canceled else "timeout")
            if event is not None:
                ended = event[0] in ("end", "error")
                yield event
                if ended:
                    return
    finally:
        if not ended and job.stop_reason is None:
            job.cancel("timeout" if ctx is not None and ctx.timed_out else "canceled")


@contextmanager
def _extra_buffer_types(enabled: bool):
    """Load models with llama.cpp's extra buffer types (weight repacking) on or off.

    llama-cpp-python's Llama() takes no argument for llama_model_params.use_extra_bufts, so
    the default params it starts from are given that field while a model loads.
    """
    import llama_cpp.llama_cpp as lib

    defaults = lib.llama_model_default_params

    def params():
        p = defaults()
        p.use_extra_bufts = enabled
        return p

    lib.llama_model_default_params = params
    try:
        yield
    finally:
        lib.llama_model_default_params = defaults


def _completion_delta(chunk) -> tuple[str | None, bool]:
    text = chunk["choices"][0].get("text")
    return text, bool(text)


class _ChatDeltas:
    """Read a streamed chat answer: text deltas, and tool-call fragments merged by index."""

    def __init__(self) -> None:
        self.tool_calls: dict[int, dict[str, Any]] = {}

    def __call__(self, chunk) -> tuple[str | None, bool]:
        """Return (text delta, whether the chunk carried a generated token)."""
        delta = chunk["choices"][0].get("delta") or {}
        calls = delta.get("tool_calls") or []
        for call in calls:
            fn = call.get("function") or {}
            slot = self.tool_calls.setdefault(
                call.get("index", 0),
                {
                    "id": call.get("id"),
                    "type": "function",
                    "function": {"name": fn.get("name") or "", "arguments": ""},
                },
            )
            slot["function"]["arguments"] += fn.get("arguments") or ""
        text = delta.get("content")
        return text, bool(text) or bool(calls)


def _metrics(prompt: int | None, completion: int, elapsed: float) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "tokens_per_second": tokens_per_second(completion, elapsed),
    }
