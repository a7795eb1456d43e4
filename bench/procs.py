"""Child processes of a benchmark: start them in their own group, always stop them."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class StartFailed(RuntimeError):
    """A benchmark component did not come up; the message carries its log tail."""


def _die_with_parent() -> None:
    # Runs in the child before exec: SIGTERM it if the benchmark itself is killed -9.
    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Child:
    """One started process (and whatever it forks), its log, and how to stop it."""

    def __init__(
        self, name: str, cmd: list[str], log_path: Path, *, env: dict[str, str], cwd: Path
    ) -> None:
        self.name = name
        self.log_path = log_path
        with open(log_path, "wb") as out:
            # Own session: a terminal's Ctrl-C reaches only the benchmark, which then stops
            # its children in order instead of every process racing its own shutdown.
            self.proc = subprocess.Popen(
                cmd,
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent if os.name == "posix" else None,
            )
        log.info("started %s (pid %s)", name, self.proc.pid)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def session(self) -> list[int]:
        """Return every live process in the session this child leads (it and its forks)."""
        found = []
        for proc in psutil.process_iter():
            with contextlib.suppress(OSError, psutil.Error):
                if os.getsid(proc.pid) == self.pid:
                    found.append(proc.pid)
        return found

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process, then SIGKILL whatever is left of its session."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", self.name, timeout)
        # Our own session id: only what we started (and what it forked) is in it.
        for pid in self.session():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


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
