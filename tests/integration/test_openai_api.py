"""The OpenAI-compatible API, driven by the official `openai` package against gunicorn and
real worker processes; every request must still be a job on the queue."""

from __future__ import annotations

import base64
import json
import re
import socket
import time
from pathlib import Path

import openai
import pytest
import requests
import yaml

from shared.config import DEFAULT_REGISTRY
from tests.conftest import consumer_paused, wait_for

pytestmark = pytest.mark.timeout(600)

KEY = "sk-conveyor-test"
SMOL = "smollm2-135m"
WHISPER = "whisper-base"  # served by a tiny random-weight checkpoint here
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Path:
    """The default registry; its Whisper (alias whisper-1) and Qwen-Omni (qwen_omni) are
    tiny random-weight checkpoints."""
    from tests.integration.tiny_models import build_qwen25_omni_thinker, build_whisper

    root = tmp_path_factory.mktemp("openai-models")
    data = yaml.safe_load(DEFAULT_REGISTRY.read_text())
    entry = next(e for e in data["models"] if "whisper-1" in e.get("aliases", []))
    entry.update(
        source={"path": str(build_whisper(root / "tiny-whisper"))},
        options={"device": "cpu"},
        limits={"max_tokens": 32},
    )
    entry = next(e for e in data["models"] if "qwen_omni" in e.get("aliases", []))
    entry.update(
        source={"path": str(build_qwen25_omni_thinker(root / "tiny-omni"))},
        quantization="none",
        options={"device": "cpu"},
        limits={**entry["limits"], "video_max_frames": 4, "video_fps": 2.0},
    )
    path = root / "models.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def server(make_settings, start_worker, start_server, registry):
    settings = make_settings(api_keys=[KEY], registry=registry)
    start_worker(settings, SMOL)
    return start_server(settings)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def job_of(server, openai_id: str) -> dict:
    """Return the conveyor job behind an OpenAI response id (chatcmpl-<job id>)."""
    job_id = openai_id.split("-", 1)[1]
    resp = requests.get(
        f"{server.url}/v1/jobs/{job_id}", timeout=10, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_chat_completion_is_a_job(client, server):
    resp = client.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=30,
        temperature=0,
        seed=1,
    )
    choice = resp.choices[0]
    assert "Paris" in choice.message.content
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert resp.object == "chat.completion" and resp.model == SMOL
    assert resp.usage.prompt_tokens > 5
    assert 0 < resp.usage.completion_tokens <= 30
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    job = job_of(server, resp.id)
    assert job["status"] == "succeeded" and job["task"] == "chat"
    assert job["input"]["max_tokens"] == 30 and job["input"]["seed"] == 1
    assert job["output"]["text"] == choice.message.content
    listed = requests.get(
        f"{server.url}/v1/jobs?model={SMOL}&limit=50",
        timeout=10,
        headers={"Authorization": f"Bearer {KEY}"},
    ).json()["data"]
    assert job["id"] in [j["id"] for j in listed]


def test_chat_sampling_fields_and_max_completion_tokens(client, server):
    resp = client.chat.completions.create(
        model=SMOL,
        messages=[
            {"role": "system", "content": "Answer with one word."},
            {"role": "user", "content": "Name a color."},
        ],
        max_completion_tokens=8,
        temperature=0.5,
        top_p=0.9,
        stop=["\n"],
        n=1,
    )
    job = job_of(server, resp.id)
    assert job["input"]["max_tokens"] == 8 and job["input"]["stop"] == ["\n"]
    assert job["input"]["top_p"] == 0.9 and job["input"]["temperature"] == 0.5
    assert resp.usage.completion_tokens <= 8
    assert "\n" not in resp.choices[0].message.content


def test_chat_stream_yields_openai_chunks(client, server):
    stream = client.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "Count from one to five."}],
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) > 3  # token by token, not one block at the end
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 3
    job = job_of(server, chunks[0].id)
    assert job["status"] == "succeeded" and job["output"]["text"] == text


def test_tool_call_round_trip(client):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    resp = client.chat.completions.create(
        model=SMOL,
        messages=messages,
        tools=[WEATHER_TOOL],
        max_tokens=60,
        temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    assert call.id
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21, "sky": "clear"}'},
    ]
    final = client.chat.completions.create(
        model=SMOL, messages=messages, max_tokens=30, temperature=0, tools=[WEATHER_TOOL]
    )
    assert final.choices[0].message.content
    assert not final.choices[0].message.tool_calls


def test_streamed_tool_call_arrives_as_delta(client):
    stream = client.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "Weather in Rome?"}],
        tools=[WEATHER_TOOL],
        max_tokens=60,
        temperature=0,
        stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    calls = [tc for c in stream if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert calls and calls[0].function.name == "get_weather"
    assert "city" in json.loads(calls[0].function.arguments)


def test_response_format_json_schema_constrains_output(client):
    schema = {
        "type": "object",
        "properties": {"capital": {"type": "string", "maxLength": 20}},
        "required": ["capital"],
    }
    resp = client.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=40,
        temperature=0,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema},
        },
    )
    assert set(json.loads(resp.choices[0].message.content)) == {"capital"}


