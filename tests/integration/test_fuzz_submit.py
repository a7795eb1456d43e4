"""Property test: no body, however malformed, gets a 5xx or a non-JSON answer."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    "task",
    "input",
    "webhook",
    "webhook_events_filter",
    "priority",
    "timeout_s",
    "queue_timeout_s",
]
INPUT_FIELDS = [
    "messages",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "seed",
    "image",
    "images",
    "audio",
    "video",
    "texts",
    "text",
    "sleep_s",
    "question",
    "language",
    "normalize",
    "tools",
]
MODELS = st.sampled_from(["echo", "smollm2-135m", "minilm", "whisper-1", "qwen_vl", "nope"])
BODIES = st.fixed_dictionaries(
    {"model": MODELS},
    optional={
        **{k: JSON for k in FIELDS},
        "input": st.fixed_dictionaries({}, optional={k: JSON for k in INPUT_FIELDS}),
    },
)
GARBAGE = [
    b"\xff\xfe",
    b"[]",
    b"null",
    b"1",
    b'"x"',
    b"{" * 1000,
    b'{"model": 1}',
    b'{"model": "echo", "input": {"image": "AAAA"}}',
]
ROUTES = [
    "/v1/jobs",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/generate",
    "/generate/deepseek",
    "/models/dialogpt-small/generate",
    "/chat/completions",
]


@pytest.fixture(scope="module")
def client(make_settings, make_app):
    return make_app(make_settings(max_queued_per_model=100_000)).test_client()


def assert_clean(resp):
    assert resp.status_code < 500, resp.get_data(as_text=True)
    assert resp.is_json, resp.get_data(as_text=True)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=BODIES)
def test_random_job_bodies_never_500(client, body):
    resp = client.post("/v1/jobs", data=json.dumps(body), content_type="application/json")
    assert_clean(resp)
    if resp.status_code == 202:
        client.post(f"/v1/jobs/{resp.get_json()['id']}/cancel")


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("raw", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_bodies_get_the_envelope(client, route, raw):
    resp = client.post(route, data=raw, content_type="application/json")
    assert_clean(resp)
    assert 400 <= resp.status_code < 500
