"""Process memory: measure it, and give back what a finished job left behind."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import sys
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
