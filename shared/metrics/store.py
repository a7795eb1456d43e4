"""Fleet-wide counters and histograms kept in one Redis hash.

Whatever counts something (the job store when a job is created or ends, the webhook
worker after an attempt, each web process for its HTTP requests) adds to the same hash, so
any web process reads the whole fleet's numbers at scrape time, whichever host or process
did the counting. A field is a metric sample: JSON of [name, labels]; its value is a count
(HINCRBY) or, for a histogram's _sum, a float (HINCRBYFLOAT). Histogram buckets are stored
one per bound, not cumulative (one write per observation); the reader adds them up.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import redis

from shared.jobs import JobRecord, JobStatus
from shared.store import keys

if TYPE_CHECKING:
    from shared.store.job_reads import JobReads

# Histogram bounds, in seconds unless named otherwise: from an echo job's milliseconds to
# a long generation's minutes.
QUEUE_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    1800,
)
RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKENS_PER_SECOND_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# Names as stored (counters without _total; prometheus-client adds it when it exposes them).
JOBS_SUBMITTED = "conveyor_jobs_submitted"
JOBS_REJECTED = "conveyor_jobs_rejected"
JOBS_FINISHED = "conveyor_jobs_finished"
QUEUE_WAIT = "conveyor_job_queue_wait_seconds"
RUN_TIME = "conveyor_job_run_seconds"
FIRST_TOKEN = "conveyor_job_time_to_first_token_seconds"
TOKENS_PER_SECOND = "conveyor_job_tokens_per_second"
GENERATED_TOKENS = "conveyor_generated_tokens"
PROMPT_TOKENS = "conveyor_prompt_tokens"
WEBHOOK_DELIVERIES = "conveyor_webhook_deliveries"
HTTP_REQUESTS = "conveyor_http_requests"
HTTP_DURATION = "conveyor_http_request_duration_seconds"

HISTOGRAMS: dict[str, tuple[float, ...]] = {
    QUEUE_WAIT: QUEUE_BUCKETS,
    RUN_TIME: RUN_BUCKETS,
    FIRST_TOKEN: TTFT_BUCKETS,
    TOKENS_PER_SECOND: TOKENS_PER_SECOND_BUCKETS,
    HTTP_DURATION: HTTP_BUCKETS,
}

Labels = tuple[tuple[str, str], ...]
# (name, labels) -> value; name is a counter's, a histogram's "<name>_sum", or its
# "<name>_bucket" with an "le" label.
Samples = dict[tuple[str, Labels], float]


def field(name: str, **labels: str) -> str:
    """Return the hash field of one sample: a stable encoding of its name and labels."""
    return json.dumps([name, dict(sorted(labels.items()))], separators=(",", ":"))


def bucket_bound(bounds: tuple[float, ...], value: float) -> str:
    """Return the "le" label of the smallest bucket that holds value."""
    for bound in bounds:
        if value <= bound:
            return le_label(bound)
    return "+Inf"


def le_label(bound: float) -> str:
    """Return the "le" label of a bucket bound, as Prometheus writes it."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def histogram_writes(name: str, value: float, **labels: str) -> list[tuple[str, str, float]]:
    """Return the (command, field, amount) writes that record one observation."""
    le = bucket_bound(HISTOGRAMS[name], value)
    return [
        ("hincrby", field(name + "_bucket", le=le, **labels), 1),
        ("hincrbyfloat", field(name + "_sum", **labels), value),
    ]


def job_end_writes(rec: JobRecord) -> list[tuple[str, str, float]]:
    """Return the writes that count a job reaching its terminal state.

    Called once per job, inside the job store's compare-and-set that ends it.
    """
    model, task = rec.model, rec.task
    error_type = rec.error.type if rec.status == JobStatus.FAILED and rec.error else ""
    writes = [
        (
            "hincrby",
            field(
                JOBS_FINISHED,
                model=model,
                task=task,
                status=rec.status.value,
                error_type=error_type,
            ),
            1,
        )
    ]
    m = rec.metrics
    if m.queue_seconds is not None:
        writes += histogram_writes(QUEUE_WAIT, max(0.0, m.queue_seconds), model=model)
    if m.run_seconds is not None:
        writes += histogram_writes(RUN_TIME, max(0.0, m.run_seconds), model=model)
    if m.time_to_first_token_seconds is not None:
        writes += histogram_writes(
            FIRST_TOKEN, max(0.0, m.time_to_first_token_seconds), model=model
        )
    if m.tokens_per_second:
        writes += histogram_writes(TOKENS_PER_SECOND, m.tokens_per_second, model=model)
    if m.completion_tokens:
        writes.append(("hincrby", field(GENERATED_TOKENS, model=model), int(m.completion_tokens)))
    if m.prompt_tokens:
        writes.append(("hincrby", field(PROMPT_TOKENS, model=model), int(m.prompt_tokens)))
    return writes


def http_writes(route: str, method: str, status: int, seconds: float) -> list[tuple]:
    """Return the writes that count one HTTP request."""
    return [
        ("hincrby", field(HTTP_REQUESTS, route=route, method=method, status=str(status)), 1),
        *histogram_writes(HTTP_DURATION, seconds, route=route, method=method),
    ]


class MetricsStore:
    """The metrics hash: add to it in a pipeline, read it whole."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client

    @classmethod
    def from_store(cls, store: JobReads) -> MetricsStore:
        """Return the metrics on the job store's connection pool."""
        return cls(store.r)

    @staticmethod
    def queue(pipe, writes: Iterable[tuple[str, str, float]]) -> None:
        """Queue writes on a pipeline (or the job store's compare-and-set Writes)."""
        for command, name, amount in writes:
            getattr(pipe, command)(
                keys.METRICS, name, int(amount) if command == "hincrby" else amount
            )

    def add(self, writes: Iterable[tuple[str, str, float]]) -> None:
        """Apply writes now, in one round trip."""
        writes = list(writes)
        if not writes:
            return
        pipe = self.r.pipeline(transaction=False)
        self.queue(pipe, writes)
        pipe.execute()

    def add_totals(self, totals: Mapping[tuple[str, str], float]) -> None:
        """Apply summed writes, {(command, field): amount}, in one round trip."""
        self.add((command, name, amount) for (command, name), amount in totals.items())

    def count_webhook(self, outcome: str) -> None:
        """Count one webhook delivery attempt by its outcome."""
        self.add([("hincrby", field(WEBHOOK_DELIVERIES, outcome=outcome), 1)])

    def read(self) -> Samples:
        """Return every stored sample."""
        out: Samples = {}
        for raw, value in self.r.hgetall(keys.METRICS).items():
            name, labels = json.loads(raw)
            out[(name, tuple(sorted(labels.items())))] = float(value)
        return out


def submitted_field(model: str, task: str) -> str:
    """Return the field the job store's create script counts a new job in."""
    return field(JOBS_SUBMITTED, model=model, task=task)


def rejected_field(model: str, task: str, reason: str) -> str:
    """Return the field the create script counts a refused job in (queue full)."""
    return field(JOBS_REJECTED, model=model, task=task, reason=reason)


def describe_samples(samples: Samples, name: str) -> Iterable[tuple[dict[str, Any], float]]:
    """Yield (labels, value) of one stored name."""
    for (sample_name, labels), value in samples.items():
        if sample_name == name:
            yield dict(labels), value
