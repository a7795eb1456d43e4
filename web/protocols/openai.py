"""OpenAI's request bodies, each translating itself into a conveyor job request.

Fields follow the order of OpenAI's API reference. Parameters OpenAI defines but conveyor
cannot honour are refused by name (400, code unsupported_parameter) rather than ignored;
the few that change nothing here (user, metadata, store, service_tier...) are accepted.
conveyor's own extensions, and those of the llama.cpp server it replaces (seeds/003), are
fenced below OpenAI's fields.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.errors import InvalidInput
from shared.inputs import Message
from shared.jobs import Priority
from web.protocols.jobs import JobRequest
from web.protocols.parsing import unsupported


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class StreamOptions(_Strict):
    include_usage: bool = False
    include_obfuscation: bool | None = None  # OpenAI's padding of chunks; nothing to pad here


class FunctionDefinition(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class JsonSchema(_Strict):
    name: str
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None
    # The llama.cpp server's form: {"type": "json_object", "schema": {...}}.
    schema_: dict[str, Any] | None = Field(None, alias="schema")

    def for_job(self) -> dict[str, Any] | None:
        """Return the job input's response_format: {"type": "json_object", "schema"?}."""
        if self.type == "text":
            return None
        if self.type == "json_schema":
            if self.json_schema is None:
                raise InvalidInput(
                    "response_format.json_schema: required for type json_schema",
                    param="response_format.json_schema",
                )
            schema = self.json_schema.schema_
        else:
            schema = self.schema_
        return {"type": "json_object", **({"schema": schema} if schema else {})}


class InferenceConfigs(_Strict):
    """Per-request sampling of the llama.cpp server (seeds/003)."""

    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    repeat_penalty: float | None = None


class _Sampled(_Strict):
    """What chat and completion requests share, and the checks of what we refuse."""

    def _refuse(self, checks: list[tuple[str, bool, str]]) -> None:
        for param, refused, why in checks:
            if refused:
                raise unsupported(param, why)

    def _common_refusals(self) -> list[tuple[str, bool, str]]:
        return [
            ("n", self.n not in (None, 1), "only n=1 is supported"),
            (
                "frequency_penalty",
                bool(self.frequency_penalty),
                "only 0 is supported; use repeat_penalty (a conveyor extension)",
            ),
            (
                "presence_penalty",
                bool(self.presence_penalty),
                "only 0 is supported; use repeat_penalty (a conveyor extension)",
            ),
            ("logit_bias", bool(self.logit_bias), "logit_bias is not supported"),
        ]

    def _job(self, task: str, model: str | None, inputs: dict[str, Any]) -> JobRequest:
        if not model:
            raise InvalidInput("model: required (no default model for this task)", param="model")
        return JobRequest(
            model=model,
            task=task,
            input={k: v for k, v in inputs.items() if v is not None},
            priority=self.priority,
            timeout_s=self.timeout_s,
        )


