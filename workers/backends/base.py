"""The small contract every backend keeps, and the context a job runs in."""

from __future__ import annotations

import contextlib
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from pydantic import BaseModel

from shared.config import Settings
from shared.errors import InputRejected, ModelNotAvailable
from shared.registry import ModelSpec, resolve_source

log = logging.getLogger(__name__)


@dataclass
class Result:
    """What a backend returns: the task's output and what it measured."""

    output: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)


class JobContext:
    """A running job as a backend sees it: media, events, and when to stop."""

    def __init__(
        self,
        job_id: str,
        *,
        read_media: Callable[[str], bytes],
        emit: Callable[[str, dict], None],
        stop_requested: Callable[[], bool],
        deadline: float | None,
        check_interval_s: float,
        media_path: Callable[[str], str | None] = lambda ref: None,
    ) -> None:
        self.job_id = job_id
        self._read_media = read_media
        self._media_path = media_path
        self._emit = emit
        self._stop_requested = stop_requested
        self.deadline = deadline
        self._interval = check_interval_s
        self._next_check = 0.0
        self.canceled = False
        self.timed_out = False
        self.tokens = 0

    def media(self, ref: dict[str, Any] | str) -> bytes:
        """Return the bytes of a media ref from the job input."""
        return self._read_media(ref["ref"] if isinstance(ref, dict) else ref)

    def media_path(self, ref: dict[str, Any] | str) -> str | None:
        """Return a local file path for a media ref when the store is on local disk."""
        return self._media_path(ref["ref"] if isinstance(ref, dict) else ref)

    def should_stop(self) -> bool:
        """Return True once the job was canceled or ran past its deadline (cheap to call)."""
        if self.canceled or self.timed_out:
            return True
        t = time.monotonic()
        if self.deadline is not None and t >= self.deadline:
            self.timed_out = True
            return True
        if t >= self._next_check:
            self._next_check = t + self._interval
            self.canceled = self._stop_requested()
        return self.canceled

    def token(self, text: str) -> None:
        """Publish one generated text delta on the job's event stream."""
        self._emit("token", {"index": self.tokens, "text": text})
        self.tokens += 1

    def progress(self, done: int, total: int, **extra: Any) -> None:
        """Publish progress through a multi-step job."""
        self._emit("progress", {"done": done, "total": total, **extra})


class Backend:
    """Load a model once (in load(), never __init__) and run its tasks.

    A backend writes only its model-specific parts: `load_model(path)` and, optionally,
    `warm_up()`; the base's `load()` runs the sequence every backend shares.
    """

    tasks: tuple[str, ...] = ()
    # Jobs one worker runs at once against its one loaded model, each calling run() from a
    # thread of its own, unless the registry entry sets max_concurrency: 1 for a backend
    # whose run() must not be entered by two jobs at once.
    default_max_concurrency: int = 1
    # False for a backend with no weights (echo): load_model() then gets path None.
    needs_weights = True
    # The scope load-time warm-up inference runs in (transformers backends: inference_mode).
    inference_scope: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    def __init__(self, spec: ModelSpec, settings: Settings) -> None:
        """Take the model's registry entry. :raises ModelNotAvailable: tasks it cannot run."""
        unknown = [t for t in spec.tasks if t not in self.tasks]
        if unknown:
            raise ModelNotAvailable(
                f"model {spec.id}: backend {spec.backend} cannot run tasks {unknown}; it runs "
                f"{list(self.tasks)} (fix `tasks` in the registry)"
            )
        self.spec = spec
        self.settings = settings
        self.loaded = False

    def load(self) -> None:
        """Find the weights, load the model, warm it up, cap the address space.

        :raises ModelNotAvailable: missing weights, or a model this machine cannot load.
        """
        path = resolve_source(self.spec)
        if path is None and self.needs_weights:
            raise ModelNotAvailable(
                f"model {self.spec.id} has no source; set source.path, package or hf_repo"
            )
        self.load_model(path)
        warm_up(self.spec, self._scoped_warm_up)
        cap_address_space(self.spec)
        self.loaded = True

    def load_model(self, path: Path | None) -> None:
        """Load the model from its weights at `path`; the model-specific part of load()."""

    def warm_up(self) -> None:
        """Run one tiny inference through a job's code path (load() calls it once)."""

    def _scoped_warm_up(self) -> None:
        with self.inference_scope():
            self.warm_up()

    @property
    def max_concurrency(self) -> int:
        """Return how many jobs may be inside run() at once: the registry's, else the default."""
        return self.spec.max_concurrency or self.default_max_concurrency

    # A backend whose jobs share forward passes sets this to its workers.batching.DynamicBatcher.
    batcher: Any = None

    def health(self) -> dict[str, Any]:
        """Return facts about the loaded model for the admin views."""
        info: dict[str, Any] = {"loaded": self.loaded}
        if self.loaded and self.batcher is not None:
            info["batching"] = self.batcher.describe()
        return info

    def close(self) -> None:
        """Release the model (and stop its batcher)."""
        if self.batcher is not None:
            self.batcher.close()
            self.batcher = None
        self.loaded = False

    def run(self, task: str, inputs: BaseModel, ctx: JobContext) -> Result:
        """Run one task. :raises JobFailure: for failures the client should see."""
        method = getattr(self, task, None)
        if task not in self.tasks or method is None:
            raise InputRejected(f"backend {type(self).__name__} cannot run task {task!r}")
        return method(inputs, ctx)

    def cleanup(self) -> None:
        """Drop caches the model keeps between jobs; run when an operator asks for a cleanup
        (POST /admin/cleanup). The worker releases memory after every job on its own."""


def warm_up(spec: ModelSpec, run: Callable[[], object]) -> None:
    """Run one tiny inference at load time (unless `options.warmup` is false).

    It goes through the same code path as a job, so a model that cannot run on this
    machine (a kernel that crashes on this CPU, a missing chat template) fails the worker's
    start instead of every job; and the first pass's one-off allocations (thread pools,
    kernel caches) stay out of the first job's latency and the RSS baseline.
    """
    if spec.options.get("warmup", True) is False:
        return
    t0 = time.perf_counter()
    run()
    log.info("model %s: warmed up in %.2fs", spec.id, time.perf_counter() - t0)


def cap_address_space(spec: ModelSpec) -> int | None:
    """Cap this process's address space at its size now plus `options.memory_limit_mb`.

    On the CPU there is no allocator limit like CUDA's; a cap makes a job that asks for
    more memory than the budget fail with out_of_memory instead of waking the kernel's
    OOM killer. Returns the cap in bytes, or None when the option is unset.
    """
    headroom_mb = spec.options.get("memory_limit_mb")
    if not headroom_mb:
        return None
    cap = psutil.Process().memory_info().vms + int(headroom_mb) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (cap, resource.RLIM_INFINITY))
    log.info("model %s: address space capped at %.0f MiB", spec.id, cap / 2**20)
    return cap


def tokens_per_second(tokens: int, elapsed_s: float) -> float | None:
    """Return generation speed as every backend reports it in a job's metrics."""
    return round(tokens / elapsed_s, 3) if elapsed_s > 0 else None
