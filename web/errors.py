"""One place that turns every failure into the JSON error envelope."""

from __future__ import annotations

import logging

import redis
from flask import Flask
from werkzeug.exceptions import HTTPException

from shared.errors import ConveyorError
from web.protocols.jobs import ErrorDetail, ErrorEnvelope
from web.responses import json_response

log = logging.getLogger(__name__)

_HTTP_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def envelope(status: int, type_: str, message: str, param=None, code=None, headers=None):
    """Return a Flask response carrying the error envelope."""
    detail = ErrorDetail(type=type_, message=message, param=param, code=code)
    return json_response(ErrorEnvelope(error=detail), status, headers)


def register_error_handlers(app: Flask) -> None:
    """Install the handlers that write the envelope for every error."""

    @app.errorhandler(ConveyorError)
    def _conveyor(exc: ConveyorError):
        return envelope(exc.status_code, exc.type, exc.message, exc.param, exc.code, exc.headers)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        status = exc.code or 500
        message = exc.description or exc.name
        # Keep what the error says in its headers (a 405's Allow), not its HTML's type.
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        return envelope(status, _HTTP_TYPES.get(status, "http_error"), message, headers=headers)

    @app.errorhandler(redis.exceptions.ConnectionError)
    @app.errorhandler(redis.exceptions.TimeoutError)
    def _redis_down(exc: Exception):
        log.error("redis unavailable: %s", exc)
        return envelope(
            503,
            "service_unavailable",
            "the job store (Redis) is unavailable",
            headers={"Retry-After": "2"},
        )

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return envelope(500, "internal_error", "internal error; see the server log")