class ChatCompletionRequest(_Sampled):
    """POST /v1/chat/completions (and the llama.cpp server's POST /chat/completions)."""

    messages: list[Message] = Field(min_length=1)
    model: str | None = None  # OpenAI requires it; the llama.cpp server did not
    audio: dict[str, Any] | None = None
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    function_call: str | dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    metadata: dict[str, str] | None = None
    modalities: list[str] | None = None
    n: int | None = Field(None, ge=1)
    parallel_tool_calls: bool | None = None
    prediction: dict[str, Any] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    prompt_cache_key: str | None = None
    reasoning_effort: str | None = None
    response_format: ResponseFormat | None = None
    safety_identifier: str | None = None
    seed: int | None = None
    service_tier: str | None = None
    stop: str | list[str] | None = None
    store: bool | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    tools: list[Tool] | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    top_p: float | None = Field(None, ge=0, le=1)
    user: str | None = None
    verbosity: str | None = None
    web_search_options: dict[str, Any] | None = None
    # ---- conveyor extensions ----
    top_k: int | None = Field(None, ge=0)
    repeat_penalty: float | None = Field(None, gt=0, le=10)
    priority: Priority = Priority.NORMAL
    timeout_s: float | None = Field(None, gt=0, le=86_400)
    # ---- the llama.cpp server's (seeds/003) ----
    inference_configs: InferenceConfigs | None = None
    load_model_configs: dict[str, Any] | None = Field(
        None, description="Accepted and ignored: each model is loaded by its own workers."
    )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def _check(self) -> None:
        self._refuse(
            self._common_refusals()
            + [
                ("logprobs", bool(self.logprobs), "log probabilities are not supported"),
                ("top_logprobs", bool(self.top_logprobs), "log probabilities are not supported"),
                ("audio", self.audio is not None, "audio output is not supported"),
                (
                    "modalities",
                    bool(self.modalities and set(self.modalities) - {"text"}),
                    "only the text output modality is supported",
                ),
                ("functions", self.functions is not None, "deprecated; use tools"),
                ("function_call", self.function_call is not None, "deprecated; use tool_choice"),
                ("prediction", self.prediction is not None, "predicted outputs are not supported"),
                ("reasoning_effort", self.reasoning_effort is not None, "not supported"),
                ("verbosity", self.verbosity is not None, "not supported"),
                (
                    "web_search_options",
                    self.web_search_options is not None,
                    "web search is not supported",
                ),
            ]
        )
        if isinstance(self.tool_choice, dict):
            name = (self.tool_choice.get("function") or {}).get("name")
            names = {t.function.name for t in self.tools or []}
            if self.tool_choice.get("type") != "function" or not name:
                raise InvalidInput(
                    "tool_choice: expected {'type': 'function', 'function': {'name': ...}}",
                    param="tool_choice",
                )
            if name not in names:
                raise InvalidInput(
                    f"tool_choice: function {name!r} is not among tools", param="tool_choice"
                )
        elif self.tool_choice == "required" and not self.tools:
            raise InvalidInput("tool_choice: 'required' needs tools", param="tool_choice")

    def to_job_request(self, default_model: str | None) -> JobRequest:
        """Return the chat job this request asks for.

        :raises InvalidInput: for parameters conveyor refuses or inconsistent tool choices.
        """
        self._check()
        conf = self.inference_configs or InferenceConfigs()
        first = _first_set
        return self._job(
            "chat",
            self.model or default_model,
            {
                "messages": [_message(m) for m in self.messages],
                "max_tokens": first(self.max_completion_tokens, self.max_tokens, conf.max_tokens),
                "temperature": first(self.temperature, conf.temperature),
                "top_p": first(self.top_p, conf.top_p),
                "top_k": first(self.top_k, conf.top_k),
                "stop": first(self.stop, conf.stop),
                "seed": first(self.seed, conf.seed),
                "repeat_penalty": first(self.repeat_penalty, conf.repeat_penalty),
                "tools": [t.model_dump(exclude_none=True) for t in self.tools]
                if self.tools
                else None,
                "tool_choice": self.tool_choice if self.tools else None,
                "response_format": self.response_format.for_job() if self.response_format else None,
                "stream": True if self.stream else None,
            },
        )


