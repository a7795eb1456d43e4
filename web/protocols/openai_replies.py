"""OpenAI's response bodies, stream chunks and error shape, each built from a job record.

Fields follow the order of OpenAI's API reference. A few keys OpenAI sends only sometimes
(a message's tool_calls, a chunk's usage) are left out of the body unless set.
"""

from __future__ import annotations

import base64
import struct
from typing import Any, Literal

from pydantic import BaseModel, Field

from shared.errors import ConveyorError
from shared.jobs import JobRecord
from web.protocols.wire import Reply

_STATUS = {415: 400, 422: 400}  # OpenAI answers every invalid request with 400


# errors
class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, rate_limit_exceeded or server_error.")
    param: str | None = None
    code: str | None = None


class OpenAIError(Reply):
    """OpenAI's error body; the status comes with it from of()."""

    error: OpenAIErrorDetail

    @classmethod
    def of(cls, exc: ConveyorError) -> tuple[OpenAIError, int]:
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
        detail = OpenAIErrorDetail(message=exc.message, type=type_, param=param, code=code)
        return cls(error=detail), status


# bodies
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, job: JobRecord) -> Usage:
        """Return OpenAI's usage block from the job's token counts."""
        prompt = job.metrics.prompt_tokens or 0
        completion = job.metrics.completion_tokens or 0
        return cls(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )


def finish_reason(output: dict[str, Any]) -> str:
    """Return OpenAI's finish_reason for a job's output."""
    if output.get("tool_calls") and output.get("finish_reason") in (None, "stop"):
        return "tool_calls"
    return output.get("finish_reason") or "stop"


class AssistantMessage(Reply):
    OPTIONAL = frozenset({"tool_calls"})

    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] | None = Field(
        None, description="OpenAI's tool calls: {id, type: function, function: {name, arguments}}."
    )


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str


class ChatCompletion(Reply):
    """The chat.completion object of a succeeded chat job."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None

    @classmethod
    def of(cls, job: JobRecord) -> ChatCompletion:
        out = job.output or {}
        calls = out.get("tool_calls")
        message = AssistantMessage(content=out.get("text") or (None if calls else ""))
        if calls:
            message.tool_calls = calls
        return cls(
            id=f"chatcmpl-{job.id}",
            created=int(job.created_at),
            model=job.model,
            choices=[ChatChoice(message=message, finish_reason=finish_reason(out))],
            usage=Usage.of(job),
        )


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str | None


class Completion(Reply):
    """The text_completion object of a succeeded completion job."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None

    @classmethod
    def of(cls, job: JobRecord, echo_prompt: str | None = None) -> Completion:
        out = job.output or {}
        text = (echo_prompt or "") + out.get("text", "")
        return cls(
            id=f"cmpl-{job.id}",
            created=int(job.created_at),
            model=job.model,
            choices=[CompletionChoice(text=text, finish_reason=finish_reason(out))],
            usage=Usage.of(job),
        )


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(
        description="The vector; base64 of little-endian float32 with encoding_format base64."
    )


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(Reply):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage

    @classmethod
    def of(cls, job: JobRecord, encoding_format: str = "float") -> EmbeddingList:
        vectors = (job.output or {}).get("embeddings") or []
        data = [
            Embedding(index=i, embedding=_b64(v) if encoding_format == "base64" else v)
            for i, v in enumerate(vectors)
        ]
        prompt = job.metrics.prompt_tokens or 0
        usage = EmbeddingUsage(prompt_tokens=prompt, total_tokens=prompt)
        return cls(data=data, model=job.model, usage=usage)


def _b64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


class Transcription(Reply):
    """response_format json."""

    text: str


class VerboseTranscription(Reply):
    """response_format verbose_json."""

    task: Literal["transcribe"] = "transcribe"
    language: str | None
    duration: float | None
    text: str
    segments: list[dict[str, Any]]


def transcription(
    job: JobRecord, response_format: str, language: str | None
) -> Transcription | VerboseTranscription | str:
    """Return a transcription as json, verbose_json or plain text."""
    out = job.output or {}
    text = out.get("text", "")
    if response_format == "text":
        return text
    if response_format == "verbose_json":
        return VerboseTranscription(
            language=out.get("language") or language,
            duration=out.get("duration"),
            text=text,
            segments=out.get("segments") or [],
        )
    return Transcription(text=text)


# stream chunks
class ChunkChoice(BaseModel):
    index: int = 0
    delta: dict[str, Any] = Field(description="role, content or tool_calls added by this chunk.")
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionChunk(Reply):
    """One chat.completion.chunk; `usage` is sent (null until the last) with include_usage."""

    OPTIONAL = frozenset({"usage"})

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChunkChoice]
    usage: Usage | None = None


class CompletionChunkChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str | None = None


class CompletionChunk(Reply):
    """One streamed text_completion; `usage` as in chat chunks."""

    OPTIONAL = frozenset({"usage"})

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChunkChoice]
    usage: Usage | None = None
