"""llama.cpp backend: GGUF chat and completion with token streaming and cancellation."""

from __future__ import annotations

import itertools
import logging
import time
from contextlib import contextmanager
from typing import Any

from shared.errors import InputRejected, ModelNotAvailable
from shared.inputs import ChatInput, CompleteInput
from shared.registry import resolve_source
from workers.backends.base import Backend, JobContext, Result, tokens_per_second, warm_up
from workers.cpu import default_threads, extra_buffers_enabled, read_cpu

log = logging.getLogger(__name__)


class LlamaCppBackend(Backend):
    tasks = ("chat", "complete")

    def load(self) -> None:
        """Open the GGUF file with llama-cpp-python and warm it up. :raises ModelNotAvailable:"""
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise ModelNotAvailable(
                "llama-cpp-python is not installed (pip install 'conveyor[llama]')"
            ) from exc
        path = resolve_source(self.spec)
        opts = self.spec.options
        cpu = read_cpu()
        threads = int(opts.get("n_threads") or self.settings.cpu_threads or default_threads(cpu))
        try:
            extra = extra_buffers_enabled(str(opts.get("extra_buffers") or "auto"), cpu)
        except ValueError as exc:
            raise ModelNotAvailable(f"model {self.spec.id}: options.{exc}") from None
        with _extra_buffer_types(extra):
            self.llm = Llama(
                model_path=str(path),
                n_ctx=int(opts.get("n_ctx") or 2048),
                n_threads=threads,
                n_threads_batch=int(opts.get("n_threads_batch") or threads),
                n_batch=int(opts.get("n_batch") or 512),
                n_gpu_layers=int(opts.get("n_gpu_layers") or 0),
                chat_format=opts.get("chat_format") or None,
                seed=int(opts.get("seed", 0xFFFFFFFF)),
                verbose=False,
            )
        self.cpu = {**cpu.describe(), "threads": threads, "extra_buffers": extra}
        log.info(
            "model %s: llama.cpp on %s with %s threads, extra buffer types %s",
            self.spec.id,
            cpu.model_name,
            threads,
            "on" if extra else "off",
        )
        self._set_prompt_cache(opts)
        self.path = path
        warm_up(self.spec, self._warm_up)
        self.loaded = True

    def _warm_up(self) -> None:
        """Generate two tokens the way a job does, then forget them."""
        if "chat" in self.spec.tasks:
            self.llm.create_chat_completion(
                messages=[{"role": "user", "content": "Hello"}], max_tokens=2, temperature=0
            )
        else:
            self.llm.create_completion("Hello", max_tokens=2, temperature=0)
        self.llm.reset()

    def _set_prompt_cache(self, opts: dict[str, Any]) -> None:
        """Reuse evaluated prompt prefixes across jobs: `cache: ram | disk` in options."""
        kind = opts.get("cache")
        if not kind:
            return
        from llama_cpp import LlamaDiskCache, LlamaRAMCache

        capacity = int(opts.get("cache_capacity_bytes") or 1 << 30)
        if kind == "ram":
            self.llm.set_cache(LlamaRAMCache(capacity_bytes=capacity))
        elif kind == "disk":
            folder = opts.get("cache_dir") or str(
                self.settings.data_dir / "llama-cache" / self.spec.id
            )
            self.llm.set_cache(LlamaDiskCache(cache_dir=folder, capacity_bytes=capacity))
        else:
            raise ValueError(f"model {self.spec.id}: options.cache must be ram or disk")

    def health(self) -> dict[str, Any]:
        info = super().health()
        if self.loaded:
            info.update(path=str(self.path), n_ctx=self.llm.n_ctx(), cpu=self.cpu)
        return info

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()
            self.llm = None
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

    def _count_prompt(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))

    def chat(self, inputs: ChatInput, ctx: JobContext) -> Result:
        """Chat from OpenAI-style messages; tools go to the chat handler."""
        messages = inputs.text_messages(self.spec.id, self.spec.options.get("system_prompt"))
        params = self._params(inputs)
        deltas = _ChatDeltas()
        try:
            # Streamed even with tools or a response format, so a cancel or deadline stops
            # it between tokens like any other chat.
            stream = self.llm.create_chat_completion(
                messages=messages,
                stream=True,
                tools=inputs.tools,
                tool_choice=inputs.tool_choice,
                response_format=inputs.response_format,
                **params,
            )
        except ValueError as exc:  # a schema or tool choice llama.cpp cannot use
            raise InputRejected(f"llama.cpp rejected the request: {exc}") from None
        result = self._consume(stream, ctx, deltas)
        if deltas.tool_calls:
            result.output["tool_calls"] = [deltas.tool_calls[i] for i in sorted(deltas.tool_calls)]
        return result

    def complete(self, inputs: CompleteInput, ctx: JobContext) -> Result:
        """Continue a raw prompt."""
        params = self._params(inputs)
        stream = self.llm.create_completion(prompt=inputs.prompt, stream=True, **params)
        result = self._consume(stream, ctx, _completion_delta)
        result.metrics["prompt_tokens"] = self._count_prompt(inputs.prompt)
        return result

    def _consume(self, stream, ctx: JobContext, delta_of) -> Result:
        """Drain a llama.cpp stream: emit tokens, stop between tokens when asked."""
        parts: list[str] = []
        finish = None
        completion = 0
        t0 = time.perf_counter()
        try:
            with _PromptAbort(self.llm, ctx) as abort:
                try:
                    first = _first(stream)
                except RuntimeError:  # llama_decode returned 2: the hook stopped it
                    if not abort.fired:
                        raise
                    self._forget_context()
                    first = iter(())
                    finish = "canceled" if ctx.canceled else "timeout"
            for chunk in first:
                text, produced = delta_of(chunk)
                if text:
                    parts.append(text)
                    ctx.token(text)
                completion += produced
                finish = chunk["choices"][0].get("finish_reason") or finish
                if ctx.should_stop():
                    finish = "canceled" if ctx.canceled else "timeout"
                    break
        finally:
            stream.close()
        elapsed = time.perf_counter() - t0
        # llama.cpp keeps prompt + generated tokens in its context; the rest is the prompt.
        prompt = max(0, self.llm.n_tokens - completion) if self.llm.n_tokens else None
        output = {"text": "".join(parts), "finish_reason": finish or "stop"}
        return Result(output, _metrics(prompt, completion, elapsed))

    def _forget_context(self) -> None:
        """Drop what an aborted evaluation left in the context; the next job starts clean."""
        self.llm.reset()
        self.llm._ctx.kv_cache_clear()


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