def test_completions_plain_echo_and_stream(client):
    resp = client.completions.create(
        model=SMOL, prompt="One, two, three,", max_tokens=5, temperature=0
    )
    assert resp.object == "text_completion" and resp.choices[0].text
    assert resp.usage.completion_tokens <= 5
    echoed = client.completions.create(
        model=SMOL, prompt="One, two, three,", max_tokens=5, temperature=0, echo=True
    )
    assert echoed.choices[0].text == "One, two, three," + resp.choices[0].text
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=SMOL, prompt="One, two, three,", max_tokens=5, temperature=0, stream=True
        )
    )
    assert streamed == resp.choices[0].text


def test_default_completion_length_is_openais_16(client):
    resp = client.completions.create(model=SMOL, prompt="Once upon a time", temperature=0.8)
    assert resp.usage.completion_tokens <= 16


def test_models_list_and_retrieve(client):
    models = {m.id: m for m in client.models.list()}
    assert {SMOL, "echo", "minilm"} <= set(models)
    assert models[SMOL].object == "model" and models[SMOL].owned_by == "conveyor"
    assert isinstance(models[SMOL].created, int)
    assert client.models.retrieve(SMOL).id == SMOL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_errors_come_in_openais_shape(client, server):
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert exc.value.body["code"] == "model_not_found"
    assert exc.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=SMOL, n=2, messages=[{"role": "user", "content": "x"}])
    assert exc.value.body["param"] == "n" and exc.value.body["code"] == "unsupported_parameter"
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model=SMOL, max_tokens=100_000, messages=[{"role": "user", "content": "x"}]
        )
    assert exc.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=SMOL, messages=[{"role": "bogus", "content": "x"}])
    assert exc.value.body["param"].startswith("messages.0")
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model=SMOL, messages=[{"role": "user", "content": "x"}], extra_body={"frobnicate": 1}
        )
    assert "Unrecognized request argument" in exc.value.body["message"]
    bad_key = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.models.list()
    raw = requests.post(
        f"{server.url}/v1/chat/completions",
        data=b"{not json",
        timeout=10,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    assert raw.status_code == 400 and set(raw.json()["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }


def test_image_part_reaches_the_worker_and_text_only_model_refuses(client, server):
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model=SMOL,
            max_tokens=5,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": url}},
                    ],
                }
            ],
        )
    assert "text only" in exc.value.body["message"]
    assert exc.value.response.headers["x-should-retry"] == "false"
    job = job_of(server, "x-" + exc.value.response.headers["X-Conveyor-Job-Id"])
    assert job["status"] == "failed"
    part = job["input"]["messages"][0]["content"][1]
    assert part["type"] == "image" and part["image"]["media_type"] == "image/png"
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model=SMOL,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
                    ],
                }
            ],
        )
    assert exc.value.body["code"] == "invalid_media"


def open_stream(server, model: str, until: bytes, count: int = 1, max_tokens: int = 1000) -> str:
    """Start a streamed chat over a raw socket, read until `until` was seen count times,
    then leave; return the job id."""
    body = json.dumps(
        {
            "model": model,
            "stream": True,
            "max_tokens": max_tokens,
            "temperature": 0.8,
            "messages": [{"role": "user", "content": "Write a very long story."}],
        }
    )
    host, port = server.url.removeprefix("http://").split(":")
    deadline = time.monotonic() + 60
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(
            (
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n{body}"
            ).encode()
        )
        received = b""
        while received.count(until) < count:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            chunk = sock.recv(65536)  # socket.timeout past the deadline
            assert chunk, f"the server closed the stream early:\n{received.decode()}"
            received += chunk
    # The client went away.
    return re.search(rb"X-Conveyor-Job-Id: (\w+)", received, re.I).group(1).decode()


def test_client_gone_while_its_job_is_queued_cancels_it(server):
    def ended():
        job = job_of(server, "x-" + job_id)
        return job if job["status"] != "queued" else None

    # SmolLM2's worker is online but takes no job while paused: the job waits in the queue,
    # the stream sends comments.
    with consumer_paused(server.settings, SMOL):
        job_id = open_stream(server, SMOL, b'"role": "assistant"', max_tokens=100)
        # The server notices at its next keep-alive comment (every 5 s) that nobody listens.
        job = wait_for(ended, 30, what="the abandoned queued job to end")
    assert job["status"] == "canceled" and job["started_at"] is None, job


def test_client_gone_mid_stream_cancels_its_job(server):
    # The opening chunk, then five tokens.
    job_id = open_stream(server, SMOL, b'"content": "', count=6)

    def ended():
        job = job_of(server, "x-" + job_id)
        return job if job["status"] in ("canceled", "succeeded", "failed") else None

    job = wait_for(ended, 30, what="the abandoned job to end")
    assert job["status"] == "canceled"
    assert 0 < job["metrics"]["completion_tokens"] < 1000


def test_a_job_that_fails_mid_stream_raises_in_the_client(client):
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64).decode()
    stream = client.chat.completions.create(
        model=SMOL,
        stream=True,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}
                ],
            }
        ],
    )
    with pytest.raises(openai.APIError, match="text only"):
        list(stream)
