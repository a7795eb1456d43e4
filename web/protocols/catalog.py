"""Bodies about the models and the fleet: the model list (OpenAI's model objects with live
facts), health, readiness and the operator views."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from shared.registry import Limits, ModelSpec
from shared.store.on_demand import Board


class OnDemand(BaseModel):
    """What `conveyor up` does for a model no worker serves."""

    startable: bool = Field(description="conveyor up starts a worker when a job arrives.")
    worker: dict[str, Any] | None = Field(
        None, description="The on-demand worker it started: state, pid, stops_at..."
    )


class ModelCard(BaseModel):
    """One registry model as an OpenAI model object, with conveyor's live facts below."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "conveyor"
    # ---- conveyor ----
    backend: str
    tasks: list[str]
    description: str
    aliases: list[str]
    quantization: str
    source: str = Field(description="Where the weights come from (path, package, hf://...).")
    default: bool
    queue: str
    queue_depth: int = Field(description="Jobs of this model waiting in its queue.")
    workers_online: int
    loaded: bool = Field(description="Some worker online has the model in memory.")
    on_demand: OnDemand
    limits: Limits

    @classmethod
    def of(
        cls,
        spec: ModelSpec,
        created: int,
        queue_depth: int,
        workers: list[dict[str, Any]],
        board: Board,
    ) -> ModelCard:
        """Return a registry entry with its queue depth, the workers serving it and what
        `conveyor up` starts for it on demand."""
        return cls(
            id=spec.id,
            created=created,
            backend=spec.backend,
            tasks=spec.tasks,
            description=spec.description,
            aliases=spec.aliases,
            quantization=spec.quantization,
            source=spec.source.describe(),
            default=spec.default,
            queue=spec.queue,
            queue_depth=queue_depth,
            workers_online=len(workers),
            loaded=any(w.get("loaded") for w in workers),
            on_demand=OnDemand(
                startable=board.can_start(spec.id), worker=board.workers.get(spec.id)
            ),
            limits=spec.limits,
        )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    redis: Literal["ok"] = "ok"


# operator views (/admin/...)
class WorkerMemory(BaseModel):
    """A worker as GET /admin/memory shows it: what it holds and does."""

    worker: str | None = None
    model: str | None = None
    pid: int | None = None
    hostname: str | None = None
    jobs_done: int | None = None
    current_job: str | None = Field(None, description="The first of running_jobs.")
    running_jobs: list[str] | None = Field(None, description="Ids of the jobs it runs now.")
    max_concurrency: int | None = Field(None, description="Jobs it runs at once at most.")
    memory: dict[str, Any] | None = Field(None, description="RSS, and CUDA memory on a GPU.")
    at: float | None = Field(None, description="When the worker last reported (epoch seconds).")

    @classmethod
    def of(cls, info: dict[str, Any]) -> WorkerMemory:
        return cls(**{k: info.get(k) for k in cls.model_fields})


class MemoryReport(BaseModel):
    workers: list[WorkerMemory]


class WorkerState(BaseModel):
    """A worker serving one model, as GET /admin/models shows it."""

    worker: str | None = None
    loaded: bool | None = None
    load_seconds: float | None = None
    health: Any = None
    jobs_done: int | None = None
    current_job: str | None = Field(None, description="The first of running_jobs.")
    running_jobs: list[str] | None = Field(None, description="Ids of the jobs it runs now.")
    max_concurrency: int | None = Field(None, description="Jobs it runs at once at most.")

    @classmethod
    def of(cls, info: dict[str, Any]) -> WorkerState:
        return cls(**{k: info.get(k) for k in cls.model_fields})


class ModelState(ModelCard):
    workers: list[WorkerState]


class ModelStates(BaseModel):
    models: list[ModelState]


class PayloadUsage(BaseModel):
    """What the payload store (requests' media) holds."""

    url: str
    jobs: int
    files: int
    bytes: int


class PayloadSweep(BaseModel):
    removed_jobs: int
    removed: list[str] = Field(description="Ids of the jobs whose payloads were deleted.")
    url: str
    jobs: int
    files: int
    bytes: int


class CleanupRequested(BaseModel):
    requested: Literal[True] = True
    workers_notified: int = Field(description="Workers listening when the request went out.")
