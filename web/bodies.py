"""Read request bodies: JSON, or multipart with a `request` JSON part and file parts."""

from __future__ import annotations

import json
from typing import Any

from flask import request

from shared.errors import BadRequest, UnsupportedMediaType


def json_body() -> Any:
    """Return the parsed JSON body.

    :raises UnsupportedMediaType: when the body is not JSON. :raises BadRequest: bad JSON.
    """
    if not request.is_json:
        raise UnsupportedMediaType(
            f"expected Content-Type application/json, got {request.mimetype or 'none'}"
        )
    raw = request.get_data(cache=True)
    try:
        return json.loads(raw or b"")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


def submission() -> tuple[Any, dict[str, list[bytes]]]:
    """Return (body, files) for a job submit, JSON or multipart/form-data.

    :raises UnsupportedMediaType: other content types. :raises BadRequest: bad JSON.
    """
    if request.mimetype != "multipart/form-data":
        return json_body(), {}
    part = request.form.get("request")
    if part is None and "request" in request.files:
        part = request.files["request"].read().decode("utf-8", "replace")
    if part is None:
        raise BadRequest(
            "multipart submit needs a 'request' part holding the JSON body", param="request"
        )
    try:
        body = json.loads(part)
    except ValueError as exc:
        raise BadRequest(f"the 'request' part is not valid JSON: {exc}", param="request") from None
    files = {
        name: [f.read() for f in request.files.getlist(name)]
        for name in request.files
        if name != "request"
    }
    return body, files
