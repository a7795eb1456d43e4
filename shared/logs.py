"""Logging set-up shared by every component: readable text, or one JSON object per line.

CONVEYOR_LOG_FORMAT=json makes every record a JSON object on one line, with the job id and
model of the job it belongs to, from (strongest first) the record's own `extra`, the
fields bound for a job's scope (log_scope), the house style's "job %s model %s: ..."
message with its arguments, Celery's own lines about a run_job message (received,
succeeded, failed: the job id is the task's argument), and the process's fields (a model
worker's model).
"""

from __future__ import annotations

import ast
import io
import json
import logging
import re
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"
FORMATS = ("text", "json")
RUN_JOB = "conveyor.run_job"  # shared.celery_app.RUN_JOB, without importing Celery here
FIELDS = ("job_id", "model")
_JOB_MESSAGE = re.compile(r"job %s( model %s)?\b")
_JOB_PATH = re.compile(r"/v1/jobs/([0-9a-f]{32})\b")

_scope: ContextVar[dict[str, Any] | None] = ContextVar("conveyor_log_fields", default=None)
# Fields of the whole process (a model worker serves one model); logging is process-wide.
_process_fields: dict[str, Any] = {}
# Attributes every LogRecord has; anything else on a record came from `extra`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def setup_logging(
    level: str = "INFO", fmt: str = "text", *, capture_output: bool = False, **fields: Any
) -> None:
    """Configure the root logger once; later calls adjust the level and add fields.

    capture_output=True (command-line processes only) also turns what libraries print to
    stdout (Celery's banner and shutdown notices) and uncaught exceptions into records.
    fields (e.g. model=...) go on every record of this process.
    """
    _process_fields.update({k: v for k, v in fields.items() if v is not None})
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.addFilter(FieldsFilter())
        handler.setFormatter(formatter(fmt))
        root.addHandler(handler)
    root.setLevel(level.upper())
    if fmt == "json" and capture_output:
        _capture_output()


def formatter(fmt: str) -> logging.Formatter:
    """Return the formatter of a log format name ("text" or "json")."""
    return JsonFormatter() if fmt == "json" else logging.Formatter(FORMAT)


@contextmanager
def log_scope(**fields: Any) -> Iterator[None]:
    """Put fields (job_id=..., model=...) on every record logged inside the block."""
    token = _scope.set({**(_scope.get() or {}), **fields})
    try:
        yield
    finally:
        _scope.reset(token)


def bind_log_fields(**fields: Any) -> None:
    """Add fields to the current log_scope (once a job's id is known inside it).

    Outside a scope it does nothing: fields set there would stick to every later record of
    the thread, other jobs' included.
    """
    current = _scope.get()
    if current is not None:
        current.update(fields)


class FieldsFilter(logging.Filter):
    """Give each record the job id and model it belongs to, when known."""

    def filter(self, record: logging.LogRecord) -> bool:
        found = {
            **_process_fields,
            **_celery_job(record),
            **_named_job(record),
            **(_scope.get() or {}),
        }
        for name in FIELDS:
            if getattr(record, name, None) is None and found.get(name) is not None:
                setattr(record, name, found[name])
        return True


def _named_job(record: logging.LogRecord) -> dict[str, Any]:
    """Return the job of a line in the house style, "job %s model %s: ..." (or "job %s")."""
    match = _JOB_MESSAGE.match(str(record.msg))
    if not match or not isinstance(record.args, tuple) or not record.args:
        return {}
    found = {"job_id": str(record.args[0])}
    if match.group(1) and len(record.args) > 1:
        found["model"] = str(record.args[1])
    return found


