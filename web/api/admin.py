"""Operator views: worker memory, model status, payload store usage, cleanup actions."""

from __future__ import annotations

from flask import Blueprint

from web.app_services import services
from web.protocols.catalog import CleanupRequested, ModelStates
from web.responses import json_response

bp = Blueprint("admin", __name__)


@bp.get("/admin/memory")
def memory():
    return json_response(services().housekeeping.memory())


@bp.get("/admin/models")
def models():
    return json_response(ModelStates(models=services().catalog.states()))


@bp.get("/admin/temp")
def temp():
    return json_response(services().housekeeping.payload_usage())


@bp.post("/admin/temp/cleanup")
def temp_cleanup():
    return json_response(services().housekeeping.sweep_payloads())


@bp.post("/admin/cleanup")
def cleanup():
    notified = services().housekeeping.free_worker_memory()
    return json_response(CleanupRequested(workers_notified=notified))
