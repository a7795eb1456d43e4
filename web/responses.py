"""Answer with a protocol model: its JSON body, a status and headers."""

from __future__ import annotations

from collections.abc import Mapping

from flask import Response, jsonify
from pydantic import BaseModel


def json_response(
    body: BaseModel, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """Return a JSON response holding a protocol model (keys in the model's field order)."""
    resp = jsonify(body.model_dump(mode="json"))
    resp.status_code = status
    resp.headers.update(headers or {})
    return resp
