"""The jobs a worker runs at once: each one's thread, lease and time limits.

Celery's threads pool runs up to `max_concurrency` jobs in one process, each in a pool
thread of its own. It enforces no time limits (only prefork does), so the limits a job's
message carries are kept here:

- soft: the backend stops itself at the job's deadline; a step that does not check in is
  interrupted COOPERATIVE_GRACE_S later by SoftTimeLimitExceeded raised in its thread (as
  Celery's prefork soft limit raises it in its pool process);
- hard: a step that still has not returned HARD_LIMIT_GRACE_S after that (a native call
  that never comes back to Python) cannot be interrupted in a thread: its job ends as
  failed/timeout at once, and the worker is recycled once its other jobs finished.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from celery.exceptions import SoftTimeLimitExceeded

log = logging.getLogger(__name__)

WATCH_S = 0.2  # how often the watchdog looks at the running jobs' time limits


@dataclass
class Slot:
    """One running job."""

    job_id: str
    thread: int  # threading.get_ident() of the pool thread running it
    soft_at: float | None  # time.monotonic() of its soft limit
    hard_at: float | None
    interrupted: bool = False  # SoftTimeLimitExceeded was raised in its thread
    finishing: bool = False  # its backend call returned: no more interruptions
    abandoned: bool = False  # ended at the hard limit; its thread may never come back


class Slots:
    """The table of running jobs, shared by the pool threads, the lease renewer and the
    watchdog; `idle` is notified whenever a job leaves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.idle = threading.Condition(self._lock)
        self._slots: dict[str, Slot] = {}

    def enter(self, job_id: str, soft_s: float | None, hard_s: float | None) -> Slot:
        """Register the calling thread's job; its limits count from now."""
        t = time.monotonic()
        slot = Slot(
            job_id,
            threading.get_ident(),
            t + soft_s if soft_s else None,
            t + hard_s if hard_s else None,
        )
        with self._lock:
            self._slots[job_id] = slot
        return slot

    def finishing(self, slot: Slot) -> None:
        """The job's backend call returned (or raised): the watchdog leaves its thread alone."""
        with self._lock:
            slot.finishing = True

    def leave(self, slot: Slot) -> int:
        """Drop a job from the table; return how many live jobs are left."""
        with self.idle:
            if self._slots.get(slot.job_id) is slot:
                del self._slots[slot.job_id]
            left = self._live()
            self.idle.notify_all()
        return left

    def live_ids(self) -> list[str]:
        """Return the ids of the running jobs not abandoned at their hard limit."""
        with self._lock:
            return [s.job_id for s in self._slots.values() if not s.abandoned]

    def live(self) -> int:
        with self._lock:
            return self._live()

    def _live(self) -> int:
        return sum(not s.abandoned for s in self._slots.values())

    def wait_drained(self, stop: threading.Event) -> bool:
        """Block until no live job is left (True), or stop is set (False)."""
        with self.idle:
            while self._live():
                if stop.is_set():
                    return False
                self.idle.wait(0.5)
        return True

    def watch(
        self, stop: threading.Event, on_hard_limit: Callable[[Slot], None]
    ) -> threading.Thread:
        """Enforce the running jobs' soft and hard limits until stop is set."""

        def loop() -> None:
            while not stop.wait(WATCH_S):
                for slot in self._due(time.monotonic()):
                    try:
                        on_hard_limit(slot)
                    except Exception:  # a Redis blip must not end the watchdog
                        log.warning("job %s: hard limit handling failed", slot.job_id, exc_info=1)

        thread = threading.Thread(target=loop, name="conveyor-time-limits", daemon=True)
        thread.start()
        return thread

    def _due(self, t: float) -> list[Slot]:
        """Interrupt jobs past their soft limit; return (and abandon) those past the hard."""
        hard = []
        with self._lock:
            for slot in self._slots.values():
                if slot.finishing or slot.abandoned:
                    continue
                if slot.hard_at is not None and t >= slot.hard_at:
                    slot.abandoned = True
                    hard.append(slot)
                elif slot.soft_at is not None and t >= slot.soft_at and not slot.interrupted:
                    # Under the lock and before `finishing`: the exception can only land
                    # inside the job's own call (see WorkerRuntime._call_backend).
                    slot.interrupted = True
                    log.warning("job %s: soft time limit reached; interrupting", slot.job_id)
                    raise_in_thread(slot.thread, SoftTimeLimitExceeded)
        return hard


def raise_in_thread(ident: int, exc_type: type[BaseException]) -> bool:
    """Raise exc_type in another Python thread at its next bytecode (not inside a C call)."""
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(exc_type)
    )
    return done == 1
