"""Live job events over SSE, under gunicorn: order, replay, several clients, heartbeats."""

from __future__ import annotations

import threading

import pytest
import requests

from tests.conftest import wait_for
from tests.webhook_receiver import sse_frames

pytestmark = pytest.mark.timeout(300)
TERMINAL = {"succeeded", "failed", "canceled"}


@pytest.fixture(scope="module")
def server(make_settings, start_worker, start_server):
    settings = make_settings(sse_heartbeat_s=0.5)
    start_worker(settings, "echo")
    start_worker(settings, "smollm2-135m")
    return start_server(settings).url


def submit(server, body):
    resp = requests.post(f"{server}/v1/jobs", json=body, timeout=10)
    assert resp.status_code == 202, resp.text
    return resp.json()


def chat(server, max_tokens=60):
    return submit(
        server,
        {
            "model": "smollm2-135m",
            "task": "chat",
            "input": {
                "prompt": "List the planets of the solar system, one per line.",
                "max_tokens": max_tokens,
                "temperature": 0,
            },
        },
    )


def stream(server, job_id, last_event_id=None, stop_after=None):
    """Read a job's events until the stream ends (or stop_after frames); return the frames."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    frames = []
    with requests.get(
        f"{server}/v1/jobs/{job_id}/events", headers=headers, stream=True, timeout=30
    ) as resp:
        assert resp.status_code == 200, resp.text
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        for frame in sse_frames(resp):
            if "event" not in frame:
                continue
            frames.append(frame)
            if stop_after and len(frames) >= stop_after:
                break
    return frames


def tokens_of(frames):
    return [f["data"] for f in frames if f["event"] == "token"]


def test_tokens_arrive_in_order_and_the_stream_ends(server):
    job = chat(server)
    frames = stream(server, job["id"])
    statuses = [f["data"]["status"] for f in frames if f["event"] == "status"]
    assert statuses[0] == "queued" and "running" in statuses and statuses[-1] == "succeeded"
    assert frames[-1]["event"] == "status"  # nothing after the terminal event
    tokens = tokens_of(frames)
    assert [t["index"] for t in tokens] == list(range(len(tokens)))
    final = requests.get(f"{server}/v1/jobs/{job['id']}", timeout=10).json()
    assert len(tokens) == final["metrics"]["completion_tokens"] > 5
    assert "".join(t["text"] for t in tokens) == final["output"]["text"]
    ids = [f["id"] for f in frames]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))


def test_reconnect_with_last_event_id_replays_what_was_missed(server):
    job = chat(server, max_tokens=120)
    first = stream(server, job["id"], stop_after=8)  # then the client drops
    assert len(first) == 8
    rest = stream(server, job["id"], last_event_id=first[-1]["id"])
    late = stream(server, job["id"])  # a client arriving after the end gets everything
    assert late[-1]["data"]["status"] == "succeeded"
    assert [f["id"] for f in first + rest] == [f["id"] for f in late]
    assert first + rest == late
    text = "".join(t["text"] for t in tokens_of(late))
    assert (
        text == requests.get(f"{server}/v1/jobs/{job['id']}", timeout=10).json()["output"]["text"]
    )


def test_several_clients_at_once_see_the_same_events(server):
    jobs = [chat(server, max_tokens=40), chat(server, max_tokens=40)]
    results: dict[tuple[int, int], list] = {}

    def read(j, k):
        results[(j, k)] = stream(server, jobs[j]["id"])

    threads = [threading.Thread(target=read, args=(j, k)) for j in range(2) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 6
    for j in range(2):
        seen = [results[(j, k)] for k in range(3)]
        assert seen[0] == seen[1] == seen[2]
        assert seen[0][-1]["data"]["status"] == "succeeded"
        assert tokens_of(seen[0])


def test_progress_events_and_heartbeats_while_idle(server):
    # minilm has no worker: the job waits, and the stream sends heartbeats meanwhile.
    waiting = submit(server, {"model": "minilm", "input": {"text": "hi"}})
    seen = []
    with requests.get(f"{server}/v1/jobs/{waiting['id']}/events", stream=True, timeout=30) as resp:
        for frame in sse_frames(resp):
            seen.append(frame)
            if sum(1 for f in seen if f.get("comment") == "heartbeat") == 2:
                requests.post(f"{server}/v1/jobs/{waiting['id']}/cancel", timeout=10)
    assert [f["data"]["status"] for f in seen if f.get("event") == "status"] == [
        "queued",
        "canceled",
    ]
    echo = submit(server, {"model": "echo", "input": {"sleep_s": 2.5}})
    frames = stream(server, echo["id"])
    progress = [f["data"] for f in frames if f["event"] == "progress"]
    assert [p["done"] for p in progress] == [20 * (n + 1) for n in range(len(progress))]
    assert progress and all(p["total"] == 50 for p in progress)


def test_cancel_reaches_the_stream_and_ends_it(server):
    job = chat(server, max_tokens=800)
    got: list = []
    with requests.get(f"{server}/v1/jobs/{job['id']}/events", stream=True, timeout=30) as resp:
        for frame in sse_frames(resp):
            if "event" not in frame:
                continue
            got.append(frame)
            if frame["event"] == "token" and frame["data"]["index"] == 0:
                requests.post(f"{server}/v1/jobs/{job['id']}/cancel", timeout=10)
    assert got[-1]["event"] == "status" and got[-1]["data"]["status"] == "canceled"
    rec = requests.get(f"{server}/v1/jobs/{job['id']}", timeout=10).json()
    assert rec["output"]["text"] and rec["output"]["finish_reason"] == "canceled"
    tokens = [f["data"]["text"] for f in got if f["event"] == "token"]
    assert rec["output"]["text"] == "".join(tokens)
    assert len(tokens) == rec["metrics"]["completion_tokens"] < 800


def test_unknown_job_and_bad_last_event_id(server):
    assert requests.get(f"{server}/v1/jobs/nope/events", timeout=10).status_code == 404
    job = submit(server, {"model": "echo", "input": {}})
    resp = requests.get(
        f"{server}/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": "garbage"}, timeout=10
    )
    assert resp.status_code == 422 and resp.json()["error"]["param"] == "Last-Event-ID"
    wait_for(
        lambda: (
            requests.get(f"{server}/v1/jobs/{job['id']}", timeout=10).json()["status"] in TERMINAL
        ),
        20,
        what="echo job to end",
    )
