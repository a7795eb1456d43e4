"""Process memory: measure it, and give back what finished jobs left behind."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import sys
import threading
import time
from typing import Any

import psutil

log = logging.getLogger(__name__)


def _libc():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


_LIBC = _libc()


def _torch():
    # Only a worker that already imported torch pays for it; echo and llama.cpp never do.
    return sys.modules.get("torch")


def release_memory() -> None:
    """Collect garbage, empty the CUDA cache, and hand freed heap back to the OS."""
    gc.collect()
    torch = _torch()
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


# While jobs keep arriving the batch may never drain; then clean up after this many ends.
RELEASE_EVERY_JOBS = 32


class Releaser:
    """When to release memory in a process that runs several jobs at once.

    A release (a gc pass, the CUDA cache, malloc_trim) after every job would run while the
    other jobs of the batch are mid-step, holding the GIL and malloc's locks for them. So it
    runs when the batch drains (the last running job ended), or after RELEASE_EVERY_JOBS
    ends without a drain, which bounds both the garbage kept and how often running jobs
    share the machine with a release. Two threads never release at once.
    """

    def __init__(self, every_jobs: int = RELEASE_EVERY_JOBS) -> None:
        self.every_jobs = every_jobs
        self._lock = threading.Lock()
        self._running = threading.Lock()
        self._since = 0
        self.releases = 0
        self.last_seconds: float | None = None

    def after_job(self, *, drained: bool) -> bool:
        """Count a job's end; release if the batch drained or enough jobs ended. Return
        whether this call released."""
        with self._lock:
            self._since += 1
            if not drained and self._since < self.every_jobs:
                return False
            self._since = 0
        return self.release(wait=False)

    def release(self, *, wait: bool = True) -> bool:
        """Release memory now (wait=False: unless another thread is doing it)."""
        if not self._running.acquire(blocking=wait):
            return False
        try:
            t0 = time.perf_counter()
            release_memory()
            self.last_seconds = time.perf_counter() - t0
            self.releases += 1
        finally:
            self._running.release()
        log.debug("memory released in %.1f ms", self.last_seconds * 1000)
        return True


_PROCESS: psutil.Process | None = None


def _process() -> psutil.Process:
    # One Process object per process (a pool process is a fork: check the pid).
    global _PROCESS
    if _PROCESS is None or _PROCESS.pid != os.getpid():
        _PROCESS = psutil.Process()
    return _PROCESS


def memory_stats() -> dict[str, Any]:
    """Return RSS and, on CUDA, allocated/reserved/peak bytes."""
    proc = _process()
    stats: dict[str, Any] = {"rss_bytes": proc.memory_info().rss}
    torch = _torch()
    if torch is not None and torch.cuda.is_available():
        stats["cuda"] = {
            "device": torch.cuda.get_device_name(),
            "allocated_bytes": torch.cuda.memory_allocated(),
            "reserved_bytes": torch.cuda.memory_reserved(),
            "peak_bytes": torch.cuda.max_memory_allocated(),
        }
    return stats


def is_out_of_memory(exc: BaseException) -> bool:
    """Return True for Python and CUDA out-of-memory errors."""
    if isinstance(exc, MemoryError):
        return True
    torch = _torch()
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return oom is not None and isinstance(exc, oom)
