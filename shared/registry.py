"""The model registry: models.yaml validated into ModelSpec objects."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.errors import ModelNotAvailable

TASKS = ("chat", "complete", "embed", "classify", "vqa", "transcribe", "echo")
Quantization = Literal["none", "int8", "nf4", "fp4"]
# Highest max_concurrency a registry entry may ask for: each running job holds a thread, a
# lease and a reserved broker message; past this, run more workers instead.
MAX_CONCURRENCY = 256


class Source(BaseModel):
    """Where a model's weights live: a path, a file in a Python package, or the hub."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = None
    package: str | None = None
    file: str | None = None
    hf_repo: str | None = None
    hf_file: str | None = None
    revision: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Source:
        kinds = [k for k in (self.path, self.package, self.hf_repo) if k]
        if len(kinds) > 1:
            raise ValueError("source takes one of path, package or hf_repo")
        if self.package and not self.file:
            raise ValueError("source.package needs source.file")
        if (self.hf_file or self.revision) and not self.hf_repo:
            # hf_file names one file of the repository (a GGUF), revision pins it.
            raise ValueError("source.hf_file and source.revision need source.hf_repo")
        return self

    def describe(self) -> str:
        """Return a short human description of the source."""
        if self.path:
            return self.path
        if self.package:
            return f"{self.package}/{self.file}"
        if self.hf_repo:
            return f"hf://{self.hf_repo}" + (f"/{self.hf_file}" if self.hf_file else "")
        return "(none)"


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(512, ge=1, le=131_072)
    max_input_chars: int = Field(200_000, ge=1)
    time_limit_s: int | None = Field(None, ge=1, le=86_400)
    max_batch: int = Field(64, ge=1, le=4096)
    video_max_frames: int = Field(16, ge=1, le=1024)
    video_fps: float = Field(1.0, gt=0, le=60)
    video_max_seconds: float = Field(600.0, gt=0)
    video_max_pixels: int = Field(448 * 448, ge=16)
    audio_max_seconds: float = Field(600.0, gt=0)


class ModelSpec(BaseModel):
    """One model conveyor can serve; a worker pins exactly one."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    backend: str
    description: str = ""
    source: Source = Field(default_factory=Source)
    tasks: list[str] = Field(min_length=1)
    quantization: Quantization = "none"
    options: dict[str, Any] = Field(default_factory=dict)
    limits: Limits = Field(default_factory=Limits)
    default: bool = False
    aliases: list[str] = Field(default_factory=list)
    # Jobs one worker runs at once against its one loaded copy of the model (None: the
    # backend's default, e.g. 8 for llama.cpp's batching engine, 1 where nothing batches).
    max_concurrency: int | None = Field(None, ge=1, le=MAX_CONCURRENCY)

    @model_validator(mode="after")
    def _known_tasks(self) -> ModelSpec:
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown tasks {unknown}; known: {list(TASKS)}")
        return self

    @property
    def queue(self) -> str:
        """Return the Celery queue this model's workers consume."""
        return f"model.{self.id}"

    def default_task(self) -> str:
        """Return the task to use when a request names none: the first one listed."""
        return self.tasks[0]


class Registry:
    """The validated list of models, looked up by id or alias."""

    def __init__(self, specs: list[ModelSpec]) -> None:
        ids = [s.id for s in specs]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate model ids in registry: {dupes}")
        self.specs = specs
        self._by_name = {s.id: s for s in specs}
        for spec in specs:
            for alias in spec.aliases:
                self._by_name.setdefault(alias, spec)

    def __iter__(self):
        return iter(self.specs)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def get(self, name: str) -> ModelSpec | None:
        """Return the spec for an id or alias, or None."""
        return self._by_name.get(name)

    def default_for(self, task: str) -> ModelSpec | None:
        """Return the default model for a task: one marked default, else the first."""
        candidates = [s for s in self.specs if task in s.tasks]
        marked = [s for s in candidates if s.default]
        return (marked or candidates or [None])[0]


def load_registry(path: str | Path) -> Registry:
    """Load and validate models.yaml.

    :raises ValueError: when the file is missing or invalid, naming the bad entry.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read model registry {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"model registry {path} is not valid YAML: {exc}") from exc
    entries = (data or {}).get("models") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"model registry {path} needs a top-level 'models:' list")
    specs = []
    for i, entry in enumerate(entries):
        try:
            specs.append(ModelSpec.model_validate(entry))
        except ValidationError as exc:
            name = entry.get("id", f"#{i}") if isinstance(entry, dict) else f"#{i}"
            raise ValueError(f"model registry {path}, model {name}: {exc}") from exc
    return Registry(specs)


def resolve_source(spec: ModelSpec, *, cache_dir: str | None = None) -> Path | None:
    """Return the local path of a model's weights (None for weightless models).

    :raises ModelNotAvailable: when the weights are not on this machine.
    """
    src = spec.source
    if src.path:
        path = Path(src.path).expanduser()
        if not path.exists():
            raise ModelNotAvailable(
                f"model {spec.id}: source path {path} does not exist; "
                f"run `conveyor models pull {spec.id}` or point source.path at a local copy"
            )
        return path
    if src.package:
        found = importlib.util.find_spec(src.package)
        if found is None or not found.submodule_search_locations:
            raise ModelNotAvailable(
                f"model {spec.id}: Python package {src.package!r} is not installed "
                f"(it ships the weights; `make install` installs it)"
            )
        path = Path(list(found.submodule_search_locations)[0]) / src.file
        if not path.exists():
            raise ModelNotAvailable(f"model {spec.id}: {path} is missing from {src.package}")
        return path
    if src.hf_repo:
        from shared.hub import local_snapshot

        return local_snapshot(spec, cache_dir=cache_dir)
    return None
