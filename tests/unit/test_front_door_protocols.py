"""Front-door wire formats: OpenAI and seed-server requests translate into the right jobs,
answers and errors come out in the shapes those clients expect; the client's SSE parser
and the CLI's KEY=VALUE parser."""

from __future__ import annotations

import base64
import struct

import click
import pytest

from shared.cli.client import parse_pairs
from shared.client import Event, parse_sse
from shared.errors import InvalidInput, NotFound, RateLimited, ServiceUnavailable
from shared.jobs import JobMetrics, JobRecord, JobStatus
from shared.registry import ModelSpec
from web.protocols.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    TranscriptionRequest,
)
from web.protocols.openai_replies import ChatCompletion, EmbeddingList, OpenAIError
from web.protocols.parsing import parse_model
from web.protocols.seeds import BitNetGenerate, GenerateMedia, answer_text, job_for

USER = [{"role": "user", "content": "hi"}]


def chat(**body):
    return parse_model(ChatCompletionRequest, {"messages": USER, **body})


def spec(*tasks, id="m"):
    return ModelSpec(id=id, backend="echo", tasks=list(tasks))


def record(output, **metrics):
    return JobRecord(
        id="j1",
        model="m",
        task="chat",
        status=JobStatus.SUCCEEDED,
        created_at=1700000000.5,
        output=output,
        metrics=JobMetrics(**metrics),
    )


# OpenAI requests -> jobs
def test_chat_request_becomes_a_chat_job_with_openai_sampling():
    job = chat(
        model="smol",
        max_tokens=50,
        max_completion_tokens=20,
        temperature=0.2,
        top_p=0.5,
        stop="\n",
        seed=3,
        stream=True,
        top_k=5,
    ).to_job_request("dflt")
    assert job.model == "smol" and job.task == "chat"
    assert job.input == {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 20,
        "temperature": 0.2,
        "top_p": 0.5,
        "top_k": 5,
        "stop": "\n",
        "seed": 3,
        "stream": True,
    }


def test_chat_without_model_uses_the_default_or_says_it_is_required():
    assert chat().to_job_request("dflt").model == "dflt"
    with pytest.raises(InvalidInput) as exc:
        chat().to_job_request(None)
    assert exc.value.param == "model"


def test_llama_server_inference_configs_fill_the_sampling_fields():
    job = chat(
        inference_configs={"temperature": 0.7, "max_tokens": 1024, "top_p": 0.9},
        load_model_configs={"n_ctx": 4096},
    ).to_job_request("m")
    assert (job.input["temperature"], job.input["max_tokens"], job.input["top_p"]) == (
        0.7,
        1024,
        0.9,
    )
    assert (
        chat(max_tokens=5, inference_configs={"max_tokens": 9})
        .to_job_request("m")
        .input["max_tokens"]
        == 5
    )


def test_response_formats_become_llama_cpp_grammars():
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    as_schema = chat(
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    )
    assert as_schema.to_job_request("m").input["response_format"] == {
        "type": "json_object",
        "schema": schema,
    }
    assert chat(response_format={"type": "json_object"}).to_job_request("m").input[
        "response_format"
    ] == {"type": "json_object"}
    assert "response_format" not in chat(response_format={"type": "text"}).to_job_request("m").input


def test_tools_and_tool_choice_are_checked_and_passed_on():
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    forced = {"type": "function", "function": {"name": "get_weather"}}
    job = chat(tools=[tool], tool_choice=forced).to_job_request("m")
    assert job.input["tools"] == [tool] and job.input["tool_choice"] == forced
    with pytest.raises(InvalidInput, match="not among tools"):
        chat(
            tools=[tool], tool_choice={"type": "function", "function": {"name": "other"}}
        ).to_job_request("m")
    with pytest.raises(InvalidInput, match="needs tools"):
        chat(tool_choice="required").to_job_request("m")


