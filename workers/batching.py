"""Dynamic batching: jobs hand items in from their own threads, one thread runs the model.

An encoder (sentence embeddings, a classifier, Whisper, BLIP VQA) computes a batch of
items in about the time of a few single items, so a worker running several jobs at once
(the registry's `max_concurrency`) puts their items together: the batcher's one thread
takes what arrived within `batch_wait_ms` of the oldest waiting item, runs up to
`max_batch` of them as one forward pass, and hands each item's result back to the job
that sent it. It waits only while jobs overlap (the last pass held items of more than one
job); a lone client's item runs at once, and items that arrive during a pass join the next.
All model compute stays on that one thread: torch's intra-op thread pool serves one
caller, the way it does for a worker running one job at a time.

Items only batch with items of the same key (Whisper's language and prompt, say). When
a forward pass over items of several jobs fails, each job's items run again on their
own, so one bad item fails only its own job. A job that is canceled or past its deadline
stops waiting at once; its items that have not started are dropped.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import Any

from shared.errors import InputRejected, ModelNotAvailable
from shared.registry import ModelSpec
from workers.backends.base import JobContext

log = logging.getLogger(__name__)

POLL_S = 0.02  # how often a waiting job looks at its cancel flag and deadline
CLOSE_WAIT_S = 30.0


@dataclass(frozen=True)
class BatchOptions:
    """How a backend batches: at most `max_batch` items a pass, waiting `wait_s` for more."""

    max_batch: int
    wait_s: float

    @classmethod
    def from_spec(cls, spec: ModelSpec, *, max_batch: int, wait_ms: float) -> BatchOptions:
        """Read `options.max_batch` and `options.batch_wait_ms`, with the backend's defaults.

        :raises ModelNotAvailable: for a value that is not a number in range.
        """
        opts = spec.options
        try:
            size = int(opts.get("max_batch") or opts.get("batch_size") or max_batch)
            wait = float(opts.get("batch_wait_ms", wait_ms))
        except (TypeError, ValueError) as exc:
            raise ModelNotAvailable(
                f"model {spec.id}: options.max_batch/batch_wait_ms: {exc}"
            ) from None
        if size < 1 or not 0 <= wait <= 10_000:
            raise ModelNotAvailable(
                f"model {spec.id}: options.max_batch must be >= 1 and options.batch_wait_ms "
                f"between 0 and 10000 (got {size} and {wait})"
            )
        return cls(max_batch=size, wait_s=wait / 1000)


@dataclass
class _Request:
    """One job's items, and a future for each."""

    items: list[Any]
    key: Hashable
    arrived: float = field(default_factory=time.monotonic)
    futures: list[Future] = field(default_factory=list)
    abandoned: bool = False

    def __post_init__(self) -> None:
        self.futures = [Future() for _ in self.items]

    def abandon(self) -> None:
        self.abandoned = True
        for f in self.futures:
            f.cancel()  # only those not yet running; a running one finishes unread


@dataclass
class Batch:
    """What the batch function gets: the items of one forward pass, all with one key."""

    items: list[Any]
    key: Hashable
    _owners: list[_Request]

    def stopped(self) -> list[bool]:
        """Return, per item, whether its job stopped waiting (generation can drop that row)."""
        return [r.abandoned for r in self._owners]