def _celery_job(record: logging.LogRecord) -> dict[str, Any]:
    """Return the job id of Celery's lines about a run_job message (args repr "['<id>']")."""
    data = getattr(record, "data", None)
    if not isinstance(data, Mapping) or data.get("name") != RUN_JOB:
        return {}
    try:
        args = ast.literal_eval(str(data.get("args")))
        return {"job_id": str(args[0])}
    except (ValueError, SyntaxError, IndexError, TypeError):
        return {}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, pid, message, job fields, extras."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and value is not None:
                out[key] = value
        if record.name == "gunicorn.access" and isinstance(record.args, Mapping):
            out.update(_access_fields(record.args))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, default=str, ensure_ascii=False)


def _access_fields(atoms: Mapping) -> dict[str, Any]:
    """Return the fields of one gunicorn access line (its atoms, see gunicorn's docs)."""
    try:
        out = {
            "method": atoms["m"],
            "path": atoms["U"],
            "status": int(atoms["s"]),
            "duration_s": int(atoms["D"]) / 1e6,
            "remote": atoms["h"],
        }
    except (KeyError, TypeError, ValueError):
        return {}
    # The job a request was about: its route's id, or the job headers of its answer.
    match = _JOB_PATH.match(out["path"])
    job_id = match.group(1) if match else atoms.get("{x-conveyor-job-id}o")
    if job_id and job_id != "-":
        out["job_id"] = job_id
    model = atoms.get("{x-conveyor-model}o")
    if model and model != "-":
        out["model"] = model
    return out


class _LineLogger(io.TextIOBase):
    """A text stream whose every line becomes a record of a logger."""

    def __init__(self, logger: logging.Logger, real: Any) -> None:
        self._logger = logger
        self._real = real
        self._buffer = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self._buffer += text
            *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            if line.strip():
                self._logger.info("%s", line.rstrip())
        return len(text)

    def flush(self) -> None:
        with self._lock:
            line, self._buffer = self._buffer, ""
        if line.strip():
            self._logger.info("%s", line.rstrip())

    def fileno(self) -> int | None:
        # None, not the real descriptor: Celery's shutdown notice writes to the descriptor of
        # sys.__stdout__ when it has one (around any logging); it is logged below instead.
        return None

    def isatty(self) -> bool:
        return False


def _capture_output() -> None:
    if isinstance(sys.stdout, _LineLogger):
        return
    out = logging.getLogger("stdout")
    sys.stdout = sys.__stdout__ = _LineLogger(out, sys.__stdout__)
    logging.captureWarnings(True)

    def log_uncaught(kind, value, tb) -> None:
        logging.getLogger("conveyor").critical(
            "uncaught %s", kind.__name__, exc_info=(kind, value, tb)
        )

    sys.excepthook = log_uncaught
    threading.excepthook = lambda a: log_uncaught(a.exc_type, a.exc_value, a.exc_traceback)
    _celery_logging()


def _celery_logging() -> None:
    """Keep Celery off our handlers, and scope each run_job task's records to its job."""
    from celery.signals import setup_logging as celery_setup_logging
    from celery.signals import task_postrun, task_prerun, worker_shutting_down

    tokens: dict[str, Any] = {}

    def start(task_id=None, task=None, args=None, **_kwargs) -> None:
        if getattr(task, "name", None) == RUN_JOB and args:
            tokens[task_id] = _scope.set({**(_scope.get() or {}), "job_id": str(args[0])})

    def end(task_id=None, **_kwargs) -> None:
        token = tokens.pop(task_id, None)
        if token is not None:
            _scope.reset(token)

    # A setup_logging receiver makes Celery leave logging alone (no text handlers of its
    # own, no stdout redirection: stdout is ours already).
    def shutting_down(sig=None, how=None, **_kwargs) -> None:
        logging.getLogger("celery.apps.worker").info("worker: %s shutdown (%s)", how, sig)

    celery_setup_logging.connect(_keep_our_logging, weak=False)
    task_prerun.connect(start, weak=False)
    task_postrun.connect(end, weak=False)
    worker_shutting_down.connect(shutting_down, weak=False)


def _keep_our_logging(**_kwargs: Any) -> None:
    """Celery's setup_logging receiver: its presence makes Celery leave logging to us."""