def test_assistant_tool_call_turn_gets_empty_content():
    messages = [
        *USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    sent = chat(messages=messages).to_job_request("m").input["messages"]
    assert sent[1]["content"] == "" and sent[1]["tool_calls"][0]["id"] == "c1"
    assert sent[2] == {"role": "tool", "tool_call_id": "c1", "content": "42"}


@pytest.mark.parametrize(
    "field,value",
    [
        ("n", 2),
        ("logprobs", True),
        ("frequency_penalty", 0.5),
        ("logit_bias", {"1": 2}),
        ("functions", [{"name": "f"}]),
        ("modalities", ["text", "audio"]),
    ],
)
def test_unsupported_openai_parameters_are_refused_by_name(field, value):
    with pytest.raises(InvalidInput) as exc:
        chat(**{field: value}).to_job_request("m")
    assert exc.value.param == field and exc.value.code == "unsupported_parameter"


def test_defaults_openai_clients_send_are_accepted():
    chat(
        n=1,
        logprobs=False,
        frequency_penalty=0,
        presence_penalty=0,
        user="u",
        metadata={"k": "v"},
        store=False,
        parallel_tool_calls=True,
    ).to_job_request("m")


def test_unknown_fields_and_bad_values_name_the_field():
    with pytest.raises(InvalidInput, match="Unrecognized request argument supplied: foo"):
        chat(foo=1)
    with pytest.raises(InvalidInput) as exc:
        chat(temperature=3)
    assert exc.value.param == "temperature"
    with pytest.raises(InvalidInput) as exc:
        parse_model(ChatCompletionRequest, {"messages": [{"role": "robot", "content": "x"}]})
    assert exc.value.param == "messages.0.role"
    with pytest.raises(InvalidInput, match="JSON object"):
        parse_model(ChatCompletionRequest, [1])


def test_completion_request_defaults_to_16_tokens_and_one_prompt():
    job = parse_model(CompletionRequest, {"prompt": ["Once"]}).to_job_request("m")
    assert job.task == "complete" and job.input == {"prompt": "Once", "max_tokens": 16}
    for body in (
        {"prompt": ["a", "b"]},
        {"prompt": "a", "suffix": "z"},
        {"prompt": "a", "best_of": 3},
    ):
        with pytest.raises(InvalidInput):
            parse_model(CompletionRequest, body).to_job_request("m")


def test_embedding_request():
    job = parse_model(EmbeddingRequest, {"input": "hello", "model": "minilm"}).to_job_request(None)
    assert job.task == "embed" and job.input == {"texts": ["hello"]}
    with pytest.raises(InvalidInput) as exc:
        parse_model(EmbeddingRequest, {"input": "x", "dimensions": 64}).to_job_request("e")
    assert exc.value.param == "dimensions" and "does not support" in exc.value.message
    with pytest.raises(InvalidInput):
        parse_model(EmbeddingRequest, {"input": []}).to_job_request("e")


def test_transcription_form():
    req = parse_model(
        TranscriptionRequest, {"model": "whisper-1", "language": "en", "temperature": "0"}
    )
    job, files = req.to_job_request(b"RIFF")
    assert job.task == "transcribe" and job.input == {"language": "en"}
    assert files == {"audio": [b"RIFF"]}
    with pytest.raises(InvalidInput, match="file"):
        req.to_job_request(None)
    for form in (
        {"model": "w", "response_format": "srt"},
        {"model": "w", "timestamp_granularities[]": ["word"]},
        {"model": "w", "temperature": "0.4"},
    ):
        with pytest.raises(InvalidInput) as exc:
            parse_model(TranscriptionRequest, form).to_job_request(b"x")
        assert exc.value.code == "unsupported_parameter"


# answers and errors
def openai_error(exc):
    body, status = OpenAIError.of(exc)
    return body.wire(), status


def test_errors_take_openais_types_and_statuses():
    body, status = openai_error(InvalidInput("input.max_tokens: too big", param="input.max_tokens"))
    assert status == 400 and body["error"] == {
        "message": "input.max_tokens: too big",
        "type": "invalid_request_error",
        "param": "max_tokens",
        "code": "invalid_input",
    }
    body, status = openai_error(NotFound("no", code="model_not_found"))
    assert (status, body["error"]["code"]) == (404, "model_not_found")
    assert openai_error(RateLimited("full"))[0]["error"]["type"] == "rate_limit_exceeded"
    assert openai_error(ServiceUnavailable("down")) == (
        {
            "error": {
                "message": "down",
                "type": "server_error",
                "param": None,
                "code": "service_unavailable",
            }
        },
        503,
    )


def test_chat_completion_with_tool_calls_has_null_content():
    calls = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    body = ChatCompletion.of(
        record(
            {"text": "", "finish_reason": "tool_calls", "tool_calls": calls},
            prompt_tokens=7,
            completion_tokens=3,
        )
    ).wire()
    assert body["id"] == "chatcmpl-j1" and body["created"] == 1700000000
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": calls,
    }
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def test_base64_embeddings_are_little_endian_float32():
    vectors = [[0.5, -1.25, 3.0]]
    body = EmbeddingList.of(record({"embeddings": vectors}, prompt_tokens=4), "base64").wire()
    raw = base64.b64decode(body["data"][0]["embedding"])
    assert list(struct.unpack("<3f", raw)) == vectors[0]
    assert body["usage"] == {"prompt_tokens": 4, "total_tokens": 4}


