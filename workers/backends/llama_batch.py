"""Continuous batching for llama.cpp: one engine thread decodes every running job's next
token in one `llama_batch` per step.

- Jobs join between steps, into a free slot (a llama.cpp sequence id) of one context with
  `n_seq_max` = slots and one KV stream of n_ctx cells per slot.
- Prompts are evaluated in chunks: each step carries one token per generating job, and
  what is left of the step's `n_batch` tokens goes to prompts, so a long prompt never
  stops the others' streams for more than a step.
- A prompt's longest prefix already in the cache (another job's same system prompt, or a
  slot's previous prompt) is reused instead of evaluated again (`llama_memory_seq_cp`).
- Each job samples with its own llama.cpp sampler chain (llama_sampling.py) and ends on
  end-of-generation, a stop string, max_tokens, or a cancel from its job thread; it then
  leaves at once: its generated cells are freed (all of them on a cancel), and a finished
  slot keeps only its prompt as a prefix cache for the next job.
- A side path runs what the batch cannot (tools, llama-cpp-python's prompt cache) on the
  `Llama` object's own context, one chunk of its stream per engine step.

Every llama.cpp compute call (model load, decode, sampling) runs on the engine thread:
llama.cpp's OpenMP thread team belongs to the calling thread, and calls from a new thread
each time measured half the speed (docs/batching.md). Job threads only tokenize, render
chat templates, and read their own event queue.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from workers.backends.llama_sampling import Pieces, Sampling, TextStream, make_sampler

log = logging.getLogger(__name__)


@dataclass
class Request:
    """One job in the batch. Its thread reads `events`:

    ("text", delta) while it runs, then one ("end", finish_reason, completion_tokens) or
    ("error", exception).
    """

    tokens: list[int]
    sampling: Sampling
    max_tokens: int
    stop: list[str] = field(default_factory=list)
    stopping_criteria: Callable[[Any, Any], bool] | None = None
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    stop_reason: str | None = None

    def cancel(self, reason: str) -> None:
        """Ask the engine to end this job at its next step (reason: canceled | timeout)."""
        self.stop_reason = reason


@dataclass
class SideJob:
    """A job the batch cannot run: `start()` (called on the engine thread) returns a
    llama-cpp-python stream, advanced one chunk per engine step. Its thread reads
    ("chunk", chunk) events, then ("end", None, Llama.n_tokens) or ("error", exception).
    """

    start: Callable[[], Iterator[dict]]
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    stop_reason: str | None = None
    stream: Iterator[dict] | None = None
    chunks: int = 0

    def cancel(self, reason: str) -> None:
        self.stop_reason = reason


@dataclass
class _Slot:
    """One llama.cpp sequence: what its cells hold, and the job using it."""

    seq: int
    cells: list[int] = field(default_factory=list)  # token at each position in the KV cache
    request: Request | None = None
    todo: list[int] = field(default_factory=list)  # prompt tokens not evaluated yet
    pending: int | None = None  # sampled, to be evaluated next step
    sampler: Any = None
    text: TextStream | None = None
    produced: int = 0
    row: int = -1  # batch row whose logits this slot samples from this step
    admitted: int = 0  # prompts are evaluated in the order their jobs came in


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class BatchEngine:
    """Owns the engine thread, the `Llama` object and the batch context."""

    def __init__(
        self,
        open_llm: Callable[[], Any],
        *,
        slots: int,
        n_ctx: int,
        n_batch: int,
        prefix_copy_min: int = 64,
    ) -> None:
        self._open_llm = open_llm
        # Shortest prefix worth copying from another slot's stream (the copy moves the whole
        # stream, n_ctx cells, so short prefixes are cheaper to evaluate again).
        self.prefix_copy_min = prefix_copy_min
        self.slots = slots
        self.n_ctx = n_ctx  # per slot
        self.n_batch = max(n_batch, slots)
        self.llm: Any = None
        self._cond = threading.Condition()
        self._pending: deque[Request] = deque()
        self._side_queue: deque[SideJob] = deque()
        self._side: SideJob | None = None
        self._calls: list[tuple[Callable[[], Any], queue.SimpleQueue]] = []
        self._closing = False
        self._ready = threading.Event()
        self._load_error: BaseException | None = None
        self._slots: list[_Slot] = []
        self._admitted = 0
        self._thread = threading.Thread(target=self._main, name="llama-engine", daemon=True)

    # -- job threads --------------------------------------------------------------------
    def start(self) -> None:
        """Load the model on the engine thread. :raises: whatever loading raised."""
        self._thread.start()
        self._ready.wait()
        if self._load_error is not None:
            self._thread.join()
            raise self._load_error

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run fn on the engine thread between steps and return its result."""
        answer: queue.SimpleQueue = queue.SimpleQueue()
        with self._cond:
            self._calls.append((fn, answer))
            self._cond.notify()
        ok, value = answer.get()
        if not ok:
            raise value
        return value

    def submit(self, job: Request | SideJob) -> None:
        with self._cond:
            (self._pending if isinstance(job, Request) else self._side_queue).append(job)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join()

    # -- engine thread ------------------------------------------------------------------
    def _main(self) -> None:
        try:
            self._open()
        except BaseException as exc:  # handed to start() in the loading thread
            self._load_error = exc
            self._ready.set()
            return
        self._ready.set()
        while True:
            with self._cond:
                while not (self._closing or self._calls or self._busy()):
                    self._cond.wait()
                calls, self._calls = self._calls, []
                closing = self._closing
            for fn, answer in calls:
                try:
                    answer.put((True, fn()))
                except Exception as exc:  # returned to the caller's thread
                    answer.put((False, exc))
            if closing:
                break
            try:
                self._step()
            except Exception as exc:  # a llama.cpp failure: fail the running jobs, go on
                log.exception("llama.cpp batch step failed")
                self._fail_running(exc)
            self._side_step()
        self._shutdown()

    def _busy(self) -> bool:
        return bool(
            self._pending
            or self._side
            or self._side_queue
            or any(s.request is not None for s in self._slots)
        )

    def _open(self) -> None:
        import llama_cpp as lib

        self.lib = lib
        self.llm = self._open_llm()
        p = lib.llama_context_default_params()
        p.n_ctx = self.n_ctx * self.slots
        p.n_batch = self.n_batch
        p.n_ubatch = min(self.n_batch, 512)
        p.n_seq_max = self.slots
        # One KV stream per slot, not one unified cache: in a unified cache a job's cells
        # end up between other jobs' cells, flash attention then adds them up in another
        # order, and a greedy job's tokens would depend on what ran beside it.
        p.kv_unified = False
        p.flash_attn_type = self.llm.context_params.flash_attn_type  # as the Llama's own
        p.n_threads = self.llm.context_params.n_threads
        p.n_threads_batch = self.llm.context_params.n_threads_batch
        self.ctx = lib.llama_init_from_model(self.llm.model, p)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not create a context of {p.n_ctx} cells")
        self.memory = lib.llama_get_memory(self.ctx)
        self.vocab = self.llm._model.vocab
        self.n_vocab = self.llm.n_vocab()
        self.piece = Pieces(lib, self.vocab)
        self.batch = lib.llama_batch_init(self.n_batch, 0, 1)
        self._slots = [_Slot(seq) for seq in range(self.slots)]
        self._abort_hook = lib.ggml_abort_callback(self._side_aborted)  # kept alive while set

    def _shutdown(self) -> None:
        gone = RuntimeError("the model was unloaded")
        for slot in self._slots:
            if slot.request is not None:
                self._finish(slot, None, error=gone)
        for job in [*self._pending, *self._side_queue, *([self._side] if self._side else [])]:
            job.events.put(("error", gone))
        self.lib.llama_batch_free(self.batch)
        self.lib.llama_free(self.ctx)
        self.llm.close()

    def kv_tokens(self) -> list[int]:
        """Return how many positions each slot's sequence holds in the KV cache (engine thread)."""
        return [
            self.lib.llama_memory_seq_pos_max(self.memory, slot.seq) + 1 for slot in self._slots
        ]

    def clear(self) -> None:
        """Forget every cached prefix (engine thread, no job running)."""
        self.lib.llama_memory_clear(self.memory, True)
        for slot in self._slots:
            slot.cells = []

    def _step(self) -> None:
        """Admit waiting jobs; decode every generating job's next token in one batch, then
        the next chunk of waiting prompts in another, sampling every job that has logits.

        Decode rows and prompt rows never share a llama_decode call: llama.cpp computes a
        row's attention differently in a prompt-sized batch, and a greedy job's tokens would
        then depend on what else was in its batch.
        """
        for slot in self._slots:
            if slot.request is not None and slot.request.stop_reason:
                self._finish(slot, slot.request.stop_reason)
        self._admit()
        running = [s for s in self._slots if s.request is not None]
        generating = [(s, [s.pending], True) for s in running if s.pending is not None]
        if generating:
            self._decode(generating)
        budget, chunks = self.n_batch - len(generating), []
        for slot in sorted((s for s in running if s.todo), key=lambda s: s.admitted):
            take = min(budget, len(slot.todo))
            if take <= 0:
                break
            chunks.append((slot, slot.todo[:take], take == len(slot.todo)))
            budget -= take
        if chunks:
            self._decode(chunks)

    def _decode(self, feeds: list[tuple[_Slot, list[int], bool]]) -> None:
        """Evaluate (slot, tokens, sample after the last) in one llama_decode, then sample."""
        batch, n = self.batch, 0
        for slot, tokens, sample in feeds:
            start = len(slot.cells)
            for i, token in enumerate(tokens):
                batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, start + i, 1
                batch.seq_id[n][0], batch.logits[n] = slot.seq, sample and i == len(tokens) - 1
                n += 1
            slot.row = n - 1 if sample else -1
        batch.n_tokens = n
        rc = self.lib.llama_decode(self.ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        for slot, tokens, _sample in feeds:
            slot.cells.extend(tokens)
            if slot.pending is not None:
                slot.pending = None
            else:
                slot.todo = slot.todo[len(tokens) :]
        for slot, _tokens, sample in feeds:
            if sample:
                self._sample(slot)

    def _admit(self) -> None:
        """Give waiting jobs free slots, sharing the longest cached prefix of their prompt."""
        while self._pending:
            free = [s for s in self._slots if s.request is None]
            if not free:
                return
            req = self._pending.popleft()
            if req.stop_reason:
                req.events.put(("end", req.stop_reason, 0))
                continue
            try:
                sampler = make_sampler(self.lib, self.vocab, self.n_vocab, req.sampling)
            except ValueError as exc:
                req.events.put(("error", exc))
                continue
            cap = len(req.tokens) - 1  # the last prompt token is evaluated for its logits
            slot = max(
                free, key=lambda s: (min(cap, common_prefix(s.cells, req.tokens)), -len(s.cells))
            )
            source, shared = slot, min(cap, common_prefix(slot.cells, req.tokens))
            for other in self._slots:
                n = min(cap, common_prefix(other.cells, req.tokens))
                if n > shared:
                    source, shared = other, n
            if source is not slot and shared >= self.prefix_copy_min:
                # Another stream holds the longer prefix: llama.cpp copies whole streams.
                self.lib.llama_memory_seq_cp(self.memory, source.seq, slot.seq, -1, -1)
            else:
                shared = min(cap, common_prefix(slot.cells, req.tokens))
            self.lib.llama_memory_seq_rm(self.memory, slot.seq, shared, -1)
            slot.cells = req.tokens[:shared]
            slot.todo = req.tokens[shared:]
            slot.request, slot.sampler = req, sampler
            slot.text, slot.produced, slot.pending = TextStream(req.stop), 0, None
            self._admitted += 1
            slot.admitted = self._admitted
            log.debug("slot %s: %s prompt tokens, %s shared", slot.seq, len(req.tokens), shared)

    def _sample(self, slot: _Slot) -> None:
        lib, req = self.lib, slot.request
        token = lib.llama_sampler_sample(slot.sampler, self.ctx, slot.row)
        if req.stopping_criteria is not None and self._criteria_met(slot):
            self._finish(slot, "stop")
            return
        if lib.llama_vocab_is_eog(self.vocab, token):
            self._finish(slot, "stop")
            return
        slot.produced += 1
        text, stopped = slot.text.push(self.piece(token))
        if text:
            req.events.put(("text", text))
        if stopped:
            self._finish(slot, "stop", flush=False)
        elif slot.produced >= req.max_tokens:
            self._finish(slot, "length")
        else:
            slot.pending = token

    def _criteria_met(self, slot: _Slot) -> bool:
        """A chat format's stopping criteria, called as Llama.generate calls them."""
        import numpy as np

        row = self.lib.llama_get_logits_ith(self.ctx, slot.row)
        scores = np.ctypeslib.as_array(row, (self.n_vocab,))
        return bool(slot.request.stopping_criteria(np.array(slot.cells, dtype=np.intc), scores))

    def _finish(
        self, slot: _Slot, reason: str | None, *, flush: bool = True, error: Exception | None = None
    ) -> None:
        """End the slot's job: send its end event, free its sampler and its cells."""
        req = slot.request
        if error is None and flush and slot.text is not None:
            rest = slot.text.finish()
            if rest:
                req.events.put(("text", rest))
        log.debug("slot %s: ended (%s) after %s tokens", slot.seq, reason, slot.produced)
        req.events.put(("error", error) if error else ("end", reason, slot.produced))
        if slot.sampler is not None:
            self.lib.llama_sampler_free(slot.sampler)
        prompt = len(req.tokens)
        # A finished job's prompt stays as this slot's prefix cache; a canceled, timed-out
        # or failed job's cells all go.
        keep = prompt if reason in ("stop", "length") and len(slot.cells) >= prompt else 0
        self.lib.llama_memory_seq_rm(self.memory, slot.seq, keep, -1)
        slot.cells = slot.cells[:keep]
        slot.request, slot.sampler, slot.text, slot.todo, slot.pending = None, None, None, [], None
        slot.row = -1

    def _fail_running(self, exc: Exception) -> None:
        for slot in self._slots:
            if slot.request is not None:
                self._finish(slot, None, error=exc)

    # -- side path ----------------------------------------------------------------------
    def _side_step(self) -> None:
        """Advance the side job by one chunk of its stream (its prompt in one call)."""
        if self._side is None:
            if not self._side_queue:
                return
            self._side = self._side_queue.popleft()
        job = self._side
        if job.stop_reason:
            self._side_end(job, ("end", job.stop_reason, self.llm.n_tokens))
            return
        first = job.stream is None
        if first:  # a cancel may land while the prompt is evaluated: abort that call
            self.lib.llama_set_abort_callback(self.llm.ctx, self._abort_hook, None)
        try:
            if first:
                job.stream = job.start()
            chunk = next(job.stream)
        except StopIteration:
            self._side_end(job, ("end", None, self.llm.n_tokens))
        except Exception as exc:
            if job.stop_reason:  # llama_decode returned 2: the hook stopped the prompt
                self.llm.reset()
                self.llm._ctx.kv_cache_clear()
                self._side_end(job, ("end", job.stop_reason, 0))
            else:
                self._side_end(job, ("error", exc))
        else:
            job.chunks += 1
            job.events.put(("chunk", chunk))
        finally:
            if first:
                self.lib.llama_set_abort_callback(
                    self.llm.ctx, self.lib.ggml_abort_callback(), None
                )

    def _side_aborted(self, _data) -> bool:
        side = self._side
        return bool(side is not None and side.stop_reason)

    def _side_end(self, job: SideJob, event: tuple) -> None:
        if job.stream is not None:
            job.stream.close()
        job.events.put(event)
        self._side = None
