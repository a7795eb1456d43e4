"""Liveness, readiness and the model list."""

from __future__ import annotations

from flask import Blueprint

from shared.errors import ServiceUnavailable
from web.app_services import services
from web.protocols.catalog import Liveness, ModelList, Readiness
from web.responses import json_response

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return json_response(Liveness())


@bp.get("/readyz")
def readyz():
    try:
        services().store.ping()
    except Exception as exc:  # any failure to reach Redis means not ready
        raise ServiceUnavailable(f"Redis is not reachable: {exc}") from None
    return json_response(Readiness())


@bp.get("/v1/models")
def models():
    return json_response(ModelList(data=services().catalog.models()))
