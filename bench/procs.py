"""Waiting for a benchmark's child processes (shared/processes/child.py) to come up."""

from __future__ import annotations

import time
from collections.abc import Callable

from shared.processes.child import Child


class StartFailed(RuntimeError):
    """A benchmark component did not come up; the message carries its log tail."""


def wait_until(
    predicate: Callable[[], object],
    *,
    timeout: float,
    what: str,
    child: Child | None = None,
    interval: float = 0.1,
):
    """Poll predicate until it is truthy and return its value.

    :raises StartFailed: when the timeout passes or the child exits first.
    """
    deadline = time.monotonic() + timeout
    while True:
        if child is not None and not child.alive():
            raise StartFailed(
                f"{child.name} exited with {child.proc.returncode} while waiting "
                f"for {what}:\n{child.tail()}"
            )
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = f":\n{child.tail()}" if child is not None else ""
            raise StartFailed(f"timed out after {timeout:g}s waiting for {what}{tail}")
        time.sleep(interval)
