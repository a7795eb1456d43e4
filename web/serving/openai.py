"""Serve OpenAI's streams: a submitted job's events as chunks, ended by `data: [DONE]`."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

from flask import Response

from shared.errors import ConveyorError
from shared.jobs import JobRecord, JobStatus
from web.app_services import services
from web.blocking import JobCanceledError, JobFailedError
from web.protocols.jobs import JobRequest
from web.protocols.openai_replies import (
    ChatCompletionChunk,
    ChunkChoice,
    CompletionChunk,
    CompletionChunkChoice,
    OpenAIError,
    Usage,
    finish_reason,
)
from web.protocols.wire import Reply
from web.service import JobService

log = logging.getLogger(__name__)

DONE = "data: [DONE]\n\n"
KEEPALIVE = ": keep-alive\n\n"  # an SSE comment: clients skip it; a gone client makes it fail
# Longest gap between two keep-alives (CONVEYOR_SSE_HEARTBEAT_S when shorter): the second
# write to a client that left fails, so its job is canceled within about twice this.
KEEPALIVE_MAX_S = 5.0


def stream(job_request: JobRequest, frames: Callable[..., Iterator[str]], **options) -> Response:
    """Submit a job and stream frames(jobs, job, heartbeat_s=..., **options) as SSE.

    :raises ServiceUnavailable: past the cap on held requests (nothing is submitted then).
    """
    svc = services()

    def start() -> Response:
        job = svc.jobs.submit(job_request, need_worker=True)
        body = frames(svc.jobs, job, heartbeat_s=svc.settings.sse_heartbeat_s, **options)
        return Response(
            body,
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **job.headers()},
        )

    return svc.holds.stream(start)


def keepalive_s(heartbeat_s: float) -> float:
    """Return the gap between keep-alives: CONVEYOR_SSE_HEARTBEAT_S, at most KEEPALIVE_MAX_S."""
    return min(heartbeat_s, KEEPALIVE_MAX_S)


def _data(reply: Reply) -> str:
    return f"data: {json.dumps(reply.wire())}\n\n"


def _failure(job: JobRecord) -> ConveyorError:
    return JobCanceledError(job) if job.status == JobStatus.CANCELED else JobFailedError(job)


def _tokens(jobs: JobService, job_id: str, heartbeat_s: float) -> Iterator[tuple[str, Any]]:
    """Yield ("token", text), ("idle", None) and finally ("end", record) for a job."""
    sent = 0
    for item in jobs.follow(job_id, "0-0", heartbeat_s):
        if item is None:
            yield "idle", None
            continue
        _event_id, event, data = item
        if event == "token":
            index = data.get("index", sent)
            if index < sent:  # a re-run after a lost worker repeats what was sent
                continue
            sent = index + 1
            yield "token", data.get("text", "")
    # It ended (or its events expired or were trimmed): the record says how.
    yield "end", jobs.get(job_id)


Frames = Callable[[str, Any], Iterator[str]]


def _stream(
    jobs: JobService, job: JobRecord, opening: str, frames: Frames, heartbeat_s: float
) -> Iterator[str]:
    """Drive a job's events through frames(kind, value); cancel the job if the client goes."""
    ended = False
    try:
        yield opening
        for kind, value in _tokens(jobs, job.id, heartbeat_s):
            if kind == "idle":
                yield KEEPALIVE
                continue
            ended = kind == "end"
            if ended and value.status != JobStatus.SUCCEEDED:
                yield _data(OpenAIError.of(_failure(value))[0])
                break
            yield from frames(kind, value)
        yield DONE
    except GeneratorExit:
        if not ended:
            log.info("job %s model %s: stream client went away; canceling", job.id, job.model)
            jobs.cancel(job.id)
        raise
    except Exception as exc:  # headers are sent: the error can only travel in the stream
        log.exception("job %s model %s: stream failed", job.id, job.model)
        err = exc if isinstance(exc, ConveyorError) else ConveyorError("stream failed")
        yield _data(OpenAIError.of(err)[0])


def _unsent(final: str, streamed: str) -> str:
    """Return the part of the final text that no token event carried (non-streaming backends)."""
    return final[len(streamed) :] if final.startswith(streamed) else ""


def chat_stream(
    jobs: JobService, job: JobRecord, *, include_usage: bool = False, heartbeat_s: float
) -> Iterator[str]:
    """Yield chat.completion.chunk frames for a submitted chat job, then [DONE]."""
    base = {"id": f"chatcmpl-{job.id}", "created": int(job.created_at), "model": job.model}
    extra = {"usage": None} if include_usage else {}
    streamed: list[str] = []

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        choice = ChunkChoice(delta=delta, finish_reason=finish)
        return _data(ChatCompletionChunk(**base, choices=[choice], **extra))

    def frames(kind: str, value: Any) -> Iterator[str]:
        if kind == "token":
            streamed.append(value)
            yield chunk({"content": value})
            return
        out = value.output or {}
        rest = _unsent(out.get("text") or "", "".join(streamed))
        if rest:
            yield chunk({"content": rest})
        if out.get("tool_calls"):
            yield chunk(
                {"tool_calls": [{"index": i, **call} for i, call in enumerate(out["tool_calls"])]}
            )
        yield chunk({}, finish_reason(out))
        if include_usage:
            yield _data(ChatCompletionChunk(**base, choices=[], usage=Usage.of(value)))

    opening = chunk({"role": "assistant", "content": ""})
    yield from _stream(jobs, job, opening, frames, keepalive_s(heartbeat_s))


def completion_stream(
    jobs: JobService,
    job: JobRecord,
    *,
    echo_prompt: str | None = None,
    include_usage: bool = False,
    heartbeat_s: float,
) -> Iterator[str]:
    """Yield text_completion chunk frames for a submitted completion job, then [DONE]."""
    base = {"id": f"cmpl-{job.id}", "created": int(job.created_at), "model": job.model}
    extra = {"usage": None} if include_usage else {}
    streamed: list[str] = []

    def chunk(text: str, finish: str | None = None) -> str:
        choice = CompletionChunkChoice(text=text, finish_reason=finish)
        return _data(CompletionChunk(**base, choices=[choice], **extra))

    def frames(kind: str, value: Any) -> Iterator[str]:
        if kind == "token":
            streamed.append(value)
            yield chunk(value)
            return
        out = value.output or {}
        yield chunk(_unsent(out.get("text") or "", "".join(streamed)), finish_reason(out))
        if include_usage:
            yield _data(CompletionChunk(**base, choices=[], usage=Usage.of(value)))

    opening = chunk(echo_prompt) if echo_prompt else KEEPALIVE
    yield from _stream(jobs, job, opening, frames, keepalive_s(heartbeat_s))