class CompletionRequest(_Sampled):
    """POST /v1/completions: continue a raw prompt."""

    model: str | None = None
    prompt: str | list[str]
    best_of: int | None = Field(None, ge=1)
    echo: bool | None = False
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions
    n: int | None = Field(None, ge=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    suffix: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    user: str | None = None
    # ---- conveyor extensions ----
    top_k: int | None = Field(None, ge=0)
    repeat_penalty: float | None = Field(None, gt=0, le=10)
    priority: Priority = Priority.NORMAL
    timeout_s: float | None = Field(None, gt=0, le=86_400)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def to_job_request(self, default_model: str | None) -> JobRequest:
        """Return the completion job this request asks for.

        :raises InvalidInput: for parameters conveyor refuses.
        """
        self._refuse(
            self._common_refusals()
            + [
                (
                    "prompt",
                    isinstance(self.prompt, list) and len(self.prompt) != 1,
                    "send exactly one prompt per request",
                ),
                ("best_of", self.best_of not in (None, 1), "only best_of=1 is supported"),
                ("logprobs", self.logprobs is not None, "log probabilities are not supported"),
                ("suffix", bool(self.suffix), "suffix (fill-in-the-middle) is not supported"),
            ]
        )
        return self._job(
            "complete",
            self.model or default_model,
            {
                "prompt": self.text,
                "max_tokens": self.max_tokens,
                "temperature": self.temperature,
                "top_p": self.top_p,
                "top_k": self.top_k,
                "stop": self.stop,
                "seed": self.seed,
                "repeat_penalty": self.repeat_penalty,
                "stream": True if self.stream else None,
            },
        )


class EmbeddingRequest(_Strict):
    """POST /v1/embeddings: one vector per input text."""

    input: str | list[str]
    model: str | None = None
    dimensions: int | None = Field(None, ge=1)
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None
    # ---- conveyor extensions ----
    priority: Priority = Priority.NORMAL

    def to_job_request(self, default_model: str | None) -> JobRequest:
        """Return the embedding job this request asks for.

        :raises InvalidInput: token-array input, an empty list, or `dimensions`.
        """
        model = self.model or default_model
        if self.dimensions is not None:
            raise unsupported(
                "dimensions",
                f"model {model} does not support 'dimensions'; it "
                f"returns embeddings of its native size (leave it out)",
            )
        texts = [self.input] if isinstance(self.input, str) else self.input
        if not texts:
            raise InvalidInput("input: must not be empty", param="input")
        if not model:
            raise InvalidInput("model: required", param="model")
        return JobRequest(model=model, task="embed", input={"texts": texts}, priority=self.priority)


class TranscriptionRequest(_Strict):
    """POST /v1/audio/transcriptions: the form fields; the audio comes as the `file` part."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    model: str = Field(min_length=1)
    chunking_strategy: str | None = None
    include: list[str] | None = Field(None, alias="include[]")
    language: str | None = None
    prompt: str | None = None
    response_format: Literal["json", "text", "srt", "verbose_json", "vtt"] = "json"
    stream: bool | None = None
    temperature: float | None = Field(None, ge=0, le=1)
    timestamp_granularities: list[str] | None = Field(None, alias="timestamp_granularities[]")

    def to_job_request(self, audio: bytes | None) -> tuple[JobRequest, dict[str, list[bytes]]]:
        """Return the transcription job and its file parts.

        :raises InvalidInput: no file, or a parameter conveyor refuses.
        """
        if not audio:
            raise InvalidInput("file: required (the audio to transcribe)", param="file")
        checks = [
            (
                "response_format",
                self.response_format in ("srt", "vtt"),
                "only json, text and verbose_json are supported",
            ),
            ("stream", bool(self.stream), "streamed transcription is not supported"),
            ("temperature", bool(self.temperature), "only 0 (greedy decoding) is supported"),
            (
                "timestamp_granularities",
                bool(self.timestamp_granularities),
                "timestamps are not supported",
            ),
            ("chunking_strategy", self.chunking_strategy is not None, "not supported"),
            ("include", bool(self.include), "not supported"),
        ]
        for param, refused, why in checks:
            if refused:
                raise unsupported(param, why)
        inputs = {k: v for k, v in (("language", self.language), ("prompt", self.prompt)) if v}
        return (JobRequest(model=self.model, task="transcribe", input=inputs), {"audio": [audio]})


def _message(message: Message) -> dict[str, Any]:
    """Return a message for the job; an assistant turn that only calls tools gets content ""
    (OpenAI sends null there, and chat templates expect a string)."""
    data = message.model_dump(exclude_none=True)
    data.setdefault("content", "")
    return data


def _first_set(*values):
    return next((v for v in values if v is not None), None)
