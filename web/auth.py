"""Optional bearer-key authentication for every route but health checks, the page and the
API's contract (/openapi.json, /docs), which hold no data.

/metrics is not open: it tells how busy each model is, which models exist and what fails;
Prometheus sends a key like any client (see README "Metrics").
"""

from __future__ import annotations

import hmac

from flask import Flask, request

from shared.config import Settings
from shared.errors import Unauthorized
from web.api import docs, page

OPEN_PATHS = ("/healthz", "/readyz", "/health", *docs.OPEN_PATHS, *page.OPEN_FILES)


def install_auth(app: Flask, settings: Settings) -> None:
    """Require `Authorization: Bearer <key>` when CONVEYOR_API_KEYS is set."""
    keys = [k.encode() for k in settings.api_keys]
    if not keys:
        return

    @app.before_request
    def _check_key():
        # The page and the docs ask for a key themselves.
        if request.path in OPEN_PATHS or page.is_public():
            return None
        header = request.headers.get("Authorization", "")
        given = header[7:].strip().encode() if header.lower().startswith("bearer ") else b""
        if not given:
            given = request.headers.get("X-API-Key", "").encode()
        if not any(hmac.compare_digest(given, k) for k in keys):
            raise Unauthorized("missing or invalid API key (send Authorization: Bearer <key>)")
        return None
