"""Request and answer shapes of the servers conveyor replaces (../shared/seeds/).

Their clients keep working unchanged: each request becomes an ordinary job (listed,
cancellable, counted), and the answer takes the shape the old server gave. Unknown
fields are ignored, as those servers ignored them.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.errors import InvalidInput
from shared.jobs import JobRecord
from shared.registry import ModelSpec
from web.protocols.jobs import JobRequest


class _Legacy(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())


def job_for(
    spec: ModelSpec,
    prompt: str | None,
    *,
    media: dict[str, str] | None = None,
    sampling: dict[str, Any] | None = None,
    system_prompt: str | None = None,
    conversation: bool = True,
) -> JobRequest:
    """Return the job that runs a prompt (and media) on a model, whatever its task.

    :raises InvalidInput: when the model's task needs a prompt or media that is missing.
    """
    media = {k: v for k, v in (media or {}).items() if v}
    sampling = {k: v for k, v in (sampling or {}).items() if v is not None}
    tasks = spec.tasks
    if "chat" in tasks and (conversation or "complete" not in tasks):
        task, inputs = (
            "chat",
            {"prompt": prompt, "system_prompt": system_prompt, **media, **sampling},
        )
    elif "complete" in tasks:
        task, inputs = "complete", {"prompt": prompt, **sampling}
    elif "vqa" in tasks:
        task, inputs = (
            "vqa",
            {
                "image": media.get("image"),
                "question": prompt,
                "max_tokens": sampling.get("max_tokens"),
            },
        )
    elif "transcribe" in tasks:
        return JobRequest(model=spec.id, task="transcribe", input={"audio": media.get("audio")})
    elif "classify" in tasks:
        task, inputs = "classify", {"text": prompt}
    else:
        task, inputs = tasks[0], {"prompt": prompt, **media, **sampling}
    if prompt is None and task != "echo":
        raise InvalidInput("prompt: required", param="prompt")
    return JobRequest(
        model=spec.id, task=task, input={k: v for k, v in inputs.items() if v is not None}
    )


def answer_text(job: JobRecord) -> str:
    """Return the text a seed server would have answered with, whatever the task."""
    out = job.output or {}
    if isinstance(out.get("text"), str):
        return out["text"]
    labels = out.get("labels")
    if labels:
        first = labels[0][0] if isinstance(labels[0], list) else labels[0]
        return str(first.get("label"))
    return json.dumps(out.get("echo", out), sort_keys=True)


# the AI Model Server (seeds/002)
class GenerateMedia(_Legacy):
    """POST /generate/<model>: prompt, base64 media, max_new_tokens, temperature."""

    prompt: str | None = None
    image: str | None = None
    audio: str | None = None
    video: str | None = None
    max_new_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)

    def to_job_request(self, spec: ModelSpec) -> JobRequest:
        """Return the job for this request on the named model."""
        return job_for(
            spec,
            self.prompt,
            media={"image": self.image, "audio": self.audio, "video": self.video},
            sampling={"max_tokens": self.max_new_tokens, "temperature": self.temperature},
        )


# the lightweight model server (seeds/000)
class GeneratePrompt(_Legacy):
    """POST /models/<name>/generate: {"prompt"}."""

    prompt: str

    def to_job_request(self, spec: ModelSpec) -> JobRequest:
        return job_for(spec, self.prompt)


# the BitNet server (seeds/001)
class BitNetGenerate(_Legacy):
    """POST /generate: prompt, system_prompt and sampling; `model` is conveyor's addition."""

    prompt: str
    system_prompt: str | None = None
    max_tokens: int | None = Field(256, ge=1)
    temperature: float | None = Field(0.7, ge=0, le=2)
    top_p: float | None = Field(0.9, gt=0, le=1)
    context_size: int | None = Field(None, description="Ignored: n_ctx is the model's own.")
    threads: int | None = Field(None, description="Ignored: threads are the worker's own.")
    conversation_mode: bool = True
    # ---- conveyor extension ----
    model: str | None = None

    def to_job_request(self, spec: ModelSpec) -> JobRequest:
        """Return the job: chat in conversation mode, else a raw completion when possible."""
        return job_for(
            spec,
            self.prompt,
            system_prompt=self.system_prompt,
            conversation=self.conversation_mode,
            sampling={
                "max_tokens": self.max_tokens,
                "temperature": self.temperature,
                "top_p": self.top_p,
            },
        )


# the llama.cpp server (seeds/003); its POST /chat/completions is the OpenAI route's
class SetModel(_Legacy):
    """POST /setModel: choose the chat model requests without `model` get."""

    model_name: str = Field(min_length=1)
    load_model_configs: dict[str, Any] | None = None
