"""Routes of the servers conveyor replaces, as thin aliases onto the job API.

The AI Model Server (seeds/002), the lightweight model server (seeds/000), the BitNet
server (seeds/001) and the llama.cpp server (seeds/003), whose POST /chat/completions lives
with the OpenAI-compatible API. Where two servers answered the same path, the one named in the
issue wins (GET /models is the lightweight server's).
"""

from __future__ import annotations

from flask import Blueprint, request

from shared.errors import NotFound
from shared.registry import ModelSpec
from web.api import page
from web.app_services import services
from web.bodies import json_body
from web.protocols.openai import ChatCompletionRequest
from web.protocols.parsing import parse_model
from web.protocols.seed_replies import (
    BitNetAnswer,
    EmergencyCleanup,
    GenerateMediaAnswer,
    LightweightAnswer,
    LightweightModels,
    MemoryStatus,
    ModelStatus,
    RestoreCacheAnswer,
    Running,
    SeedHealth,
    SetModelAnswer,
    TempCleanup,
    TempStatus,
)
from web.protocols.seeds import BitNetGenerate, GenerateMedia, GeneratePrompt, SetModel
from web.responses import json_response
from web.serving.answers import answer

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


@bp.get("/health")
def health():
    catalog = services().catalog
    loaded = catalog.loaded()
    current = catalog.default_model("chat")
    return json_response(
        SeedHealth(
            model_loaded=bool(loaded), current_model=current and current.id, models_loaded=loaded
        )
    )


@bp.get("/")
def index():
    if page.wants_html():  # a browser: the page for people
        return page.page()
    return json_response(Running(models=services().catalog.loaded()))


# the AI Model Server (seeds/002)
@bp.post("/generate/<path:model>")
def generate_with(model: str):
    req = parse_model(GenerateMedia, json_body())
    return answer(req.to_job_request(_spec(model)), GenerateMediaAnswer.of)


@bp.get("/admin/memory_status")
def memory():
    svc = services()
    report = MemoryStatus.of(svc.fleet.workers(), svc.settings.worker_max_memory_mb)
    return json_response(report)


@bp.get("/admin/model_status")
def models_status():
    svc = services()
    return json_response(ModelStatus.of(svc.catalog.models(), {s.id: s for s in svc.registry}))


@bp.post("/admin/emergency_cleanup")
def emergency_cleanup():
    house = services().housekeeping
    notified = house.free_worker_memory()
    return json_response(EmergencyCleanup(workers_notified=notified, temp=house.sweep_payloads()))


@bp.get("/admin/temp_status")
def temp_status():
    return json_response(TempStatus.of(services().housekeeping.payload_usage()))


@bp.post("/admin/cleanup_temp")
def cleanup_temp():
    return json_response(TempCleanup.of(services().housekeeping.sweep_payloads()))


# the lightweight model server (seeds/000)
@bp.get("/models")
def models():
    return json_response(LightweightModels.of(services().catalog.models()))


@bp.post("/models/<path:name>/generate")
def generate_named(name: str):
    req = parse_model(GeneratePrompt, json_body())
    return answer(req.to_job_request(_spec(name)), LightweightAnswer.of)


# the BitNet server (seeds/001); without `model`, the registry's default chat model
@bp.post("/generate")
def generate():
    req = parse_model(BitNetGenerate, json_body())
    return answer(req.to_job_request(_spec(req.model)), BitNetAnswer.of)


@bp.get("/model_info")
def model_info():
    return json_response(services().catalog.card(_spec(request.args.get("model"))))


# the llama.cpp server (seeds/003)
@bp.post("/setModel")
def set_model():
    req = parse_model(SetModel, json_body())
    spec = services().catalog.select_chat_model(req.model_name)
    return json_response(SetModelAnswer.of(spec, req))


@bp.post("/restore_cache")
def restore_cache():
    """Run the prompt for one token, so the model's prompt cache holds it."""
    req = parse_model(ChatCompletionRequest, json_body())
    req = req.model_copy(update={"max_completion_tokens": 1, "stream": False})
    return answer(req.to_job_request(_spec(req.model).id), RestoreCacheAnswer.of)