class DynamicBatcher:
    """Run items from many jobs in shared forward passes on one thread of its own.

    `run_batch(batch)` returns one result per item of `batch.items`, in order; it runs on
    the batcher's thread inside `scope()` (torch.inference_mode for the torch backends).
    """

    def __init__(
        self,
        name: str,
        run_batch: Callable[[Batch], list[Any]],
        options: BatchOptions,
        *,
        scope: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> None:
        self.name = name
        self.options = options
        self._run_batch = run_batch
        self._scope = scope
        self._incoming: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._backlog: deque[tuple[_Request, int]] = deque()
        self._closed = False
        self._overlapping = False  # the last pass held items of more than one job
        self.batches = 0  # forward passes run, and the items in them (health, tests)
        self.items = 0
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    def describe(self) -> dict[str, Any]:
        """Return the batching facts a worker publishes (admin views, tests)."""
        return {
            "max_batch": self.options.max_batch,
            "batch_wait_ms": self.options.wait_s * 1000,
            "passes": self.batches,
            "items": self.items,
        }

    # the job's side
    def stream(
        self, items: list[Any], ctx: JobContext | None, *, key: Hashable = None
    ) -> Iterator[Any]:
        """Yield each item's result in order as it is ready; stop early once `ctx` stops.

        :raises Exception: whatever the batch function raised for one of these items.
        """
        if self._closed:
            raise RuntimeError(f"batcher {self.name} is closed")
        request = _Request(list(items), key)
        self._incoming.put(request)
        try:
            for future in request.futures:
                while True:
                    try:
                        result = future.result(timeout=POLL_S)
                        break
                    except TimeoutError:
                        if ctx is not None and ctx.should_stop():
                            return
                    except CancelledError:
                        return
                yield result
        finally:
            request.abandon()

    def run(self, items: list[Any], ctx: JobContext | None, *, key: Hashable = None) -> list:
        """Return every item's result (fewer when `ctx` stopped first). :raises Exception:"""
        return list(self.stream(items, ctx, key=key))

    def close(self) -> None:
        """Stop the thread after the pass in progress; items still waiting are canceled."""
        self._closed = True
        self._incoming.put(None)
        self._thread.join(CLOSE_WAIT_S)

    # the batcher's thread
    def _loop(self) -> None:
        with self._scope():
            while self._collect():
                batch = self._take()
                if batch:
                    self._run(batch)
        for request, index in self._backlog:
            request.futures[index].cancel()

    def _collect(self) -> bool:
        """Move arrivals into the backlog, waiting for the first one and, while jobs overlap
        and the next pass is short of max_batch, until the oldest item has waited wait_s.
        Return False when the batcher closes."""
        if not self._backlog and not self._admit(self._incoming.get()):
            return False
        while True:
            try:
                request = self._incoming.get_nowait()
            except queue.Empty:
                if len(self._backlog) >= self.options.max_batch or not self._overlapping:
                    return True
                left = self._backlog[0][0].arrived + self.options.wait_s - time.monotonic()
                if left <= 0:
                    return True
                try:
                    request = self._incoming.get(timeout=left)
                except queue.Empty:
                    return True
            if not self._admit(request):
                return False

    def _admit(self, request: _Request | None) -> bool:
        if request is None:
            return False
        self._backlog.extend((request, i) for i in range(len(request.items)))
        return True

    def _take(self) -> list[tuple[_Request, int]]:
        """Take up to max_batch live items with the oldest item's key, keeping order."""
        key = self._backlog[0][0].key
        taken, kept = [], deque()
        while self._backlog:
            request, index = self._backlog.popleft()
            if len(taken) >= self.options.max_batch or request.key != key:
                kept.append((request, index))
            elif request.futures[index].set_running_or_notify_cancel():
                taken.append((request, index))
        self._backlog = kept
        return taken

    def _run(self, slots: list[tuple[_Request, int]]) -> None:
        owners = [r for r, _ in slots]
        self._overlapping = len({id(r) for r in owners}) > 1
        batch = Batch([r.items[i] for r, i in slots], owners[0].key, owners)
        try:
            results = self._run_batch(batch)
            if len(results) != len(slots):
                raise RuntimeError(
                    f"batcher {self.name}: {len(results)} results for {len(slots)} items"
                )
        except Exception as exc:
            jobs = list(dict.fromkeys(id(r) for r in owners))
            if len(jobs) > 1:
                log.warning(
                    "batcher %s: a pass over %s items of %s jobs failed (%s: %s); "
                    "running each job's items on their own",
                    self.name,
                    len(slots),
                    len(jobs),
                    type(exc).__name__,
                    exc,
                )
                for job in jobs:
                    self._run([s for s in slots if id(s[0]) == job])
                return
            for request, index in slots:
                request.futures[index].set_exception(exc)
            return
        finally:
            del batch
        self.batches += 1
        self.items += len(slots)
        for (request, index), result in zip(slots, results, strict=True):
            request.futures[index].set_result(result)


def check_texts(texts: list[str], field: str) -> list[str]:
    """Reject a text the tokenizer cannot take, before it joins other jobs' texts.

    :raises InputRejected: for a text that is not valid Unicode (a lone surrogate).
    """
    for n, text in enumerate(texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InputRejected(
                f"{field}[{n}] is not valid Unicode text (character {exc.start}: {exc.reason})"
            ) from None
    return texts
