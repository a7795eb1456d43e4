"""The log formats: readable text by default, one JSON object per line with job fields."""

from __future__ import annotations

import io
import json
import logging

import pytest

from shared.config import Settings
from shared.logs import (
    FORMAT,
    FieldsFilter,
    JsonFormatter,
    _LineLogger,
    bind_log_fields,
    formatter,
    log_scope,
)


@pytest.fixture
def logged():
    """Return (logger, read) where read() gives the lines the logger wrote as JSON."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(FieldsFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("conveyor.test_logs")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)

    def read() -> list[dict]:
        lines = out.getvalue().splitlines()
        return [json.loads(line) for line in lines]

    yield logger, read
    logger.removeHandler(handler)


def test_text_is_the_default(monkeypatch):
    monkeypatch.delenv("CONVEYOR_LOG_FORMAT", raising=False)
    assert Settings().log_format == "text"
    assert formatter("text")._fmt == FORMAT
    monkeypatch.setenv("CONVEYOR_LOG_FORMAT", "xml")
    with pytest.raises(ValueError):
        Settings()


def test_a_line_in_the_house_style_carries_its_job_and_model(logged):
    logger, read = logged
    logger.info("job %s model %s: running (attempt %s)", "abc", "echo", 1)
    logger.warning("job %s lease renewal failed", "def")
    logger.info("no job here: %s", "x")
    first, second, third = read()
    assert first["message"] == "job abc model echo: running (attempt 1)"
    assert (first["job_id"], first["model"], first["level"]) == ("abc", "echo", "INFO")
    assert second["job_id"] == "def" and "model" not in second
    assert "job_id" not in third
    assert {"ts", "level", "logger", "pid", "message"} <= first.keys()


def test_scopes_and_extras(logged):
    logger, read = logged
    with log_scope(job_id="j1", model="m1"):
        logger.info("inside")
        with log_scope():
            bind_log_fields(job_id="j2")
            logger.info("nested")
        logger.info("extra wins", extra={"job_id": "j3", "attempt": 2})
    logger.info("outside")
    inside, nested, extra, outside = read()
    assert (inside["job_id"], inside["model"]) == ("j1", "m1")
    assert (nested["job_id"], nested["model"]) == ("j2", "m1")
    assert (extra["job_id"], extra["attempt"]) == ("j3", 2)
    assert "job_id" not in outside


def test_celery_lines_about_a_run_job_message_carry_the_job(logged):
    logger, read = logged
    data = {"id": "task-1", "name": "conveyor.run_job", "args": "['abc123']"}
    logger.info("Task %(name)s[%(id)s] received", data, extra={"data": data})
    other = {"id": "task-2", "name": "conveyor.deliver_webhook", "args": "['msg', 1]"}
    logger.info("Task %(name)s[%(id)s] received", other, extra={"data": other})
    run_job, webhook = read()
    assert run_job["job_id"] == "abc123" and run_job["message"].startswith("Task conveyor.run_job")
    assert "job_id" not in webhook


def test_one_line_per_record_even_with_tracebacks(logged):
    logger, read = logged
    try:
        raise ValueError("two\nlines")
    except ValueError:
        logger.exception("job %s model %s failed", "abc", "echo")
    (line,) = read()
    assert line["job_id"] == "abc" and "ValueError: two\nlines" in line["exc"]


def test_printed_lines_become_records(logged):
    logger, read = logged
    stream = _LineLogger(logger, io.StringIO())
    print("banner line one\n\nline two", file=stream, end="")
    stream.write(" continued\n")
    assert [r["message"] for r in read()] == ["banner line one", "line two continued"]
