"""`conveyor up` end to end: embedded Redis, gunicorn, workers, restarts, clean exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
import requests

from shared.redis_server import free_port
from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.timeout(300)


def start_up(args, data_dir, env=None):
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "up", "--data-dir", str(data_dir), *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, start_new_session=True,
    )
    return proc


def read_until(proc, needle: str, timeout: float = 180) -> str:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if needle in line:
            return "".join(seen)
    pytest.fail(f"never saw {needle!r}; output:\n{''.join(seen)}")


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
            if needle in " ".join(p.cmdline()) or p.cwd().startswith(needle) or \
                    p.environ().get("CONVEYOR_DATA_DIR", "").startswith(needle):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_up_serves_restarts_and_stops_cleanly(tmp_path):
    port = free_port()
    proc = start_up(["--model", "smollm2-135m", "--model", "echo", "--port", str(port)],
                    tmp_path)
    try:
        banner = read_until(proc, "Ctrl-C stops everything")
        base = f"http://127.0.0.1:{port}"
        assert f"conveyor is up at {base}" in banner
        assert '"model": "smollm2-135m"' in banner  # the curl example names the chat model

        rec = requests.post(f"{base}/v1/jobs", headers={"Prefer": "wait=60"}, timeout=70, json={
            "model": "smollm2-135m", "task": "chat",
            "input": {"prompt": "What is the capital of France?", "max_tokens": 30,
                      "temperature": 0}}).json()
        assert rec["status"] == "succeeded" and "Paris" in rec["output"]["text"]

        # A worker that dies is brought back by the supervisor.
        models = requests.get(f"{base}/v1/models", timeout=5).json()["data"]
        assert {m["id"]: m["workers_online"] for m in models}["echo"] == 1
        worker = next(p for p in descendants(proc.pid)
                      if "worker" in cmdline(p) and "echo" in cmdline(p))
        for p in [worker, *worker.children(recursive=True)]:
            p.kill()
        wait_for(lambda: any("worker" in cmdline(p) and "echo" in cmdline(p)
                             and p.pid != worker.pid for p in descendants(proc.pid)),
                 30, what="the echo worker to be restarted")
        rec = requests.post(f"{base}/v1/jobs", headers={"Prefer": "wait=60"}, timeout=70,
                            json={"model": "echo", "input": {"after": "restart"}}).json()
        assert rec.get("status") == "succeeded", rec

        children = descendants(proc.pid)
        assert {p.pid for p in children} <= {p.pid for p in stack_processes(tmp_path)}
        assert len(children) >= 5  # redis, gunicorn + its workers, two celery workers + pools
    finally:
        proc.send_signal(signal.SIGINT)
        tail, _ = proc.communicate(timeout=60)  # drains the pipe while it stops
    assert proc.returncode == 0, tail
    assert "conveyor: stopping" in tail
    time.sleep(0.5)
    alive = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"orphans left behind: {[p.cmdline() for p in alive]}"
    assert not stack_processes(tmp_path)


def test_ctrl_c_while_starting_stops_everything(tmp_path):
    proc = start_up(["--model", "smollm2-135m", "--port", str(free_port())], tmp_path)
    read_until(proc, "starting worker-smollm2-135m")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "conveyor: stopping" in out
    assert not stack_processes(tmp_path)


def test_up_fails_loudly_when_a_worker_cannot_start(tmp_path):
    registry = tmp_path / "models.yaml"
    registry.write_text(textwrap.dedent("""
        models:
          - id: ghost
            backend: llamacpp
            tasks: [chat]
            source: {path: /nonexistent/ghost.gguf}
    """))
    proc = start_up(["--model", "ghost", "--port", str(free_port())], tmp_path / "data",
                    env={"CONVEYOR_REGISTRY": str(registry)})
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "worker-ghost exited" in out
    assert "/nonexistent/ghost.gguf does not exist" in out  # the worker's own log tail
    assert not stack_processes(tmp_path / "data")
