"""`conveyor up` starts workers on demand, stops them when idle, and makes room (LRU)."""

from __future__ import annotations

import time

import psutil
import pytest
import requests

from tests.conftest import wait_for
from tests.e2e.test_conveyor_up import cmdline, start_up

pytestmark = pytest.mark.timeout(420)


def model_facts(base: str, model: str) -> dict:
    listed = requests.get(f"{base}/admin/models", timeout=10).json()["models"]
    return next(m for m in listed if m["id"] == model)


def online(base: str) -> set[str]:
    """Return the models with a worker online (heartbeats in the fleet)."""
    listed = requests.get(f"{base}/admin/models", timeout=10).json()["models"]
    return {m["id"] for m in listed if m["workers_online"]}


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def worker_pids(up_pid: int) -> set[int]:
    """Return the pids of the `conveyor worker` processes `conveyor up` started."""
    return {
        p.pid
        for p in psutil.Process(up_pid).children()
        if "worker" in cmdline(p) and "--model" in cmdline(p)
    }


def test_on_demand_start_keep_alive_and_lru(tmp_path):
    up = start_up(
        ["--model", "echo", "--keep-alive", "12", "--max-workers", "2"],
        tmp_path,
        ready="conveyor is up",
    )
    base = f"http://127.0.0.1:{up.port}"
    try:
        banner = up.read_until("on demand:", timeout=10)
        assert "minilm" in banner and "smollm2-135m" in banner
        # deepseek's weights are not on this machine: no worker will start, so 503 at once.
        t0 = time.monotonic()
        r = requests.post(
            f"{base}/v1/chat/completions",
            json={"model": "deepseek-r1-8b", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert time.monotonic() - t0 < 1.0
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "no_worker"
        assert "conveyor models pull deepseek-r1-8b" in r.json()["error"]["message"]
        assert online(base) == {"echo"}
        pinned = worker_pids(up.pid)
        assert len(pinned) == 1

        # minilm has no worker, but its weights ship offline: the request starts one and waits.
        assert model_facts(base, "minilm")["on_demand"] == {"startable": True, "worker": None}
        t0 = time.monotonic()
        r = requests.post(
            f"{base}/v1/embeddings", json={"model": "minilm", "input": "on demand"}, timeout=120
        )
        assert r.status_code == 200, r.text
        assert len(r.json()["data"][0]["embedding"]) == 384
        assert time.monotonic() - t0 < 60
        assert online(base) == {"echo", "minilm"}
        minilm = wait_for(
            lambda: (
                (model_facts(base, "minilm")["on_demand"]["worker"] or {}).get("stops_at")
                and model_facts(base, "minilm")["on_demand"]["worker"]
            ),
            timeout=10,
        )
        assert minilm["stops_at"] > time.time()  # it says when it will stop
        assert minilm["pid"] in worker_pids(up.pid) - pinned
        assert model_facts(base, "echo")["on_demand"]["worker"] is None  # pinned: not on demand

        # Two workers run (--max-workers 2): a chat for smollm2 stops minilm, the least
        # recently used idle on-demand worker, and starts smollm2's.
        r = requests.post(
            f"{base}/v1/chat/completions",
            json={
                "model": "smollm2-135m",
                "messages": [{"role": "user", "content": "Say hi"}],
                "max_tokens": 4,
            },
            timeout=180,
        )
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"]
        assert online(base) == {"echo", "smollm2-135m"}
        assert not alive(minilm["pid"])
        assert model_facts(base, "minilm")["on_demand"]["worker"] is None
        smollm2 = model_facts(base, "smollm2-135m")["on_demand"]["worker"]
        assert "stopping minilm, the least recently used idle one" in up.read_until(
            "least recently used", timeout=5
        )

        # Idle for --keep-alive: smollm2's worker stops; echo (named with --model) stays.
        wait_for(lambda: not alive(smollm2["pid"]), timeout=60)
        wait_for(lambda: model_facts(base, "smollm2-135m")["on_demand"]["worker"] is None, 5)
        assert online(base) == {"echo"}
        assert worker_pids(up.pid) == pinned
        assert (
            requests.post(
                f"{base}/v1/jobs",
                json={"model": "echo", "input": {"text": "still here"}},
                headers={"Prefer": "wait=30"},
                timeout=60,
            ).json()["status"]
            == "succeeded"
        )
    finally:
        out = up.stop()
    assert not [p for p in psutil.process_iter() if p.pid == up.pid]
    assert "Traceback" not in out, out


def test_no_on_demand_answers_503(tmp_path):
    up = start_up(["--model", "echo", "--no-on-demand"], tmp_path, ready="conveyor is up")
    base = f"http://127.0.0.1:{up.port}"
    try:
        t0 = time.monotonic()
        r = requests.post(
            f"{base}/v1/embeddings", json={"model": "minilm", "input": "x"}, timeout=30
        )
        assert time.monotonic() - t0 < 1.0
        assert r.status_code == 503 and r.headers["Retry-After"] == "10", r.text
        assert online(base) == {"echo"}
    finally:
        up.stop()
