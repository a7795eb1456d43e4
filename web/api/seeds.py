"""Routes of the servers conveyor replaces, as thin aliases onto the job API.

The AI Model Server (seeds/002), the lightweight model server (seeds/000), the BitNet
server (seeds/001) and the llama.cpp server (seeds/003), whose POST /chat/completions lives
with the OpenAI-compatible API. Where two servers answered the same path, the one named in the
issue wins (GET /models is the lightweight server's).
"""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from shared.errors import NotFound
from shared.registry import ModelSpec
from web.app_services import services
from web.blocking import settle
from web.bodies import json_body
from web.protocols.openai import ChatCompletionRequest
from web.protocols.parsing import parse_model
from web.protocols.seeds import (
    BitNetGenerate,
    GenerateMedia,
    GeneratePrompt,
    SetModel,
    bitnet_answer,
    generate_media_answer,
    lightweight_answer,
    lightweight_models,
    memory_status,
    model_status,
    restore_cache_answer,
    set_model_answer,
)
from web.responses import json_response

bp = Blueprint("seeds", __name__)


def _spec(name: str | None) -> ModelSpec:
    svc = services()
    spec = svc.registry.get(name) if name else svc.catalog.default_model("chat")
    if spec is None:
        raise NotFound(
            f"model {name!r} is not in the registry"
            if name
            else "no default chat model in the registry",
            param="model",
            code="model_not_found",
        )
    return spec


def _run(req):
    svc = services()
    with svc.holds.hold("wait"):
        job = svc.jobs.submit(req, need_worker=True)
        return settle(svc.jobs, job, svc.settings.sync_wait_s)


@bp.get("/health")
def health():
    catalog = services().catalog
    loaded = catalog.loaded()
    current = catalog.default_model("chat")
    return jsonify(
        {
            "status": "healthy",
            "message": "conveyor is running",
            "model_loaded": bool(loaded),
            "current_model": current and current.id,
            "models_loaded": loaded,
        }
    )


@bp.get("/")
def index():
    loaded = services().catalog.loaded()
    return jsonify({"status": "running", "message": "conveyor is running", "models": loaded})


# the AI Model Server (seeds/002)
@bp.post("/generate/<path:model>")
def generate_with(model: str):
    req = parse_model(GenerateMedia, json_body())
    return jsonify(generate_media_answer(_run(req.to_job_request(_spec(model)))))


@bp.get("/admin/memory_status")
def memory():
    svc = services()
    return jsonify(memory_status(svc.fleet.workers(), svc.settings.worker_max_memory_mb))


@bp.get("/admin/model_status")
def models_status():
    svc = services()
    return jsonify(model_status(svc.catalog.models(), {s.id: s for s in svc.registry}))


@bp.post("/admin/emergency_cleanup")
def emergency_cleanup():
    svc = services()
    notified = svc.housekeeping.free_worker_memory()
    temp = svc.housekeeping.sweep_payloads().model_dump()
    return jsonify({"status": "success", "workers_notified": notified, "temp": temp})


@bp.get("/admin/temp_status")
def temp_status():
    return jsonify({"status": "success", **services().housekeeping.payload_usage().model_dump()})


@bp.post("/admin/cleanup_temp")
def cleanup_temp():
    return jsonify({"status": "success", **services().housekeeping.sweep_payloads().model_dump()})


# the lightweight model server (seeds/000)
@bp.get("/models")
def models():
    return jsonify(lightweight_models(services().catalog.models()))


@bp.post("/models/<path:name>/generate")
def generate_named(name: str):
    req = parse_model(GeneratePrompt, json_body())
    return jsonify(lightweight_answer(_run(req.to_job_request(_spec(name)))))


# the BitNet server (seeds/001); without `model`, the registry's default chat model
@bp.post("/generate")
def generate():
    req = parse_model(BitNetGenerate, json_body())
    return jsonify(bitnet_answer(_run(req.to_job_request(_spec(req.model)))))


@bp.get("/model_info")
def model_info():
    return json_response(services().catalog.card(_spec(request.args.get("model"))))


# the llama.cpp server (seeds/003)
@bp.post("/setModel")
def set_model():
    req = parse_model(SetModel, json_body())
    return jsonify(set_model_answer(services().catalog.select_chat_model(req.model_name), req))


@bp.post("/restore_cache")
def restore_cache():
    """Run the prompt for one token, so the model's prompt cache holds it."""
    req = parse_model(ChatCompletionRequest, json_body())
    req = req.model_copy(update={"max_completion_tokens": 1, "stream": False})
    job_req = req.to_job_request(_spec(req.model).id)
    return jsonify(restore_cache_answer(_run(job_req)))
