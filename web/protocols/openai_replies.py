"""OpenAI's response bodies, stream chunks and error shape, built from job records."""

from __future__ import annotations

import base64
import json
import logging
import struct
from collections.abc import Iterator
from typing import Any

from shared.errors import ConveyorError
from shared.jobs import JobRecord, JobStatus
from web.blocking import JobCanceledError, JobFailedError
from web.service import JobService

log = logging.getLogger(__name__)

DONE = "data: [DONE]\n\n"
KEEPALIVE = ": keep-alive\n\n"  # an SSE comment: clients skip it; a gone client makes it fail
# Longest gap between two keep-alives (CONVEYOR_SSE_HEARTBEAT_S when shorter): the second
# write to a client that left fails, so its job is canceled within about twice this.
KEEPALIVE_MAX_S = 5.0
_STATUS = {415: 400, 422: 400}  # OpenAI answers every invalid request with 400


# errors
def openai_error(exc: ConveyorError) -> tuple[dict[str, Any], int]:
    """Return OpenAI's error body and status for a conveyor error."""
    status = _STATUS.get(exc.status_code, exc.status_code)
    if status >= 500:
        type_ = "server_error"
    elif status == 429:
        type_ = "rate_limit_exceeded"
    else:
        type_ = "invalid_request_error"
    code = exc.code or (exc.type if exc.type != type_ else None)
    param = exc.param.removeprefix("input.") if exc.param else None
    return {"error": {"message": exc.message, "type": type_, "param": param, "code": code}}, status


def _failure(job: JobRecord) -> ConveyorError:
    return JobCanceledError(job) if job.status == JobStatus.CANCELED else JobFailedError(job)


# bodies
def usage(job: JobRecord) -> dict[str, int]:
    """Return OpenAI's usage block from the job's token counts."""
    prompt = job.metrics.prompt_tokens or 0
    completion = job.metrics.completion_tokens or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _finish_reason(output: dict[str, Any]) -> str:
    if output.get("tool_calls") and output.get("finish_reason") in (None, "stop"):
        return "tool_calls"
    return output.get("finish_reason") or "stop"


def chat_completion(job: JobRecord) -> dict[str, Any]:
    """Return the chat.completion object of a succeeded chat job."""
    out = job.output or {}
    tool_calls = out.get("tool_calls")
    message: dict[str, Any] = {
        "role": "assistant",
        "content": out.get("text") or (None if tool_calls else ""),
        "refusal": None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": f"chatcmpl-{job.id}",
        "object": "chat.completion",
        "created": int(job.created_at),
        "model": job.model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": _finish_reason(out)}
        ],
        "usage": usage(job),
        "system_fingerprint": None,
    }


def completion(job: JobRecord, echo_prompt: str | None = None) -> dict[str, Any]:
    """Return the text_completion object of a succeeded completion job."""
    out = job.output or {}
    return {
        "id": f"cmpl-{job.id}",
        "object": "text_completion",
        "created": int(job.created_at),
        "model": job.model,
        "choices": [
            {
                "index": 0,
                "text": (echo_prompt or "") + out.get("text", ""),
                "logprobs": None,
                "finish_reason": _finish_reason(out),
            }
        ],
        "usage": usage(job),
        "system_fingerprint": None,
    }


def embeddings(job: JobRecord, encoding_format: str = "float") -> dict[str, Any]:
    """Return the embeddings list; base64 is little-endian float32, as OpenAI sends it."""
    vectors = (job.output or {}).get("embeddings") or []
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": _b64(v) if encoding_format == "base64" else v,
        }
        for i, v in enumerate(vectors)
    ]
    prompt = job.metrics.prompt_tokens or 0
    return {
        "object": "list",
        "data": data,
        "model": job.model,
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }


def _b64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def transcription(job: JobRecord, response_format: str, language: str | None) -> Any:
    """Return a transcription as json, verbose_json or plain text."""
    out = job.output or {}
    text = out.get("text", "")
    if response_format == "text":
        return text
    if response_format == "verbose_json":
        return {
            "task": "transcribe",
            "language": out.get("language") or language,
            "duration": out.get("duration"),
            "text": text,
            "segments": out.get("segments") or [],
        }
    return {"text": text}


# streams
def _data(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def _follow(jobs: JobService, job_id: str, heartbeat_s: float) -> Iterator[tuple[str, Any]]:
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


def _stream(
    jobs: JobService, job: JobRecord, opening: str, frames, heartbeat_s: float
) -> Iterator[str]:
    """Drive a job's events through frames(kind, value); cancel the job if the client goes."""
    ended = False
    try:
        yield opening
        for kind, value in _follow(jobs, job.id, heartbeat_s):
            if kind == "idle":
                yield KEEPALIVE
                continue
            ended = kind == "end"
            if ended and value.status != JobStatus.SUCCEEDED:
                yield _data(openai_error(_failure(value))[0])
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
        yield _data(openai_error(err)[0])


def chat_stream(
    jobs: JobService, job: JobRecord, *, include_usage: bool = False, heartbeat_s: float
) -> Iterator[str]:
    """Yield chat.completion.chunk frames for a submitted chat job, then [DONE]."""
    base = {
        "id": f"chatcmpl-{job.id}",
        "object": "chat.completion.chunk",
        "created": int(job.created_at),
        "model": job.model,
        "system_fingerprint": None,
    }
    extra = {"usage": None} if include_usage else {}
    streamed: list[str] = []

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _data({**base, "choices": [choice], **extra})

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
        yield chunk({}, _finish_reason(out))
        if include_usage:
            yield _data({**base, "choices": [], "usage": usage(value)})

    yield from _stream(jobs, job, chunk({"role": "assistant", "content": ""}), frames, heartbeat_s)


def completion_stream(
    jobs: JobService,
    job: JobRecord,
    *,
    echo_prompt: str | None = None,
    include_usage: bool = False,
    heartbeat_s: float,
) -> Iterator[str]:
    """Yield text_completion chunk frames for a submitted completion job, then [DONE]."""
    base = {
        "id": f"cmpl-{job.id}",
        "object": "text_completion",
        "created": int(job.created_at),
        "model": job.model,
        "system_fingerprint": None,
    }
    extra = {"usage": None} if include_usage else {}
    streamed: list[str] = []

    def chunk(text: str, finish: str | None = None) -> str:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return _data({**base, "choices": [choice], **extra})

    def frames(kind: str, value: Any) -> Iterator[str]:
        if kind == "token":
            streamed.append(value)
            yield chunk(value)
            return
        out = value.output or {}
        yield chunk(_unsent(out.get("text") or "", "".join(streamed)), _finish_reason(out))
        if include_usage:
            yield _data({**base, "choices": [], "usage": usage(value)})

    opening = chunk(echo_prompt) if echo_prompt else KEEPALIVE
    yield from _stream(jobs, job, opening, frames, heartbeat_s)


def _unsent(final: str, streamed: str) -> str:
    """Return the part of the final text that no token event carried (non-streaming backends)."""
    return final[len(streamed) :] if final.startswith(streamed) else ""
