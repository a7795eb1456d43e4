"""The job path end to end: HTTP -> Redis -> real worker processes -> result store."""

from __future__ import annotations

import time

import pytest

from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def stack(make_settings, start_worker, make_app):
    settings = make_settings()
    start_worker(settings, "echo")
    start_worker(settings, "smollm2-135m")
    app = make_app(settings)
    return app.test_client()


def submit(client, body, **headers):
    resp = client.post("/v1/jobs", json=body, headers=headers)
    assert resp.status_code in (200, 202), resp.get_json()
    return resp


def poll(client, job_id, timeout=60):
    def done():
        rec = client.get(f"/v1/jobs/{job_id}").get_json()
        return rec if rec["status"] in ("succeeded", "failed", "canceled") else None

    return wait_for(done, timeout, what=f"job {job_id} to end")


def test_smollm2_answers_capital_of_france(stack):
    resp = submit(
        stack,
        {
            "model": "smollm2-135m",
            "task": "chat",
            "input": {
                "prompt": "What is the capital of France?",
                "max_tokens": 40,
                "temperature": 0,
            },
        },
    )
    assert resp.status_code == 202
    assert resp.headers["Location"] == f"/v1/jobs/{resp.get_json()['id']}"
    rec = poll(stack, resp.get_json()["id"])
    assert rec["status"] == "succeeded", rec
    assert "Paris" in rec["output"]["text"]
    metrics = rec["metrics"]
    assert metrics["prompt_tokens"] > 5
    assert 0 < metrics["completion_tokens"] <= 40
    assert metrics["tokens_per_second"] > 0
    assert metrics["queue_seconds"] >= 0 and metrics["run_seconds"] > 0
    assert rec["attempts"] == 1


def test_task_defaults_to_the_models_first_task(stack):
    rec = submit(
        stack,
        {
            "model": "smollm2-135m",
            "input": {
                "prompt": "What is the capital of France?",
                "max_tokens": 30,
                "temperature": 0,
            },
        },
        Prefer="wait=60",
    ).get_json()
    assert rec["task"] == "chat" and rec["status"] == "succeeded", rec
    assert "Paris" in rec["output"]["text"]


def test_chat_messages_and_sampling_fields(stack):
    resp = submit(
        stack,
        {
            "model": "smollm2-135m",
            "task": "chat",
            "input": {
                "messages": [
                    {"role": "system", "content": "Answer with one word."},
                    {"role": "user", "content": "Name a color."},
                ],
                "max_tokens": 8,
                "temperature": 0.5,
                "top_p": 0.9,
                "top_k": 20,
                "seed": 7,
                "repeat_penalty": 1.2,
                "stop": ["\n"],
            },
        },
        Prefer="wait=60",
    )
    rec = resp.get_json()
    assert resp.status_code == 200 and rec["status"] == "succeeded", rec
    assert rec["metrics"]["completion_tokens"] <= 8
    assert "\n" not in rec["output"]["text"]


def test_completion_task(stack):
    rec = submit(
        stack,
        {
            "model": "smollm2-135m",
            "task": "complete",
            "input": {"prompt": "One, two, three,", "max_tokens": 5, "temperature": 0},
        },
        Prefer="wait=60",
    ).get_json()
    assert rec["status"] == "succeeded", rec
    assert rec["output"]["text"]


def test_prefer_wait_returns_finished_record(stack):
    resp = submit(stack, {"model": "echo", "input": {"hello": "world"}}, Prefer="wait=10")
    assert resp.status_code == 200
    assert resp.headers["Preference-Applied"] == "wait=10"
    rec = resp.get_json()
    assert rec["status"] == "succeeded"
    assert rec["output"] == {"echo": {"hello": "world", "sleep_s": 0.0}}


def test_prefer_wait_gives_up_after_n_seconds(stack):
    t0 = time.monotonic()
    resp = submit(stack, {"model": "echo", "input": {"sleep_s": 5}}, Prefer="wait=1")
    assert 0.9 <= time.monotonic() - t0 < 4
    assert resp.status_code == 202
    assert resp.get_json()["status"] in ("queued", "running")
    stack.post(f"/v1/jobs/{resp.get_json()['id']}/cancel")


def test_prefer_wait_is_capped_at_60_seconds(stack):
    resp = submit(stack, {"model": "echo", "input": {}}, Prefer="wait=600")
    assert resp.status_code == 200 and resp.get_json()["status"] == "succeeded"
    assert resp.headers["Preference-Applied"] == "wait=60"  # the wait it was given


def test_cancel_queued_job_never_runs(stack):
    busy = submit(stack, {"model": "echo", "input": {"sleep_s": 3}}).get_json()
    wait_for(
        lambda: stack.get(f"/v1/jobs/{busy['id']}").get_json()["status"] == "running",
        20,
        what="busy job to start",
    )
    queued = submit(stack, {"model": "echo", "input": {"x": 1}}).get_json()
    rec = stack.post(f"/v1/jobs/{queued['id']}/cancel").get_json()
    assert rec["status"] == "canceled"
    assert poll(stack, busy["id"])["status"] == "succeeded"
    # A job queued after it runs once the worker consumed the canceled job's message.
    marker = submit(stack, {"model": "echo", "input": {}}, Prefer="wait=30").get_json()
    assert marker["status"] == "succeeded"
    rec = stack.get(f"/v1/jobs/{queued['id']}").get_json()
    assert rec["status"] == "canceled" and rec["started_at"] is None and rec["output"] is None


