"""`conveyor up` end to end: embedded Redis, gunicorn, workers, restarts, clean exit."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest
import requests

from shared.processes.redis_server import free_port
from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.timeout(300)


class Up:
    """A running `conveyor up` whose output a thread reads, so no read blocks past its deadline."""

    def __init__(self, args, data_dir, env=None):
        self.port = free_port()  # released before the stack binds it: see start_up()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shared.cli.main",
                "up",
                "--data-dir",
                str(data_dir),
                "--port",
                str(self.port),
                *args,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)  # end of output

    def read_until(self, needle: str, timeout: float = 180) -> str:
        """Return the output so far once a line holds needle; fail at the deadline or EOF."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if needle in line:
                return "".join(self.seen)
        pytest.fail(f"never saw {needle!r}; output:\n{''.join(self.seen)}")

    def stop(self, sig=signal.SIGINT, timeout: float = 60) -> str:
        """Send sig (None: send nothing) and return all output once the process ended."""
        if sig is not None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait(10)
            pytest.fail(f"conveyor up did not stop within {timeout}s:\n{''.join(self.seen)}")
        self._reader.join(10)
        while (line := self._drain()) is not None:
            self.seen.append(line)
        return "".join(self.seen)

    def _drain(self) -> str | None:
        try:
            return self.lines.get_nowait()
        except queue.Empty:
            return None


def start_up(args, data_dir, env=None, *, ready: str | None = None, attempts: int = 3) -> Up:
    """Start `conveyor up` on a free port; with ready, wait for that line, and try another
    port when the one picked was taken before the stack bound it."""
    for _ in range(attempts):
        up = Up(args, data_dir, env)
        if ready is None:
            return up
        try:
            up.read_until(ready)
            return up
        except pytest.fail.Exception:
            out = up.stop()
            if "Address already in use" not in out:
                raise
    pytest.fail(f"no free port in {attempts} attempts")


def cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:  # gone or a zombie by now
        return []


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def stack_processes(data_dir) -> list[psutil.Process]:
    """Return live processes that belong to the stack running on data_dir."""
    found = []
    needle = str(data_dir.resolve())
    for p in psutil.process_iter():
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            # redis-server rewrites its title and environ, but works in its --dir.
            if (
                needle in " ".join(p.cmdline())
                or p.cwd().startswith(needle)
                or p.environ().get("CONVEYOR_DATA_DIR", "").startswith(needle)
            ):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def gone(processes: list[psutil.Process]) -> bool:
    return not [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_up_serves_restarts_and_stops_cleanly(tmp_path):
    up = start_up(
        ["--model", "smollm2-135m", "--model", "echo"], tmp_path, ready="Ctrl-C stops everything"
    )
    try:
        base = f"http://127.0.0.1:{up.port}"
        banner = "".join(up.seen)
        assert f"conveyor is up at {base}" in banner
        assert '"model": "smollm2-135m"' in banner  # the curl example names the chat model

        rec = requests.post(
            f"{base}/v1/jobs",
            headers={"Prefer": "wait=60"},
            timeout=70,
            json={
                "model": "smollm2-135m",
                "task": "chat",
                "input": {
                    "prompt": "What is the capital of France?",
                    "max_tokens": 30,
                    "temperature": 0,
                },
            },
        ).json()
        assert rec["status"] == "succeeded" and "Paris" in rec["output"]["text"]

        # A worker that dies is brought back by the supervisor.
        models = requests.get(f"{base}/v1/models", timeout=5).json()["data"]
        assert {m["id"]: m["workers_online"] for m in models}["echo"] == 1
        worker = next(
            p for p in descendants(up.pid) if "worker" in cmdline(p) and "echo" in cmdline(p)
        )
        for p in [worker, *worker.children(recursive=True)]:
            p.kill()
        wait_for(
            lambda: any(
                "worker" in cmdline(p) and "echo" in cmdline(p) and p.pid != worker.pid
                for p in descendants(up.pid)
            ),
            30,
            what="the echo worker to be restarted",
        )
        rec = requests.post(
            f"{base}/v1/jobs",
            headers={"Prefer": "wait=60"},
            timeout=70,
            json={"model": "echo", "input": {"after": "restart"}},
        ).json()
        assert rec.get("status") == "succeeded", rec

        children = descendants(up.pid)
        assert {p.pid for p in children} <= {p.pid for p in stack_processes(tmp_path)}
        assert len(children) >= 5  # redis, gunicorn + its workers, two celery workers + pools
    finally:
        tail = up.stop()
    assert up.proc.returncode == 0, tail
    assert "conveyor: stopping" in tail
    # Children reparented to init may take a moment to be reaped.
    wait_for(lambda: gone(children), 10, what="the stack's processes to exit")
    assert not stack_processes(tmp_path)


def test_ctrl_c_while_starting_stops_everything(tmp_path):
    up = start_up(["--model", "smollm2-135m"], tmp_path, ready="starting worker-smollm2-135m")
    out = up.stop()
    assert up.proc.returncode == 0, out
    assert "conveyor: stopping" in out
    assert not stack_processes(tmp_path)


def test_up_fails_loudly_when_a_worker_cannot_start(tmp_path):
    registry = tmp_path / "models.yaml"
    registry.write_text(
        textwrap.dedent("""
        models:
          - id: ghost
            backend: llamacpp
            tasks: [chat]
            source: {path: /nonexistent/ghost.gguf}
    """)
    )
    up = start_up(["--model", "ghost"], tmp_path / "data", env={"CONVEYOR_REGISTRY": str(registry)})
    out = up.stop(None, timeout=120)
    assert up.proc.returncode != 0
    assert "worker-ghost exited" in out
    assert "/nonexistent/ghost.gguf does not exist" in out  # the worker's own log tail
    assert not stack_processes(tmp_path / "data")
