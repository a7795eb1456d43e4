"""One child process: its own session and log file, ended by the kernel with its parent.

`conveyor up` (shared/processes/supervisor.py), the benchmarks (bench/stack.py) and the tests
start their Redis, gunicorn and workers as a Child, so every launcher starts, watches and
stops its processes the same way.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from shared.config import Settings

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # prctl(2): the signal the kernel sends a child when its parent dies


def die_with_parent() -> None:
    """Ask the kernel to SIGTERM this process when its parent dies (Linux; no-op elsewhere).

    Meant as a Popen preexec_fn: it runs in the child before exec, so a launcher killed with
    SIGKILL leaves no orphans behind.
    """
    # CDLL(None): the symbols already loaded, libc's among them; nothing to look up after fork.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def child_env(
    settings: Settings | None = None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Return the environment of a child: this process's, the CONVEYOR_* variables that
    reproduce settings, unbuffered output, then extra on top."""
    env = dict(os.environ)
    if settings is not None:
        env.update(settings.as_env())
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


def _always_ready() -> bool:
    return True


@dataclass
class Child:
    """One process (and whatever it forks), its log file, and how to stop it.

    start() may be called again after the process died (a restart): the log is appended to.
    """

    name: str
    cmd: list[str]
    env: dict[str, str]
    log_path: Path
    ready: Callable[[], bool] = _always_ready
    restart: bool = True  # whether a supervisor restarts it when it dies
    cwd: Path | None = None
    proc: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)  # monotonic times of recent restarts

    def start(self) -> Child:
        """Start the process in a session of its own; return self."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            # Own session: a terminal's Ctrl-C reaches only the launcher, which then stops its
            # children in order instead of every process racing its own shutdown.
            self.proc = subprocess.Popen(
                self.cmd,
                env=self.env,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent if os.name == "posix" else None,
            )
        log.info("started %s (pid %s)", self.name, self.proc.pid)
        return self

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        """Return the last lines of the child's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def signal(self, sig: int) -> None:
        """Send sig to the child's process group (it and the processes it forked)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def session(self) -> list[int]:
        """Return every live process in the session this child leads (it and its forks)."""
        if self.proc is None:
            return []
        found = []
        for proc in psutil.process_iter():
            with contextlib.suppress(OSError, psutil.Error):
                if os.getsid(proc.pid) == self.proc.pid:
                    found.append(proc.pid)
        return found

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process, then SIGKILL whatever is left of its session."""
        if self.proc is None:
            return
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", self.name, timeout)
        # Its own session id: only what this child started (and what that forked) is in it.
        for pid in self.session():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
