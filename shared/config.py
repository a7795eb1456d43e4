"""Typed settings: the only place conveyor reads its environment."""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_REGISTRY = Path(__file__).with_name("models.yaml")


class Settings(BaseSettings):
    """Every knob of conveyor, read from CONVEYOR_* environment variables."""

    # Empty variables mean "unset"; errors never echo values back (secrets live here).
    model_config = SettingsConfigDict(
        env_prefix="CONVEYOR_", extra="ignore", env_ignore_empty=True, hide_input_in_errors=True
    )

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis used as Celery broker, result store and event log.",
    )
    data_dir: Path = Field(
        Path("./data"), description="Working directory for payloads, logs and embedded Redis."
    )
    registry: Path = Field(DEFAULT_REGISTRY, description="Path of the models.yaml registry.")
    payload_url: str | None = Field(
        None,
        description="fsspec URL where job media is kept; default file://<data_dir>/payloads.",
    )
    result_ttl_s: int = Field(
        86_400, ge=60, le=30 * 86_400, description="Seconds a job record and its payloads live."
    )
    max_request_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, le=2 * 1024**3, description="Largest accepted request body."
    )
    max_media_bytes: int = Field(
        48 * 1024 * 1024, ge=1024, le=2 * 1024**3, description="Largest single media item."
    )
    max_queued_per_model: int = Field(
        1000, ge=1, le=1_000_000, description="Queued jobs per model before submits get 429."
    )
    webhook_secret: str | None = Field(
        None, description="Standard Webhooks signing secret, 'whsec_' + base64."
    )
    webhook_allow_private: bool = Field(
        False, description="Allow webhook targets on loopback or private networks."
    )
    webhook_max_attempts: int = Field(
        6, ge=1, le=20, description="Delivery attempts per webhook event."
    )
    webhook_timeout_s: float = Field(
        10.0, gt=0, le=120, description="Timeout of one webhook request."
    )
    webhook_backoff_s: float = Field(
        2.0,
        gt=0,
        le=600,
        description="Delay before the first webhook retry; doubles each attempt, with jitter.",
    )
    webhook_backoff_max_s: float = Field(
        300.0, gt=0, le=3600, description="Longest delay between two webhook attempts."
    )
    sse_heartbeat_s: float = Field(
        15.0,
        gt=0,
        le=50,
        description="Seconds of silence before an event stream sends a "
        "heartbeat comment (keeps proxies from closing it); below Redis' 60 s read timeout.",
    )
    max_held_requests: int = Field(
        5000,
        ge=1,
        le=100_000,
        description="Event streams and waiting requests (Prefer: wait, OpenAI and seed routes) "
        "one web process holds at once; past it they are answered 503 with Retry-After. "
        "Health checks, submits and polls never count against it.",
    )
    payload_sweep_interval_s: float = Field(
        600.0,
        ge=1,
        le=86_400,
        description="How often the workers' reaper sweeps payloads of ended or vanished jobs.",
    )
    payload_orphan_grace_s: float = Field(
        600.0,
        ge=0,
        le=86_400,
        description="Age a payload folder with no job record must reach before the sweeper "
        "removes it (a submit writes media just before it records the job).",
    )
    api_keys: list[str] = Field(
        default_factory=list,
        description="Bearer keys accepted by the API (JSON list); empty means no auth.",
    )
    lease_s: float = Field(
        10.0, ge=1, le=600, description="Seconds a running job's lease lasts between renewals."
    )
    reaper_interval_s: float = Field(
        2.0, gt=0, le=60, description="How often workers look for jobs whose lease expired."
    )
    redeliver_after_s: float = Field(
        30.0,
        ge=1,
        le=86_400,
        description="Age of a queued job whose broker message is gone before it is sent again.",
    )
    max_deliveries: int = Field(
        3, ge=1, le=20, description="Worker losses a job survives before it fails as worker_lost."
    )
    visibility_timeout_s: int = Field(
        7200,
        ge=30,
        le=7 * 86_400,
        description="Broker visibility timeout; every hard time limit stays below it.",
    )
    default_time_limit_s: int = Field(
        600, ge=1, le=86_400, description="Hard time limit of a job when its model sets none."
    )
    cancel_check_interval_s: float = Field(
        0.05, gt=0, le=5, description="Longest gap between two cancel-flag checks of a backend."
    )
    worker_max_memory_mb: int | None = Field(
        None, ge=64, description="RSS ceiling; a worker past it finishes its job and is replaced."
    )
    sync_wait_s: float = Field(
        570.0,
        gt=0,
        le=3600,
        description="Longest an answer-in-one-request route (OpenAI-compatible, seed servers') "
        "holds a request for its job; past it the job is canceled and the answer is 504. "
        "The default stays under the openai client's 600 s timeout, past which it resubmits.",
    )
    task_events: bool = Field(
        False,
        description="Send Celery task events from the start (Flower turns them on while it runs).",
    )
    auto_pull: bool = Field(
        True,
        description="A worker whose hub model is not in the Hugging Face cache downloads it "
        "at start (HF_TOKEN, HF_ENDPOINT and the entry's revision apply); false: it exits "
        "saying how to get it.",
    )
    cpu_threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Threads of CPU inference (llama.cpp) for models whose options set no "
        "n_threads; default: the physical cores this process may use. Set it when several "
        "workers share a machine.",
    )
    keep_alive_s: float = Field(
        300.0,
        ge=0,
        le=7 * 86_400,
        description="`conveyor up`: seconds an on-demand worker stays idle before it stops "
        "(0: it never stops). Workers of models named with --model always stay up.",
    )
    max_workers: int = Field(
        3,
        ge=1,
        le=256,
        description="`conveyor up`: most model workers running at once, those named with "
        "--model included; an on-demand start first stops the least recently used idle "
        "on-demand worker.",
    )
    log_level: str = Field("INFO", description="Log level of every component.")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Log lines as readable text, or one JSON object per line (with job_id and "
        "model on a job's lines) for log collectors.",
    )

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _webhook_secret_format(cls, value: str | None) -> str | None:
        if value is None or not str(value).strip():
            return None  # compose passes an unset variable as ""
        value = str(value).strip()
        key = value.removeprefix("whsec_")
        try:
            raw = base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("webhook_secret must be 'whsec_' followed by base64") from None
        if len(raw) < 16:
            raise ValueError("webhook_secret must hold at least 16 bytes of key")
        return value if value.startswith("whsec_") else "whsec_" + value

    @model_validator(mode="after")
    def _time_limits_below_visibility(self) -> Settings:
        if self.default_time_limit_s >= self.visibility_timeout_s:
            raise ValueError("default_time_limit_s must stay below visibility_timeout_s")
        return self

    def as_env(self) -> dict[str, str]:
        """Return the CONVEYOR_* environment that reproduces these settings in a child."""
        return {
            f"CONVEYOR_{name.upper()}": json.dumps(value) if isinstance(value, list) else str(value)
            for name, value in self.model_dump(mode="json").items()
            if value is not None
        }

    @property
    def payload_location(self) -> str:
        """Return the fsspec URL of the payload store."""
        if self.payload_url:
            return self.payload_url
        return f"file://{(self.data_dir / 'payloads').resolve()}"
