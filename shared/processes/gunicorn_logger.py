"""gunicorn's own lines (its arbiter, workers and access log) in conveyor's log format."""

from __future__ import annotations

from gunicorn.glogging import Logger

from shared.config import Settings
from shared.logs import FieldsFilter, formatter


class GunicornLogger(Logger):
    """gunicorn's logger, formatting as CONVEYOR_LOG_FORMAT says (JSON: one object a line,
    access lines with method, path, status and duration as fields)."""

    def _set_handler(self, log, output, fmt, stream=None):
        log_format = Settings().log_format
        if log_format == "json":
            fmt = formatter(log_format)
        super()._set_handler(log, output, fmt, stream)
        for handler in log.handlers:
            if getattr(handler, "_gunicorn", False) and not any(
                isinstance(f, FieldsFilter) for f in handler.filters
            ):
                handler.addFilter(FieldsFilter())