# seed servers
def test_seed_prompts_become_the_models_task():
    assert job_for(spec("chat", "complete"), "hi", media={"image": "b64"}).input == {
        "prompt": "hi",
        "image": "b64",
    }
    assert job_for(spec("chat", "complete"), "hi", conversation=False).task == "complete"
    vqa = job_for(spec("vqa"), "what color?", media={"image": "b64"})
    assert (vqa.task, vqa.input) == ("vqa", {"image": "b64", "question": "what color?"})
    assert job_for(spec("transcribe"), "Transcribe this", media={"audio": "a"}).input == {
        "audio": "a"
    }
    assert job_for(spec("classify"), "great film").input == {"text": "great film"}
    with pytest.raises(InvalidInput):
        job_for(spec("chat"), None)


def test_seed_request_fields_map_onto_job_fields():
    job = GenerateMedia(prompt="p", max_new_tokens=7, temperature=0.1).to_job_request(spec("chat"))
    assert job.input == {"prompt": "p", "max_tokens": 7, "temperature": 0.1}
    bitnet = BitNetGenerate(prompt="p", system_prompt="s", threads=4).to_job_request(spec("chat"))
    assert bitnet.input == {
        "prompt": "p",
        "system_prompt": "s",
        "max_tokens": 256,
        "temperature": 0.7,
        "top_p": 0.9,
    }


def test_answer_text_for_each_output_shape():
    assert answer_text(record({"text": "hello"})) == "hello"
    assert answer_text(record({"labels": [{"label": "pos", "score": 0.9}]})) == "pos"
    assert answer_text(record({"echo": {"b": 1, "a": 2}})) == '{"a": 2, "b": 1}'


# the client's SSE parser and the CLI's KEY=VALUE parser
def test_parse_sse_frames():
    lines = [
        "retry: 2000",
        "",
        ": heartbeat",
        "",
        "id: 1-0",
        "event: status",
        'data: {"status": "queued"}',
        "",
        "id: 2-0",
        "event: token",
        'data: {"text":',
        'data: "hi"}',
        "",
    ]
    assert list(parse_sse(iter(lines))) == [
        Event("1-0", "status", {"status": "queued"}),
        Event("2-0", "token", {"text": "hi"}),
    ]


def test_parse_pairs():
    assert parse_pairs(("a=1", "b=hello", "c=[1, 2]", "d=true", "e=x=y")) == {
        "a": 1,
        "b": "hello",
        "c": [1, 2],
        "d": True,
        "e": "x=y",
    }
    with pytest.raises(click.BadParameter):
        parse_pairs(("novalue",))
