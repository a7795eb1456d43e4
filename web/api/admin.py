"""Operator views: worker memory, model status, payload store usage, cleanup actions."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

bp = Blueprint("admin", __name__)


def _services():
    return current_app.extensions["conveyor"]


@bp.get("/admin/memory")
def memory():
    workers = _services().fleet.workers()
    return jsonify(
        {
            "workers": [
                {
                    k: w.get(k)
                    for k in (
                        "worker",
                        "model",
                        "pid",
                        "hostname",
                        "jobs_done",
                        "current_job",
                        "memory",
                        "at",
                    )
                }
                for w in workers
            ]
        }
    )


@bp.get("/admin/models")
def models():
    svc = _services()
    out = []
    for model in svc.jobs.models():
        workers = svc.fleet.workers(model["id"])
        model["workers"] = [
            {
                k: w.get(k)
                for k in ("worker", "loaded", "load_seconds", "health", "jobs_done", "current_job")
            }
            for w in workers
        ]
        out.append(model)
    return jsonify({"models": out})


@bp.get("/admin/temp")
def temp():
    return jsonify(_services().jobs.payload_usage())


@bp.post("/admin/temp/cleanup")
def temp_cleanup():
    return jsonify(_services().jobs.sweep_payloads())


@bp.post("/admin/cleanup")
def cleanup():
    listeners = _services().fleet.broadcast("cleanup")
    return jsonify({"requested": True, "workers_notified": listeners})