class _PromptAbort:
    """Stop llama.cpp's prompt evaluation when the job should stop.

    Evaluating a prompt is one long call into llama.cpp, so a cancel or a deadline would
    otherwise land only at the first generated token. llama.cpp calls this hook between
    the nodes of its compute graph; it is removed once the first chunk is out, so token
    generation pays nothing for it.
    """

    def __init__(self, llm, ctx: JobContext) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._context = llm._ctx.ctx
        self._job = ctx
        self.fired = False
        self._hook = llama_cpp.ggml_abort_callback(self._check)  # kept alive while set

    def _check(self, _data) -> bool:
        if not self.fired and self._job.should_stop():
            self.fired = True
        return self.fired

    def __enter__(self) -> _PromptAbort:
        self._lib.llama_set_abort_callback(self._context, self._hook, None)
        return self

    def __exit__(self, *_exc) -> None:
        self._lib.llama_set_abort_callback(self._context, self._lib.ggml_abort_callback(), None)


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


def _first(stream):
    """Start a stream; llama.cpp rejects a prompt over the context window on the first step.

    :raises InputRejected: when the prompt does not fit.
    """
    try:
        head = next(stream)
    except StopIteration:
        return iter(())
    except ValueError as exc:  # raised by llama-cpp-python for prompts over n_ctx
        raise InputRejected(f"the prompt does not fit the model's context window: {exc}") from None
    return itertools.chain([head], stream)


def _metrics(prompt: int | None, completion: int, elapsed: float) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "tokens_per_second": tokens_per_second(completion, elapsed),
    }
