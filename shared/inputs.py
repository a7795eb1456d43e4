"""Task input schemas: what each task accepts, validated before a job is queued."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.errors import InputRejected, InvalidInput
from shared.registry import ModelSpec
from shared.validation import validate


class MediaRef(BaseModel):
    """Media after intake: bytes live in the payload store under ref."""

    ref: str
    media_type: str
    bytes: int


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None


SAMPLING_DEFAULTS = {"temperature": 0.7, "top_p": 0.95, "top_k": 40, "repeat_penalty": 1.1}


class Sampling(_Input):
    """Sampling fields, named as OpenAI names them, plus llama.cpp's extras."""

    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    stop: str | list[str] | None = None
    seed: int | None = None
    repeat_penalty: float | None = Field(None, gt=0, le=10)
    stream: bool | None = Field(None, description="Token events on the job's event stream.")

    def generation_params(self, spec: ModelSpec) -> dict[str, Any]:
        """Return the sampling parameters a runtime takes: the request's, else the model's
        registry defaults (`options.sampling`), else conveyor's."""
        defaults = {**SAMPLING_DEFAULTS, **(spec.options.get("sampling") or {})}

        def pick(name: str):
            value = getattr(self, name)
            return defaults[name] if value is None else value

        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return {
            "max_tokens": self.max_tokens or min(256, spec.limits.max_tokens),
            "temperature": pick("temperature"),
            "top_p": pick("top_p"),
            "top_k": pick("top_k"),
            "stop": stop,
            "seed": self.seed,
            "repeat_penalty": pick("repeat_penalty"),
        }


class _Media(_Input):
    image: MediaRef | None = None
    images: list[MediaRef] | None = None
    audio: MediaRef | None = None
    video: MediaRef | None = None


class ChatInput(Sampling, _Media):
    messages: list[Message] | None = Field(None, min_length=1)
    prompt: str | None = None
    system_prompt: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _needs_text(self) -> ChatInput:
        if not self.messages and self.prompt is None:
            raise ValueError("chat needs 'messages' or 'prompt'")
        return self

    def chat_messages(self, default_system: str | None = None) -> list[dict[str, Any]]:
        """Return OpenAI-style messages, the system prompt and bare prompt folded in."""
        msgs = [m.model_dump(exclude_none=True) for m in self.messages or []]
        if self.prompt is not None:
            msgs.append({"role": "user", "content": self.prompt})
        system = self.system_prompt or default_system
        if system and not any(m["role"] == "system" for m in msgs):
            msgs.insert(0, {"role": "system", "content": system})
        return msgs

    def text_messages(self, model: str, default_system: str | None = None) -> list[dict]:
        """Return chat_messages() with every content flattened to text, for text-only models.

        :raises InputRejected: when the request carries media.
        """
        if self.image or self.images or self.audio or self.video:
            raise InputRejected(f"model {model} takes text only; it got media")
        messages = self.chat_messages(default_system)
        for m in messages:
            if isinstance(m.get("content"), list):
                if any(p.get("type") != "text" for p in m["content"]):
                    raise InputRejected(f"model {model} takes text only")
                m["content"] = "".join(p.get("text", "") for p in m["content"])
        return messages


class CompleteInput(Sampling):
    prompt: str


class EmbedInput(_Input):
    texts: list[str] | None = Field(None, min_length=1)
    text: str | None = None
    normalize: bool = True

    @model_validator(mode="after")
    def _needs_text(self) -> EmbedInput:
        if self.texts is None and self.text is None:
            raise ValueError("embed needs 'texts' or 'text'")
        return self

    def all_texts(self) -> list[str]:
        return self.texts if self.texts is not None else [self.text]


class ClassifyInput(_Input):
    texts: list[str] | None = Field(None, min_length=1)
    text: str | None = None
    top_k: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _needs_text(self) -> ClassifyInput:
        if self.texts is None and self.text is None:
            raise ValueError("classify needs 'texts' or 'text'")
        return self

    def all_texts(self) -> list[str]:
        return self.texts if self.texts is not None else [self.text]


class VqaInput(_Input):
    image: MediaRef
    question: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)


class TranscribeInput(_Input):
    audio: MediaRef
    language: str | None = None
    prompt: str | None = None
    max_tokens: int | None = Field(None, ge=1)


class EchoInput(_Media):
    model_config = ConfigDict(extra="allow")

    sleep_s: float = Field(0, ge=0, le=60)
    fail: str | None = Field(None, description="Fail the job with this message (for tests).")
    block_s: float | None = Field(
        None,
        ge=0,
        le=60,
        description="Then sleep this long in Python that ignores cancel and deadlines: only "
        "the soft time limit ends it (for tests of the time-limit backstop).",
    )
    native_block_s: float | None = Field(
        None,
        ge=0,
        le=60,
        description="Then block this long in one call that never returns to Python, as a "
        "native call would: only the hard time limit ends it (for tests).",
    )


INPUTS: dict[str, type[BaseModel]] = {
    "chat": ChatInput,
    "complete": CompleteInput,
    "embed": EmbedInput,
    "classify": ClassifyInput,
    "vqa": VqaInput,
    "transcribe": TranscribeInput,
    "echo": EchoInput,
}


def parse_input(task: str, data: dict[str, Any], spec: ModelSpec) -> BaseModel:
    """Validate a task's input against its schema and the model's limits.

    :raises InvalidInput: naming the first bad field.
    """
    parsed = validate(INPUTS[task], data, prefix="input")
    max_tokens = getattr(parsed, "max_tokens", None)
    if max_tokens is not None and max_tokens > spec.limits.max_tokens:
        raise InvalidInput(
            f"input.max_tokens: {max_tokens} is over model {spec.id}'s limit of "
            f"{spec.limits.max_tokens}",
            param="input.max_tokens",
        )
    chars = _text_chars(parsed.model_dump(exclude_none=True))
    if chars > spec.limits.max_input_chars:
        raise InvalidInput(
            f"input: {chars} characters of text is over model {spec.id}'s limit of "
            f"{spec.limits.max_input_chars}",
            param="input",
        )
    texts = getattr(parsed, "texts", None)
    if texts is not None and len(texts) > spec.limits.max_batch:
        raise InvalidInput(
            f"input.texts: {len(texts)} items is over model {spec.id}'s batch limit of "
            f"{spec.limits.max_batch}",
            param="input.texts",
        )
    return parsed


# Keys whose strings are not text a model reads: media (base64, data: URLs, stored refs) and
# the labels of messages and content parts.
_NOT_TEXT = frozenset(
    {
        "image",
        "images",
        "audio",
        "video",
        "url",
        "data",
        "ref",
        "image_url",
        "video_url",
        "input_audio",
        "role",
        "type",
    }
)


def _text_chars(value: Any) -> int:
    """Return how many characters of text an input holds, media left out."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_text_chars(v) for k, v in value.items() if k not in _NOT_TEXT)
    if isinstance(value, list | tuple):
        return sum(_text_chars(v) for v in value)
    return 0