def test_cancel_running_echo_stops_between_steps(stack):
    job = submit(stack, {"model": "echo", "input": {"sleep_s": 30}}).get_json()
    wait_for(
        lambda: stack.get(f"/v1/jobs/{job['id']}").get_json()["status"] == "running",
        20,
        what="echo job to start",
    )
    stack.post(f"/v1/jobs/{job['id']}/cancel")
    rec = poll(stack, job["id"], timeout=30)
    assert rec["status"] == "canceled"
    progress = [d for _i, e, d in store_of(stack).read_events(job["id"]) if e == "progress"]
    assert len(progress) < 10  # one a second: it stopped long before its 30 s


def store_of(client):
    return client.application.extensions["conveyor"].store


def test_cancel_running_llama_keeps_partial_output(stack):
    job = submit(
        stack,
        {
            "model": "smollm2-135m",
            "task": "chat",
            "input": {
                "prompt": "Write a very long story about a dragon.",
                "max_tokens": 1000,
                "temperature": 0.8,
            },
        },
    ).get_json()
    client = stack
    store = client.application.extensions["conveyor"].store

    def has_tokens():
        return any(event == "token" for _id, event, _data in store.read_events(job["id"]))

    wait_for(has_tokens, 60, interval=0.05, what="the first generated token")
    client.post(f"/v1/jobs/{job['id']}/cancel")
    rec = poll(client, job["id"], timeout=10)
    assert rec["status"] == "canceled"
    assert rec["output"]["finish_reason"] == "canceled"
    assert 0 < rec["metrics"]["completion_tokens"] < 1000
    assert rec["output"]["text"]


def test_cancel_finished_job_is_a_no_op(stack):
    rec = submit(stack, {"model": "echo", "input": {}}, Prefer="wait=10").get_json()
    again = stack.post(f"/v1/jobs/{rec['id']}/cancel")
    assert again.status_code == 200 and again.get_json()["status"] == "succeeded"


def test_list_jobs_filters(stack):
    a = submit(stack, {"model": "echo", "input": {"tag": "list"}}, Prefer="wait=10").get_json()
    listing = stack.get("/v1/jobs?model=echo&status=succeeded&limit=5").get_json()
    assert listing["object"] == "list"
    assert 1 <= len(listing["data"]) <= 5
    assert all(j["model"] == "echo" and j["status"] == "succeeded" for j in listing["data"])
    assert listing["data"][0]["id"] == a["id"]  # newest first
    assert stack.get("/v1/jobs?status=bogus").status_code == 422
    assert stack.get("/v1/jobs?limit=0").status_code == 422


def test_models_show_live_facts(stack):
    waiting = [
        submit(stack, {"model": "minilm", "input": {"text": f"t{i}"}}).get_json() for i in range(2)
    ]
    data = {m["id"]: m for m in stack.get("/v1/models").get_json()["data"]}
    assert data["echo"]["workers_online"] >= 1 and data["echo"]["loaded"] is True
    assert data["smollm2-135m"]["queue"] == "model.smollm2-135m"
    assert data["minilm"]["workers_online"] == 0 and data["minilm"]["loaded"] is False
    assert data["minilm"]["queue_depth"] == 2
    for job in waiting:
        stack.post(f"/v1/jobs/{job['id']}/cancel")
    data = {m["id"]: m for m in stack.get("/v1/models").get_json()["data"]}
    assert data["minilm"]["queue_depth"] == 0


def test_job_for_model_without_worker_says_so(stack):
    resp = stack.post("/v1/jobs", json={"model": "minilm", "input": {"text": "hi"}})
    rec = resp.get_json()
    assert resp.status_code == 202 and rec["status"] == "queued"
    assert "no worker is online" in rec["notice"]
    stack.post(f"/v1/jobs/{rec['id']}/cancel")


def test_multipart_upload_with_media(stack, tmp_path):
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    resp = stack.post(
        "/v1/jobs",
        data={
            "request": '{"model": "echo", "input": {"note": "file"}}',
            "image": (__import__("io").BytesIO(png), "x.bin"),
        },
        content_type="multipart/form-data",
        headers={"Prefer": "wait=10"},
    )
    rec = resp.get_json()
    assert rec["status"] == "succeeded", rec
    image = rec["input"]["image"]
    assert image["media_type"] == "image/png" and image["bytes"] == len(png)
    assert rec["output"]["echo"]["image"]["ref"] == image["ref"]


def test_data_url_media_is_stored_and_cleaned(stack):
    import base64

    wav = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 40
    url = "data:audio/wav;base64," + base64.b64encode(wav).decode()
    rec = submit(stack, {"model": "echo", "input": {"audio": url}}, Prefer="wait=10").get_json()
    assert rec["status"] == "succeeded"
    assert rec["input"]["audio"]["media_type"] == "audio/wav"
    app_payloads = stack.application.extensions["conveyor"].payloads
    assert rec["id"] not in app_payloads.job_ids()


def test_cancel_stops_a_constrained_llama_generation(stack):
    """Tools and response formats stream too, so a cancel lands between tokens."""
    schema = {
        "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "minItems": 300, "items": {"type": "string"}}},
    }
    job = submit(
        stack,
        {
            "model": "smollm2-135m",
            "task": "chat",
            "input": {
                "prompt": "List fruits.",
                "max_tokens": 1000,
                "temperature": 0.5,
                "response_format": {"type": "json_object", "schema": schema},
            },
        },
    ).get_json()
    store = stack.application.extensions["conveyor"].store
    wait_for(
        lambda: any(e == "token" for _i, e, _d in store.read_events(job["id"])),
        60,
        interval=0.05,
        what="the first constrained token",
    )
    stack.post(f"/v1/jobs/{job['id']}/cancel")
    rec = poll(stack, job["id"], timeout=30)
    assert rec["status"] == "canceled"
    assert rec["output"]["text"].startswith("{")
    assert 0 < rec["metrics"]["completion_tokens"] < 1000
