"""Answers in the shapes the servers conveyor replaces gave (../shared/seeds/), each built
from a job record or the catalog. Their clients read these keys; keep them as they are."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel

from shared.errors import ModelNotAvailable
from shared.jobs import JobRecord
from shared.registry import ModelSpec, resolve_source
from web.protocols.catalog import ModelCard, PayloadSweep, PayloadUsage
from web.protocols.seeds import SetModel, answer_text
from web.protocols.wire import Reply

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
LOAD_CONFIGS_NOTE = (
    "load_model_configs are not applied here: each worker loads its model "
    "once, with the options of its models.yaml entry"
)


def _pipeline(tasks: list[str]) -> str:
    return PIPELINE.get(tasks[0], tasks[0])


# the AI Model Server (seeds/002)
class GenerateMediaAnswer(BaseModel):
    """POST /generate/<model>."""

    response: str
    model: str
    job_id: str

    @classmethod
    def of(cls, job: JobRecord) -> GenerateMediaAnswer:
        return cls(response=answer_text(job), model=job.model, job_id=job.id)


class SeedHealth(BaseModel):
    """GET /health."""

    status: Literal["healthy"] = "healthy"
    message: str = "conveyor is running"
    model_loaded: bool
    current_model: str | None
    models_loaded: list[str]


class WorkerMemoryRow(BaseModel):
    worker: str | None
    model: str | None
    rss_gb: float
    gpu: str | int | None
    gpu_allocated_gb: float
    gpu_reserved_gb: float


class MemoryStatus(BaseModel):
    """GET /admin/memory_status: the seed server's memory report, summed over the workers."""

    timestamp: int
    gpu_available: bool
    gpu_total_gb: float | None = None  # workers report what they hold, not the device's size
    gpu_allocated_gb: float
    gpu_reserved_gb: float
    gpu_free_gb: float | None = None
    memory_warning: bool
    multimodal_safe: bool
    rss_total_gb: float
    workers: list[WorkerMemoryRow]

    @classmethod
    def of(cls, workers: list[dict[str, Any]], max_memory_mb: int | None) -> MemoryStatus:
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
                WorkerMemoryRow(
                    worker=w.get("worker"),
                    model=w.get("model"),
                    rss_gb=round(rss / GB, 3),
                    gpu=cuda.get("device"),
                    gpu_allocated_gb=round((cuda.get("allocated_bytes") or 0) / GB, 3),
                    gpu_reserved_gb=round((cuda.get("reserved_bytes") or 0) / GB, 3),
                )
            )
        gpu = any(r.gpu for r in rows)
        return cls(
            timestamp=int(time.time()),
            gpu_available=gpu,
            gpu_allocated_gb=round(allocated / GB, 3) if gpu else 0.0,
            gpu_reserved_gb=round(reserved / GB, 3) if gpu else 0.0,
            memory_warning=warning,
            multimodal_safe=not warning,
            rss_total_gb=round(sum(r.rss_gb for r in rows), 3),
            workers=rows,
        )


class ModelConfig(BaseModel):
    type: str
    path: str
    path_exists: bool
    quant_bits: int | None
    backend: str
    tasks: list[str]
    aliases: list[str]
    loaded: bool
    workers_online: int
    queue_depth: int


class ModelStatus(BaseModel):
    """GET /admin/model_status: every id and alias, and each model's config."""

    timestamp: int
    available_models: list[str]
    model_configs: dict[str, ModelConfig]

    @classmethod
    def of(cls, models: list[ModelCard], specs: dict[str, ModelSpec]) -> ModelStatus:
        names = sorted({n for m in models for n in [m.id, *m.aliases]})
        configs = {}
        for m in models:
            spec = specs[m.id]
            configs[m.id] = ModelConfig(
                type=KIND.get(spec.backend, _pipeline(spec.tasks)),
                path=m.source,
                path_exists=_on_disk(spec),
                quant_bits=QUANT_BITS.get(spec.quantization),
                backend=spec.backend,
                tasks=spec.tasks,
                aliases=m.aliases,
                loaded=m.loaded,
                workers_online=m.workers_online,
                queue_depth=m.queue_depth,
            )
        return cls(timestamp=int(time.time()), available_models=names, model_configs=configs)


