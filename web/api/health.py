"""Liveness, readiness and the model list."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from shared.errors import ServiceUnavailable

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    services = current_app.extensions["conveyor"]
    try:
        services.redis.ping()
    except Exception as exc:  # any failure to reach Redis means not ready
        raise ServiceUnavailable(f"Redis is not reachable: {exc}") from None
    return jsonify({"status": "ready", "redis": "ok"})


@bp.get("/v1/models")
def models():
    return jsonify({"object": "list", "data": current_app.extensions["conveyor"].jobs.models()})
