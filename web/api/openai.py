"""The OpenAI-compatible API: every request is a job on the same queue, answered in OpenAI's
shapes (also the llama.cpp server's POST /chat/completions, seeds/003)."""

from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from shared.errors import ConveyorError, UnsupportedMediaType
from shared.jobs import JobRecord
from web.blocking import settle
from web.bodies import json_body
from web.protocols.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    TranscriptionRequest,
)
from web.protocols.openai_replies import (
    KEEPALIVE_MAX_S,
    chat_completion,
    chat_stream,
    completion,
    completion_stream,
    embeddings,
    openai_error,
    transcription,
)
from web.protocols.parsing import parse_model

bp = Blueprint("openai", __name__)


def _services():
    return current_app.extensions["conveyor"]


def _default(task: str) -> str | None:
    spec = _services().jobs.default_model(task)
    return spec.id if spec else None


def _settled(job: JobRecord) -> JobRecord:
    svc = _services()
    return settle(svc.jobs, job, svc.settings.sync_wait_s)


def _held(answer: Callable[[], Response]) -> Response:
    """Answer a request that waits for its job, within the process's cap on held requests."""
    with _services().holds.hold("wait"):
        return answer()


def _streamed(job_request, frames) -> Response:
    """Submit a job and stream frames(jobs, job, heartbeat_s), within the cap."""
    svc = _services()

    def start() -> Response:
        job = svc.jobs.submit(job_request, need_worker=True)
        beat = min(svc.settings.sse_heartbeat_s, KEEPALIVE_MAX_S)
        return _event_stream(frames(svc.jobs, job, beat), job)

    return svc.holds.stream(start)


def _answer(body, job: JobRecord) -> Response:
    resp = jsonify(body) if isinstance(body, dict) else Response(body, mimetype="text/plain")
    resp.headers.update(job.headers())
    return resp


def _event_stream(frames, job: JobRecord) -> Response:
    return Response(
        frames,
        mimetype="text/event-stream",
        headers={
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            **job.headers(),
        },
    )


@bp.errorhandler(ConveyorError)
def _conveyor_error(exc: ConveyorError):
    body, status = openai_error(exc)
    resp = jsonify(body)
    resp.status_code = status
    resp.headers.update(exc.headers)
    return resp


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    err = ConveyorError(exc.description or exc.name)
    err.status_code = exc.code or 500
    return _conveyor_error(err)


@bp.post("/v1/chat/completions")
@bp.post("/chat/completions")
def chat_completions():
    req = parse_model(ChatCompletionRequest, json_body())
    job_request = req.to_job_request(_default("chat"))
    if req.stream:
        return _streamed(
            job_request,
            lambda jobs, job, beat: chat_stream(
                jobs, job, include_usage=req.include_usage, heartbeat_s=beat
            ),
        )

    def answer() -> Response:
        job = _services().jobs.submit(job_request, need_worker=True)
        return _answer(chat_completion(_settled(job)), job)

    return _held(answer)


@bp.post("/v1/completions")
def completions():
    req = parse_model(CompletionRequest, json_body())
    job_request = req.to_job_request(_default("complete"))
    echo = req.text if req.echo else None
    if req.stream:
        return _streamed(
            job_request,
            lambda jobs, job, beat: completion_stream(
                jobs, job, echo_prompt=echo, include_usage=req.include_usage, heartbeat_s=beat
            ),
        )

    def answer() -> Response:
        job = _services().jobs.submit(job_request, need_worker=True)
        return _answer(completion(_settled(job), echo), job)

    return _held(answer)


@bp.post("/v1/embeddings")
def create_embeddings():
    req = parse_model(EmbeddingRequest, json_body())
    job_request = req.to_job_request(_default("embed"))

    def answer() -> Response:
        job = _services().jobs.submit(job_request, need_worker=True)
        return _answer(embeddings(_settled(job), req.encoding_format), job)

    return _held(answer)


@bp.post("/v1/audio/transcriptions")
def transcriptions():
    if request.mimetype != "multipart/form-data":
        raise UnsupportedMediaType("expected multipart/form-data with the audio in 'file'")
    fields = {
        k: (request.form.getlist(k) if k.endswith("[]") else request.form[k]) for k in request.form
    }
    req = parse_model(TranscriptionRequest, fields)
    upload = request.files.get("file")
    job_request = req.to_job_request(upload.read() if upload else None)

    def answer() -> Response:
        job = _services().jobs.submit(*job_request, need_worker=True)
        return _answer(transcription(_settled(job), req.response_format, req.language), job)

    return _held(answer)


@bp.get("/v1/models/<path:model_id>")
def retrieve_model(model_id: str):
    return jsonify(_services().jobs.model(model_id))
