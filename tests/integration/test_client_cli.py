"""The Python client (shared/client/) and the `conveyor` CLI on top of it, end to end
against gunicorn and real workers; the CLI runs as `.venv/bin/conveyor` subprocesses."""

from __future__ import annotations

import base64
import io
import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.client import (
    AuthenticationError,
    Client,
    InvalidInputError,
    JobCanceledError,
    JobFailedError,
    JobTimeoutError,
    NotFoundError,
    raise_for_outcome,
)
from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.timeout(600)

KEY = "cli-test-key"
SMOL = "smollm2-135m"
CONVEYOR = str(Path(sys.executable).with_name("conveyor"))
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 40
MP4 = b"\x00\x00\x00\x18ftypisom" + b"\x00" * 32


@pytest.fixture(scope="module")
def server(make_settings, start_worker, start_server):
    settings = make_settings(api_keys=[KEY])
    start_worker(settings, "echo")
    start_worker(settings, SMOL)
    return start_server(settings)


@pytest.fixture
def client(server):
    with Client(server.url, api_key=KEY, timeout=30) as c:
        yield c


def cli(server, *args, timeout=120, env=None, **kwargs) -> subprocess.CompletedProcess:
    """Run `conveyor ARGS` with the server in CONVEYOR_URL and the key in CONVEYOR_API_KEY."""
    full_env = {**os.environ, "CONVEYOR_URL": server.url, "CONVEYOR_API_KEY": KEY, **(env or {})}
    return subprocess.run(
        [CONVEYOR, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env=full_env,
        **kwargs,
    )


def occupy_echo(client, seconds: float = 4.0):
    """Keep the echo worker busy so the next echo job has to queue."""
    busy = client.submit("echo", {"sleep_s": seconds})
    wait_for(lambda: client.get(busy.id).status == "running", 20, what="echo busy")
    return busy


# the client
def test_run_returns_the_succeeded_job(client):
    job = client.run(
        SMOL,
        {"prompt": "What is the capital of France?", "max_tokens": 30, "temperature": 0},
        task="chat",
        timeout=120,
    )
    assert job.status == "succeeded" and "Paris" in job.output["text"]
    assert job.metrics.completion_tokens > 0 and job.urls["get"].endswith(job.id)


def test_media_from_path_bytes_and_file(client, tmp_path):
    image = tmp_path / "photo.bin"
    image.write_bytes(PNG)
    with open(tmp_path / "clip.bin", "wb") as f:
        f.write(MP4)
    with open(tmp_path / "clip.bin", "rb") as video:
        job = client.submit(
            "echo", {"note": "media", "image": image, "audio": WAV, "video": video}, wait=20
        )
    assert job.status == "succeeded"
    assert {k: job.input[k]["media_type"] for k in ("image", "audio", "video")} == {
        "image": "image/png",
        "audio": "audio/wav",
        "video": "video/mp4",
    }
    assert job.input["image"]["bytes"] == len(PNG) and job.input["note"] == "media"
    b64 = client.submit(
        "echo", {"image": "data:image/png;base64," + base64.b64encode(PNG).decode()}, wait=20
    )
    assert b64.input["image"]["media_type"] == "image/png"


def test_events_stream_tokens_then_ends(client):
    job = client.submit(
        SMOL, {"prompt": "Count from one to ten.", "max_tokens": 24, "temperature": 0}, task="chat"
    )
    events = list(client.events(job.id))
    statuses = [e.data["status"] for e in events if e.event == "status"]
    assert statuses[0] == "queued" and statuses[-1] == "succeeded" and "running" in statuses
    tokens = [e.data["text"] for e in events if e.event == "token"]
    assert len(tokens) > 3
    assert "".join(tokens) == client.get(job.id).output["text"]
    assert all(e.id for e in events)
    replay = list(client.events(job.id, last_event_id=events[-2].id))
    assert [e.id for e in replay] == [events[-1].id]


def test_wait_timeout_cancel_and_outcome_errors(client):
    job = client.submit("echo", {"sleep_s": 30})
    t0 = time.monotonic()
    with pytest.raises(JobTimeoutError) as exc:
        client.wait(job.id, timeout=1)
    assert 0.9 < time.monotonic() - t0 < 5 and exc.value.job.status in ("queued", "running")
    client.cancel(job.id)
    assert client.wait(job.id, timeout=10).status == "canceled"
    with pytest.raises(JobFailedError) as exc:
        client.run("echo", {"fail": "boom"}, timeout=30)
    assert exc.value.job.error.type == "echo_failure" and "boom" in str(exc.value)
    with pytest.raises(JobTimeoutError) as exc:
        client.run("echo", {"sleep_s": 5}, timeout=0.5)
    client.cancel(exc.value.job.id)
    with pytest.raises(JobCanceledError):
        raise_for_outcome(client.wait(exc.value.job.id, timeout=10))


def test_typed_errors_carry_the_envelope(client, server):
    with pytest.raises(NotFoundError) as exc:
        client.submit("no-such-model", {})
    assert exc.value.code == "model_not_found" and exc.value.param == "model"
    assert exc.value.envelope["error"]["type"] == "not_found"
    with pytest.raises(NotFoundError):
        client.get("0" * 32)
    with pytest.raises(InvalidInputError) as exc:
        client.submit(SMOL, {"prompt": "x", "max_tokens": 0}, task="chat")
    assert exc.value.param == "input.max_tokens" and exc.value.status_code == 422
    with pytest.raises(AuthenticationError), Client(server.url, api_key="wrong") as bad:
        bad.get("0" * 32)


# the CLI
def test_cli_submit_wait_json(server):
    done = cli(
        server,
        "submit",
        "echo",
        "--input",
        "msg=hello",
        "-i",
        "n=3",
        "-i",
        'tags=["a","b"]',
        "--wait",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    rec = json.loads(done.stdout)
    assert rec["status"] == "succeeded"
    assert rec["output"]["echo"] == {"msg": "hello", "n": 3, "tags": ["a", "b"], "sleep_s": 0.0}


def test_cli_stream_prints_tokens_as_they_come(server):
    done = cli(
        server,
        "submit",
        SMOL,
        "--task",
        "chat",
        "-p",
        "Count from one to ten.",
        "-i",
        "max_tokens=24",
        "-i",
        "temperature=0",
        "--stream",
    )
    assert done.returncode == 0, done.stderr
    job_id = done.stderr.split("job ", 1)[1].split()[0]
    rec = json.loads(cli(server, "get", job_id, "--json").stdout)
    assert done.stdout == rec["output"]["text"] + "\n"
    assert f"[{job_id}] running" in done.stderr and f"[{job_id}] succeeded" in done.stderr


def test_cli_stream_json_lines_of_events(server):
    done = cli(
        server,
        "submit",
        SMOL,
        "--task",
        "complete",
        "-p",
        "Say hi.",
        "-i",
        "max_tokens=8",
        "--stream",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert any(e.get("event") == "token" for e in lines[:-1])
    assert lines[-1]["status"] == "succeeded"


def test_cli_wait_timeout_cancel_exit_codes(server):
    submitted = cli(server, "submit", "echo", "-i", "sleep_s=30")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    waited = cli(server, "wait", job_id, "--timeout", "1")
    assert waited.returncode == 5 and "timed out" in waited.stderr
    canceled = cli(server, "cancel", job_id)
    assert canceled.returncode == 0 and job_id in canceled.stdout
    assert cli(server, "wait", job_id).returncode == 4
    failed = cli(server, "submit", "echo", "-i", "fail=boom", "--wait")
    assert failed.returncode == 3 and "boom" in failed.stderr


def test_cli_cancel_a_streamed_run(server):
    proc = subprocess.Popen(
        [
            CONVEYOR,
            "submit",
            SMOL,
            "--task",
            "chat",
            "-i",
            "max_tokens=1000",
            "--stream",
            "-p",
            "Write a very long story about a dragon.",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "CONVEYOR_URL": server.url, "CONVEYOR_API_KEY": KEY},
    )
    header = proc.stderr.readline()
    job_id = header.split("job ", 1)[1].split()[0]
    first = proc.stdout.read(20)  # tokens are arriving
    assert first
    assert cli(server, "cancel", job_id).returncode == 0
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 4, err
    assert f"job {job_id} was canceled" in err
    rec = json.loads(cli(server, "get", job_id, "--json").stdout)
    assert rec["status"] == "canceled" and rec["output"]["text"].startswith(first)


def test_cli_media_options(server, tmp_path):
    image = tmp_path / "x.png"
    image.write_bytes(PNG)
    audio = tmp_path / "x.wav"
    audio.write_bytes(WAV)
    done = cli(
        server, "submit", "echo", "--image", str(image), "--audio", str(audio), "--wait", "--json"
    )
    rec = json.loads(done.stdout)
    assert rec["input"]["image"]["media_type"] == "image/png"
    assert rec["input"]["audio"]["media_type"] == "audio/wav"


def test_cli_live_progress_shows_queue_position(server, client):
    busy = occupy_echo(client)
    ahead = client.submit("echo", {"sleep_s": 0.5})
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [CONVEYOR, "submit", "echo", "-i", "step=3", "--wait"],
        stdout=subprocess.PIPE,
        stderr=follower,
        text=True,
        cwd=ROOT,
        env={**os.environ, "CONVEYOR_URL": server.url, "CONVEYOR_API_KEY": KEY},
    )
    os.close(follower)
    screen = io.BytesIO()
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        screen.write(chunk)
    out, _ = proc.communicate(timeout=60)
    os.close(leader)
    shown = screen.getvalue().decode(errors="replace")
    assert proc.returncode == 0
    assert "queued" in shown and "queue position 1" in shown
    assert "running" in shown
    assert json.loads(out)["echo"]["step"] == 3
    assert client.get(busy.id).status == client.get(ahead.id).status == "succeeded"


def test_cli_get_models_and_errors(server, client):
    job = client.submit("echo", {"k": "v"}, wait=20)
    shown = cli(server, "get", job.id)
    assert shown.returncode == 0 and '"k": "v"' in shown.stdout and "succeeded" in shown.stderr
    models = cli(server, "models")
    assert models.returncode == 0
    rows = {
        line.split()[1 if line.startswith("*") else 0]: line
        for line in models.stdout.splitlines()[1:]
    }
    assert rows["echo"].split()[-1] == "yes" and rows["minilm"].split()[-1] == "no"
    live = json.loads(cli(server, "models", "--json").stdout)
    assert {m["id"]: m["workers_online"] for m in live}["echo"] == 1
    offline = cli(server, "models", env={"CONVEYOR_URL": ""})
    assert offline.returncode == 0 and "sentence_transformers" in offline.stdout
    unknown = cli(server, "submit", "no-such-model")
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert "404" in unknown.stderr and "no-such-model" in unknown.stderr
    denied = cli(server, "get", job.id, env={"CONVEYOR_API_KEY": "wrong"})
    assert denied.returncode == 1 and "401" in denied.stderr
