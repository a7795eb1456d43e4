"""Every Redis key conveyor writes, named in one place.

Only the stores in shared/store/ (and the metrics and webhook stores) build keys, and only
from here. Celery's broker lists are kombu's, named by shared/celery_app.broker_keys.
Every key is under PREFIX, so one Redis database can be inspected (or flushed) as a whole.
"""

from __future__ import annotations

PREFIX = "conveyor"

# Jobs: a record, its event log and the stream that gets one entry when it ends.
JOBS_INDEX = f"{PREFIX}:jobs"  # sorted set: job id by creation time (GET /v1/jobs)
RUNNING = f"{PREFIX}:running"  # sorted set: ids of jobs some worker claimed
# Jobs with a queue_timeout_s, by the time it runs out: the reaper reads only due ones.
QUEUE_DEADLINES = f"{PREFIX}:queue_deadlines"


def job(job_id: str) -> str:
    """The job's record (JSON of a JobRecord)."""
    return f"{PREFIX}:job:{job_id}"


def events(job_id: str) -> str:
    """The job's event log (a stream)."""
    return f"{PREFIX}:events:{job_id}"


def end(job_id: str) -> str:
    """A stream that gets one entry when the job ends: what waits block on."""
    return f"{PREFIX}:end:{job_id}"


def stream_job(key: str) -> tuple[str, str]:
    """Return (kind, job id) of an events() or end() key: kind is "events" or "end"."""
    kind, _, job_id = key.removeprefix(f"{PREFIX}:").partition(":")
    return kind, job_id


def lease(job_id: str) -> str:
    """The worker running the job, until its lease lapses."""
    return f"{PREFIX}:lease:{job_id}"


def cancel(job_id: str) -> str:
    """Set when a client asked to cancel the job."""
    return f"{PREFIX}:cancel:{job_id}"


def queued(model: str) -> str:
    """Sorted set: ids of the model's queued jobs by creation time."""
    return f"{PREFIX}:queued:{model}"


def redelivered(job_id: str) -> str:
    """Set while a reaper's new broker message for a queued job is fresh (once per period)."""
    return f"{PREFIX}:redelivered:{job_id}"


# Workers: each one's heartbeat, and the index that lists them without a SCAN.
WORKERS_INDEX = f"{PREFIX}:workers"
COMMANDS = f"{PREFIX}:commands"  # pub/sub channel: operator commands to every worker


def worker(worker_id: str) -> str:
    """The worker's heartbeat (JSON), expiring unless renewed."""
    return f"{PREFIX}:worker:{worker_id}"


def webhook(msg_id: str) -> str:
    """A queued webhook delivery: its frozen body, then a done marker once delivered."""
    return f"{PREFIX}:webhook:{msg_id}"


METRICS = f"{PREFIX}:metrics"  # hash: fleet-wide counters and histograms
SWEEP_LOCK = f"{PREFIX}:sweep-lock"  # held by the process sweeping payloads this period
ON_DEMAND = f"{PREFIX}:on_demand"  # what `conveyor up` starts on demand
# The chat model chosen with POST /setModel, for every web process.
CURRENT_CHAT_MODEL = f"{PREFIX}:current_chat_model"
