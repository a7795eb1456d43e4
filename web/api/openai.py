"""The OpenAI-compatible API: every request is a job on the same queue, answered in OpenAI's
shapes (also the llama.cpp server's POST /chat/completions, seeds/003)."""

from __future__ import annotations

from flask import Blueprint, Response, request
from werkzeug.exceptions import HTTPException

from shared.errors import ConveyorError, UnsupportedMediaType
from web.app_services import services
from web.bodies import json_body
from web.protocols.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    TranscriptionRequest,
)
from web.protocols.openai_replies import (
    ChatCompletion,
    Completion,
    EmbeddingList,
    OpenAIError,
    transcription,
)
from web.protocols.parsing import parse_model
from web.responses import json_response
from web.serving.answers import answer
from web.serving.openai import chat_stream, completion_stream, stream

bp = Blueprint("openai", __name__)


@bp.errorhandler(ConveyorError)
def _conveyor_error(exc: ConveyorError):
    body, status = OpenAIError.of(exc)
    return json_response(body, status, exc.headers)


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    err = ConveyorError(exc.description or exc.name)
    err.status_code = exc.code or 500
    return _conveyor_error(err)


@bp.post("/v1/chat/completions")
@bp.post("/chat/completions")
def chat_completions() -> Response:
    req = parse_model(ChatCompletionRequest, json_body())
    job_request = req.to_job_request(services().catalog.default_id("chat"))
    if req.stream:
        return stream(job_request, chat_stream, include_usage=req.include_usage)
    return answer(job_request, ChatCompletion.of)


@bp.post("/v1/completions")
def completions() -> Response:
    req = parse_model(CompletionRequest, json_body())
    job_request = req.to_job_request(services().catalog.default_id("complete"))
    echo = req.text if req.echo else None
    if req.stream:
        return stream(
            job_request, completion_stream, echo_prompt=echo, include_usage=req.include_usage
        )
    return answer(job_request, lambda job: Completion.of(job, echo))


@bp.post("/v1/embeddings")
def create_embeddings() -> Response:
    req = parse_model(EmbeddingRequest, json_body())
    job_request = req.to_job_request(services().catalog.default_id("embed"))
    return answer(job_request, lambda job: EmbeddingList.of(job, req.encoding_format))


@bp.post("/v1/audio/transcriptions")
def transcriptions() -> Response:
    if request.mimetype != "multipart/form-data":
        raise UnsupportedMediaType("expected multipart/form-data with the audio in 'file'")
    fields = {
        k: (request.form.getlist(k) if k.endswith("[]") else request.form[k]) for k in request.form
    }
    req = parse_model(TranscriptionRequest, fields)
    upload = request.files.get("file")
    job_request, files = req.to_job_request(upload.read() if upload else None)
    reply = lambda job: transcription(job, req.response_format, req.language)  # noqa: E731
    return answer(job_request, reply, files)


@bp.get("/v1/models/<path:model_id>")
def retrieve_model(model_id: str) -> Response:
    return json_response(services().catalog.model(model_id))
