"""The protocol layer: one message for one mistake at every front door, answers built from
models keep their wire shape, and the OpenAPI document covers the app's every route."""

from __future__ import annotations

import re

import pytest
from openapi_spec_validator import validate as validate_spec

from shared.errors import InvalidInput
from shared.inputs import parse_input
from shared.jobs import JobMetrics, JobRecord, JobStatus
from shared.registry import ModelSpec
from web.api import docs
from web.protocols.jobs import JobDetail, JobList, JobRequest, JobView
from web.protocols.openai import ChatCompletionRequest, EmbeddingRequest
from web.protocols.openai_replies import AssistantMessage, ChatCompletionChunk, ChunkChoice, Usage
from web.protocols.parsing import parse_model
from web.protocols.seed_replies import SetModelAnswer
from web.protocols.seeds import SetModel

USER = [{"role": "user", "content": "hi"}]


def refusal(call) -> InvalidInput:
    with pytest.raises(InvalidInput) as exc:
        call()
    return exc.value


def test_an_unknown_field_reads_the_same_at_every_front_door():
    errors = [
        refusal(lambda: parse_model(JobRequest, {"model": "m", "colour": 1})),
        refusal(lambda: parse_model(ChatCompletionRequest, {"messages": USER, "colour": 1})),
        refusal(lambda: parse_model(EmbeddingRequest, {"input": "x", "colour": 1})),
    ]
    for err in errors:
        assert err.message == "Unrecognized request argument supplied: colour"
        assert (err.param, err.code, err.status_code) == ("colour", "unrecognized_argument", 422)


def test_a_bad_value_names_its_field_the_same_way_in_bodies_and_job_inputs():
    body = refusal(lambda: parse_model(JobRequest, {"model": "m", "priority": "urgent"}))
    assert body.param == "priority" and body.message.startswith("priority: ")
    spec = ModelSpec(id="m", backend="echo", tasks=["chat"])
    inner = refusal(lambda: parse_input("chat", {"messages": [{"role": "robot"}]}, spec))
    assert inner.param == "input.messages.0.role"
    assert inner.message.startswith("input.messages.0.role: ")
    # Union members' type tags ("str", "list[...]") never leak into the field path.
    union = refusal(lambda: parse_model(ChatCompletionRequest, {"messages": USER, "stop": 5}))
    assert union.param == "stop"
    assert refusal(lambda: parse_model(JobRequest, [1])).message == (
        "request body must be a JSON object"
    )


def record(**kw) -> JobRecord:
    return JobRecord(
        id="j1",
        model="m",
        task="chat",
        status=JobStatus.SUCCEEDED,
        created_at=1700000000.5,
        output={"text": "hi"},
        metrics=JobMetrics(prompt_tokens=3, completion_tokens=2, frames=7),
        **kw,
    )


def test_job_views_keep_the_record_then_its_urls_then_its_queue_position():
    job = record(notice="n")
    detail = JobDetail.of_queued(job, "http://h", None).model_dump(mode="json")
    assert list(detail)[: len(JobRecord.model_fields)] == list(JobRecord.model_fields)
    assert list(detail)[-2:] == ["urls", "queue_position"]
    assert detail["urls"] == {
        "get": "http://h/v1/jobs/j1",
        "cancel": "http://h/v1/jobs/j1/cancel",
        "events": "http://h/v1/jobs/j1/events",
    }
    assert detail["metrics"]["frames"] == 7  # what a backend adds to metrics survives
    listed = JobList(data=[JobView.of(job, "http://h")]).model_dump(mode="json")
    assert listed["object"] == "list" and "queue_position" not in listed["data"][0]


def test_optional_keys_are_sent_only_when_set():
    assert "tool_calls" not in AssistantMessage(content="x").wire()
    calls = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    assert AssistantMessage(content=None, tool_calls=calls).wire()["tool_calls"] == calls
    base = {"id": "chatcmpl-j1", "created": 1, "model": "m", "choices": [ChunkChoice(delta={})]}
    assert "usage" not in ChatCompletionChunk(**base).wire()
    assert ChatCompletionChunk(**base, usage=None).wire()["usage"] is None
    usage = Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3)
    assert ChatCompletionChunk(**base, usage=usage).wire()["usage"]["total_tokens"] == 3
    spec = ModelSpec(id="m", backend="echo", tasks=["chat"])
    plain = SetModelAnswer.of(spec, SetModel(model_name="m")).model_dump()
    assert plain == {"message": "Model loaded successfully", "model": "m"}
    noted = SetModelAnswer.of(spec, SetModel(model_name="m", load_model_configs={"n_ctx": 9}))
    assert "not applied" in noted.model_dump()["note"]


@pytest.fixture(scope="module")
def app(make_settings, make_app):
    return make_app(make_settings(api_keys=["k"]))


def test_the_document_is_openapi_31_and_covers_every_route_of_the_app(app):
    doc = app.test_client().get("/openapi.json").get_json()
    validate_spec(doc)
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        routes |= {(m, path) for m in rule.methods - {"HEAD", "OPTIONS"}}
    # The page's favicon and the docs page's own files are not API.
    assets = {("GET", f"/docs/{name}") for name in docs.FILES}
    assert routes - documented == {("GET", "/favicon.ico"), *assets}
    assert documented <= routes
    # Every body and answer is a model in components, referenced, never inlined twice.
    schemas = doc["components"]["schemas"]
    for name in ("JobRequest", "JobDetail", "ErrorEnvelope", "OpenAIError", "ChatCompletion"):
        assert name in schemas
