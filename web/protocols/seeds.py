"""Request and answer shapes of the servers conveyor replaces (../shared/seeds/).

Their clients keep working unchanged: each request becomes an ordinary job (listed,
cancellable, counted), and the answer takes the shape the old server gave. Unknown
fields are ignored, as those servers ignored them.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.errors import InvalidInput, ModelNotAvailable
from shared.jobs import JobRecord
from shared.registry import ModelSpec, resolve_source
from web.protocols.catalog import ModelCard
from web.protocols.jobs import JobRequest

# The pipeline names the lightweight server (seeds/000) gave its model types.
PIPELINE = {
    "chat": "text-generation",
    "complete": "text-generation",
    "embed": "feature-extraction",
    "classify": "text-classification",
    "vqa": "visual-question-answering",
    "transcribe": "automatic-speech-recognition",
    "echo": "echo",
}
# The AI Model Server's (seeds/002) model types.
KIND = {
    "llamacpp": "text",
    "transformers": "text",
    "qwen_vl": "vision",
    "blip_vqa": "vision",
    "whisper": "audio",
    "qwen_audio": "audio",
    "qwen_omni": "omni",
    "sentence_transformers": "embedding",
    "classifier": "classification",
    "echo": "echo",
}
QUANT_BITS = {"int8": 8, "nf4": 4, "fp4": 4}
GB = 1024**3


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


def generate_media_answer(job: JobRecord) -> dict[str, Any]:
    return {"response": answer_text(job), "model": job.model, "job_id": job.id}


def memory_status(workers: list[dict[str, Any]], max_memory_mb: int | None) -> dict[str, Any]:
    """Return the seed server's memory report, summed over the workers online."""
    rows, allocated, reserved = [], 0, 0
    warning = False
    for w in workers:
        mem = w.get("memory") or {}
        cuda = mem.get("cuda") or {}
        rss = mem.get("rss_bytes") or 0
        allocated += cuda.get("allocated_bytes") or 0
        reserved += cuda.get("reserved_bytes") or 0
        if max_memory_mb and rss > 0.9 * max_memory_mb * 1024**2:
            warning = True
        rows.append(
            {
                "worker": w.get("worker"),
                "model": w.get("model"),
                "rss_gb": round(rss / GB, 3),
                "gpu": cuda.get("device"),
                "gpu_allocated_gb": round((cuda.get("allocated_bytes") or 0) / GB, 3),
                "gpu_reserved_gb": round((cuda.get("reserved_bytes") or 0) / GB, 3),
            }
        )
    gpu = any(r["gpu"] for r in rows)
    return {
        "timestamp": int(time.time()),
        "gpu_available": gpu,
        "gpu_total_gb": None,  # workers report what they hold, not the device's size
        "gpu_allocated_gb": round(allocated / GB, 3) if gpu else 0.0,
        "gpu_reserved_gb": round(reserved / GB, 3) if gpu else 0.0,
        "gpu_free_gb": None,
        "memory_warning": warning,
        "multimodal_safe": not warning,
        "rss_total_gb": round(sum(r["rss_gb"] for r in rows), 3),
        "workers": rows,
    }


def model_status(models: list[ModelCard], specs: dict[str, ModelSpec]) -> dict[str, Any]:
    """Return the seed server's model report: every id and alias, and each model's config."""
    names = sorted({n for m in models for n in [m.id, *m.aliases]})
    configs = {}
    for m in models:
        spec = specs[m.id]
        configs[m.id] = {
            "type": KIND.get(spec.backend, PIPELINE.get(spec.tasks[0], spec.tasks[0])),
            "path": m.source,
            "path_exists": _on_disk(spec),
            "quant_bits": QUANT_BITS.get(spec.quantization),
            "backend": spec.backend,
            "tasks": spec.tasks,
            "aliases": m.aliases,
            "loaded": m.loaded,
            "workers_online": m.workers_online,
            "queue_depth": m.queue_depth,
        }
    return {"timestamp": int(time.time()), "available_models": names, "model_configs": configs}


def _on_disk(spec: ModelSpec) -> bool:
    """Return True when this machine has the weights (weightless models have them)."""
    try:
        resolve_source(spec)
    except ModelNotAvailable:
        return False
    return True


# the lightweight model server (seeds/000)
class GeneratePrompt(_Legacy):
    """POST /models/<name>/generate: {"prompt"}."""

    prompt: str

    def to_job_request(self, spec: ModelSpec) -> JobRequest:
        return job_for(spec, self.prompt)


def lightweight_answer(job: JobRecord) -> dict[str, Any]:
    return {"generated_text": answer_text(job), "model": job.model, "job_id": job.id}


def lightweight_models(models: list[ModelCard]) -> dict[str, Any]:
    """Return GET /models: {"models": [{name, type, parameters, ...}]}."""
    return {
        "models": [
            {
                "name": m.id,
                "type": PIPELINE.get(m.tasks[0], m.tasks[0]),
                "parameters": None,  # the registry does not record parameter counts
                "description": m.description,
                "aliases": m.aliases,
                "loaded": m.loaded,
                "workers_online": m.workers_online,
            }
            for m in models
        ]
    }


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


def bitnet_answer(job: JobRecord) -> dict[str, Any]:
    return {
        "generated_text": answer_text(job),
        "tokens_generated": job.metrics.completion_tokens or 0,
        "tokens_processed": job.metrics.prompt_tokens or 0,
        "model": job.model,
        "job_id": job.id,
    }


# the llama.cpp server (seeds/003); its POST /chat/completions is the OpenAI route's
class SetModel(_Legacy):
    """POST /setModel: choose the chat model requests without `model` get."""

    model_name: str = Field(min_length=1)
    load_model_configs: dict[str, Any] | None = None


LOAD_CONFIGS_NOTE = (
    "load_model_configs are not applied here: each worker loads its model "
    "once, with the options of its models.yaml entry"
)


def set_model_answer(spec: ModelSpec, req: SetModel) -> dict[str, Any]:
    answer = {"message": "Model loaded successfully", "model": spec.id}
    if req.load_model_configs:
        answer["note"] = LOAD_CONFIGS_NOTE
    return answer


def restore_cache_answer(job: JobRecord) -> dict[str, Any]:
    return {
        "message": "Cache restored",
        "model": job.model,
        "job_id": job.id,
        "prompt_tokens": job.metrics.prompt_tokens,
    }