def _on_disk(spec: ModelSpec) -> bool:
    """Return True when this machine has the weights (weightless models have them)."""
    try:
        resolve_source(spec)
    except ModelNotAvailable:
        return False
    return True


class EmergencyCleanup(BaseModel):
    """POST /admin/emergency_cleanup."""

    status: Literal["success"] = "success"
    workers_notified: int
    temp: PayloadSweep


class TempStatus(BaseModel):
    """GET /admin/temp_status: the payload store's usage."""

    status: Literal["success"] = "success"
    url: str
    jobs: int
    files: int
    bytes: int

    @classmethod
    def of(cls, usage: PayloadUsage) -> TempStatus:
        return cls(**dict(usage))


class TempCleanup(BaseModel):
    """POST /admin/cleanup_temp: what the sweep removed, and the usage after it."""

    status: Literal["success"] = "success"
    removed_jobs: int
    removed: list[str]
    url: str
    jobs: int
    files: int
    bytes: int

    @classmethod
    def of(cls, sweep: PayloadSweep) -> TempCleanup:
        return cls(**dict(sweep))


# the lightweight model server (seeds/000)
class Running(BaseModel):
    """GET / for API clients."""

    status: Literal["running"] = "running"
    message: str = "conveyor is running"
    models: list[str]


class LightweightAnswer(BaseModel):
    """POST /models/<name>/generate."""

    generated_text: str
    model: str
    job_id: str

    @classmethod
    def of(cls, job: JobRecord) -> LightweightAnswer:
        return cls(generated_text=answer_text(job), model=job.model, job_id=job.id)


class LightweightModel(BaseModel):
    name: str
    type: str
    parameters: int | None = None  # the registry does not record parameter counts
    description: str
    aliases: list[str]
    loaded: bool
    workers_online: int


class LightweightModels(BaseModel):
    """GET /models."""

    models: list[LightweightModel]

    @classmethod
    def of(cls, models: list[ModelCard]) -> LightweightModels:
        return cls(
            models=[
                LightweightModel(
                    name=m.id,
                    type=_pipeline(m.tasks),
                    description=m.description,
                    aliases=m.aliases,
                    loaded=m.loaded,
                    workers_online=m.workers_online,
                )
                for m in models
            ]
        )


# the BitNet server (seeds/001)
class BitNetAnswer(BaseModel):
    """POST /generate."""

    generated_text: str
    tokens_generated: int
    tokens_processed: int
    model: str
    job_id: str

    @classmethod
    def of(cls, job: JobRecord) -> BitNetAnswer:
        return cls(
            generated_text=answer_text(job),
            tokens_generated=job.metrics.completion_tokens or 0,
            tokens_processed=job.metrics.prompt_tokens or 0,
            model=job.model,
            job_id=job.id,
        )


# the llama.cpp server (seeds/003)
class SetModelAnswer(Reply):
    """POST /setModel; `note` only when load_model_configs were sent (and not applied)."""

    OPTIONAL = frozenset({"note"})

    message: str = "Model loaded successfully"
    model: str
    note: str | None = None

    @classmethod
    def of(cls, spec: ModelSpec, req: SetModel) -> SetModelAnswer:
        if req.load_model_configs:
            return cls(model=spec.id, note=LOAD_CONFIGS_NOTE)
        return cls(model=spec.id)


class RestoreCacheAnswer(BaseModel):
    """POST /restore_cache."""

    message: str = "Cache restored"
    model: str
    job_id: str
    prompt_tokens: int | None

    @classmethod
    def of(cls, job: JobRecord) -> RestoreCacheAnswer:
        return cls(model=job.model, job_id=job.id, prompt_tokens=job.metrics.prompt_tokens)
