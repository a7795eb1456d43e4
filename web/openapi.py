"""The OpenAPI 3.1 document of the HTTP API, generated from the protocol models.

Every body is a pydantic model in web/protocols/; this module only says which route takes
and answers which model. OpenAPI 3.1 schemas are JSON Schema, which is what pydantic's
model_json_schema writes, so the models' schemas go into components/schemas as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from shared.config import Settings
from shared.jobs import JobStatus
from web.protocols import catalog as cat
from web.protocols import jobs as jp
from web.protocols import openai as oa
from web.protocols import openai_replies as rp
from web.protocols import seed_replies as sr
from web.protocols import seeds as sd

REF = "#/components/schemas/{model}"
WITH_MODEL = ("JobRequest", "ChatCompletionRequest", "CompletionRequest", "EmbeddingRequest")
OPEN = "open"  # a route that answers without a key


@dataclass
class Op:
    """One operation: what it takes and what it answers."""

    method: str
    path: str
    summary: str
    tag: str
    body: type[BaseModel] | dict[str, Any] | None = None
    ok: dict[int, Any] = field(default_factory=dict)  # status -> model, or {media: schema}
    errors: tuple[int, ...] = ()
    params: list[dict[str, Any]] = field(default_factory=list)
    openai: bool = False  # errors in OpenAI's shape
    security: str | None = None
    description: str | None = None


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": description,
    }


PREFER = {
    "name": "Prefer",
    "in": "header",
    "schema": {"type": "string", "examples": ["wait=30"]},
    "description": "`wait=N`: hold the request until the job ends, at most N (<= 60) seconds.",
}
JOB_ID = _path_param("job_id", "The job's id.")
# Server-Sent Events: the schema is that of one event (its id, event and data fields).
SSE = {
    "text/event-stream": {
        "schema": {
            "type": "object",
            "required": ["data"],
            "properties": {
                "id": {"type": "string", "pattern": r"^\d+-\d+$"},
                "event": {"type": "string", "description": "status, token, output, ..."},
                "data": {"type": "string", "contentMediaType": "application/json"},
            },
        }
    }
}


def _openai_sse(chunk: type[BaseModel]) -> dict[str, Any]:
    """Return OpenAI's stream: `data:`-only events holding a chunk, then `data: [DONE]`."""
    data = {"type": "string", "description": f"A {chunk.__name__} as JSON, or [DONE]."}
    schema = {"type": "object", "required": ["data"], "properties": {"data": data}}
    return {"text/event-stream": {"schema": schema}}


TEXT = {"text/plain": {"schema": {"type": "string"}}}
SUBMIT_ERRORS = (400, 401, 404, 413, 415, 422, 429, 503)
SYNC_ERRORS = (400, 401, 404, 409, 413, 429, 500, 502, 503, 504)
MEDIA_PART = {"type": "string", "format": "binary"}
SUBMIT_FORM = {
    "type": "object",
    "required": ["request"],
    "properties": {
        "request": {
            "type": "string",
            "minLength": 2,
            "contentMediaType": "application/json",
            "description": "The JSON body (JobRequest).",
        },
        "image": MEDIA_PART,
        "images": {"type": "array", "items": MEDIA_PART},
        "audio": MEDIA_PART,
        "video": MEDIA_PART,
    },
}
# Form fields are text: no nulls, and only the values conveyor honours.
TRANSCRIBE_FORM = {
    "type": "object",
    "required": ["file", "model"],
    "properties": {
        "file": {**MEDIA_PART, "description": "The audio: wav, flac, ogg or mp3."},
        "model": {"type": "string", "minLength": 1},
        "language": {"type": "string"},
        "prompt": {"type": "string"},
        "response_format": {"type": "string", "enum": ["json", "text", "verbose_json"]},
        "temperature": {"type": "number", "const": 0},
    },
}


def operations() -> list[Op]:
    """Return every documented operation."""
    return [
        # the job API
        Op("post", "/v1/jobs", "Submit a job", "jobs",
           body={"application/json": jp.JobRequest, "multipart/form-data": SUBMIT_FORM},
           ok={202: jp.JobDetail, 200: jp.JobDetail}, errors=SUBMIT_ERRORS, params=[PREFER],
           description="Answers 202 with the queued job and a Location header; with "
           "`Prefer: wait=N`, 200 once it ended within N seconds."),
        Op("get", "/v1/jobs", "List recent jobs, newest first", "jobs", ok={200: jp.JobList},
           errors=(401, 422), params=[
               {"name": "status", "in": "query",
                "schema": {"type": "string", "enum": [s.value for s in JobStatus]}},
               {"name": "model", "in": "query", "schema": {"type": "string"}},
               {"name": "limit", "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 20}},
           ]),
        Op("get", "/v1/jobs/{job_id}", "Get a job", "jobs", ok={200: jp.JobDetail},
           errors=(401, 404, 503), params=[JOB_ID, PREFER]),
        Op("post", "/v1/jobs/{job_id}/cancel", "Cancel a job", "jobs", ok={200: jp.JobDetail},
           errors=(401, 404), params=[JOB_ID],
           description="A queued job never runs; a running one stops at its next step."),
        Op("get", "/v1/jobs/{job_id}/events", "Follow a job's events (SSE)", "jobs",
           ok={200: SSE}, errors=(401, 404, 422, 503), params=[
               JOB_ID,
               {"name": "Last-Event-ID", "in": "header",
                "schema": {"type": "string", "pattern": r"^\d+-\d+$"}},
               {"name": "last_event_id", "in": "query",
                "schema": {"type": "string", "pattern": r"^\d+-\d+$"}},
           ], description="Events `status`, `token`, `output`, ... each as `id`, `event` and "
           "JSON `data`; replayed from the start or after Last-Event-ID, then live until the "
           "job ends. `: heartbeat` comments every CONVEYOR_SSE_HEARTBEAT_S while idle."),
        Op("get", "/v1/models", "Models with live facts", "models", ok={200: cat.ModelList},
           errors=(401,)),
        # OpenAI-compatible
        Op("post", "/v1/chat/completions", "Chat completion (OpenAI)", "openai",
           body=oa.ChatCompletionRequest,
           ok={200: {"application/json": rp.ChatCompletion,
                     **_openai_sse(rp.ChatCompletionChunk)}}, errors=SYNC_ERRORS,
           openai=True, description="`stream: true` answers chat.completion.chunk events "
           "(ChatCompletionChunk) ending in `data: [DONE]`."),
        Op("post", "/v1/completions", "Text completion (OpenAI)", "openai",
           body=oa.CompletionRequest,
           ok={200: {"application/json": rp.Completion, **_openai_sse(rp.CompletionChunk)}},
           errors=SYNC_ERRORS,
           openai=True, description="`stream: true` answers CompletionChunk events."),
        Op("post", "/v1/embeddings", "Embeddings (OpenAI)", "openai", body=oa.EmbeddingRequest,
           ok={200: rp.EmbeddingList}, errors=SYNC_ERRORS, openai=True),
        Op("post", "/v1/audio/transcriptions", "Transcription (OpenAI)", "openai",
           body={"multipart/form-data": TRANSCRIBE_FORM},
           ok={200: {"application/json": rp.Transcription | rp.VerboseTranscription, **TEXT}},
           errors=SYNC_ERRORS, openai=True),
        Op("get", "/v1/models/{model_id}", "One model (OpenAI)", "openai",
           ok={200: cat.ModelCard}, errors=(401, 404), openai=True,
           params=[_path_param("model_id", "Registry id or alias.")]),
        # operations
        Op("get", "/healthz", "Liveness", "health", ok={200: cat.Liveness}, security=OPEN),
        Op("get", "/readyz", "Readiness: Redis answers", "health", ok={200: cat.Readiness},
           errors=(503,), security=OPEN),
        Op("get", "/metrics", "Prometheus metrics of the whole fleet", "health",
           ok={200: TEXT}, errors=(401,)),
        Op("get", "/admin/memory", "Memory of each worker", "admin", ok={200: cat.MemoryReport},
           errors=(401,)),
        Op("get", "/admin/models", "Models and their workers", "admin",
           ok={200: cat.ModelStates}, errors=(401,)),
        Op("get", "/admin/temp", "Payload store usage", "admin", ok={200: cat.PayloadUsage},
           errors=(401,)),
        Op("post", "/admin/temp/cleanup", "Sweep the payload store now", "admin",
           ok={200: cat.PayloadSweep}, errors=(401,)),
        Op("post", "/admin/cleanup", "Workers free cached memory now", "admin",
           ok={200: cat.CleanupRequested}, errors=(401,)),
        *seed_operations(),
        Op("get", "/openapi.json", "This document", "docs",
           ok={200: {"application/json": {"type": "object"}}}, security=OPEN),
        Op("get", "/docs", "This document, browsable (Swagger UI)", "docs",
           ok={200: {"text/html": {"schema": {"type": "string"}}}}, security=OPEN),
    ]  # fmt: skip


def seed_operations() -> list[Op]:
    """Return the routes of the servers conveyor replaces (README), each a job too."""
    model = _path_param("model", "Registry id or alias (a hub name may hold a slash).")
    return [
        Op("get", "/", "Running models (a browser gets the page)", "seeds",
           ok={200: {"application/json": sr.Running, "text/html": {"schema": {"type": "string"}}}},
           errors=(401,)),
        Op("get", "/health", "Health, as the AI Model Server answered it", "seeds",
           ok={200: sr.SeedHealth}, security=OPEN),
        Op("post", "/generate/{model}", "Generate with a model (AI Model Server)", "seeds",
           body=sd.GenerateMedia, ok={200: sr.GenerateMediaAnswer}, errors=SYNC_ERRORS + (422,),
           params=[model]),
        Op("get", "/admin/memory_status", "Memory per worker (AI Model Server)", "seeds",
           ok={200: sr.MemoryStatus}, errors=(401,)),
        Op("get", "/admin/model_status", "Models and aliases (AI Model Server)", "seeds",
           ok={200: sr.ModelStatus}, errors=(401,)),
        Op("post", "/admin/emergency_cleanup", "Free memory, sweep payloads", "seeds",
           ok={200: sr.EmergencyCleanup}, errors=(401,)),
        Op("get", "/admin/temp_status", "Payload store usage (AI Model Server)", "seeds",
           ok={200: sr.TempStatus}, errors=(401,)),
        Op("post", "/admin/cleanup_temp", "Sweep the payload store (AI Model Server)", "seeds",
           ok={200: sr.TempCleanup}, errors=(401,)),
        Op("get", "/models", "Models (lightweight server)", "seeds",
           ok={200: sr.LightweightModels}, errors=(401,)),
        Op("post", "/models/{name}/generate", "Generate (lightweight server)", "seeds",
           body=sd.GeneratePrompt, ok={200: sr.LightweightAnswer},
           errors=SYNC_ERRORS + (422,), params=[_path_param("name", "Registry id or alias.")]),
        Op("post", "/generate", "Generate (BitNet server; default chat model)", "seeds",
           body=sd.BitNetGenerate, ok={200: sr.BitNetAnswer}, errors=SYNC_ERRORS + (422,)),
        Op("get", "/model_info", "One model (BitNet server; default chat model)", "seeds",
           ok={200: cat.ModelCard}, errors=(401, 404),
           params=[{"name": "model", "in": "query", "schema": {"type": "string"}}]),
        Op("post", "/chat/completions", "Chat completion (llama.cpp server)", "seeds",
           body=oa.ChatCompletionRequest,
           ok={200: {"application/json": rp.ChatCompletion,
                     **_openai_sse(rp.ChatCompletionChunk)}}, errors=SYNC_ERRORS, openai=True),
        Op("post", "/setModel", "Choose the default chat model (llama.cpp server)", "seeds",
           body=sd.SetModel, ok={200: sr.SetModelAnswer}, errors=(400, 401, 404, 409, 422)),
        Op("post", "/restore_cache", "Warm the prompt cache (llama.cpp server)", "seeds",
           body=oa.ChatCompletionRequest, ok={200: sr.RestoreCacheAnswer},
           errors=SYNC_ERRORS + (422,)),
    ]  # fmt: skip


ERROR_WORDS = {
    400: "Malformed request (bad JSON, unknown or invalid field)",
    401: "Missing or invalid API key",
    404: "Unknown job or model",
    409: "The job was canceled",
    413: "Request or media too large",
    415: "Wrong content type",
    422: "Invalid value or media",
    429: "The model's queue is full (Retry-After)",
    500: "Internal error, or the job failed",
    502: "The worker running the job was lost",
    503: "No worker, Redis or the broker unavailable, or too many held requests (Retry-After)",
    504: "The job did not finish in time",
}


class OpenAPIDocument:
    """Build the document once per app: the models' schemas and every operation."""

    def __init__(self, settings: Settings, version: str, model_ids: list[str]) -> None:
        self.settings = settings
        self.version = version
        self.model_ids = model_ids  # the registry's, shown as examples of `model`
        self._doc: dict[str, Any] | None = None

    def document(self) -> dict[str, Any]:
        """Return the OpenAPI 3.1 document (built on first use)."""
        if self._doc is None:
            self._doc = self._build()
        return self._doc

    def _build(self) -> dict[str, Any]:
        ops = operations()
        models = _models(ops)
        refs, defs = models_json_schema(
            [(m, "validation") for m in models], ref_template=REF, title="conveyor"
        )
        ref = {m: refs[(m, "validation")] for m in models}
        schemas = defs.get("$defs", {})
        for name in WITH_MODEL:
            schemas[name]["properties"]["model"]["examples"] = self.model_ids
        paths: dict[str, dict[str, Any]] = {}
        for op in ops:
            paths.setdefault(op.path, {})[op.method] = self._operation(op, ref)
        return {
            "openapi": "3.1.0",
            "info": {
                "title": "conveyor",
                "version": self.version,
                "description": "Jobs over HTTP, their events, the OpenAI-compatible API and "
                "the operator views. Every error answers a JSON envelope.",
            },
            "servers": [{"url": "/"}],
            "tags": [
                {"name": t}
                for t in ("jobs", "models", "openai", "health", "admin", "seeds", "docs")
            ],
            "paths": paths,
            "components": {
                "schemas": schemas,
                "securitySchemes": {
                    "bearer": {
                        "type": "http",
                        "scheme": "bearer",
                        "description": "A key of CONVEYOR_API_KEYS (when that is set).",
                    },
                    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                },
            },
            "security": self._security(),
        }

    def _security(self) -> list[dict[str, list]]:
        """Keys are required only when CONVEYOR_API_KEYS is set; `{}` makes them optional."""
        schemes: list[dict[str, list]] = [{"bearer": []}, {"apiKeyHeader": []}]
        return schemes if self.settings.api_keys else [{}, *schemes]

    def _operation(self, op: Op, ref: dict[type[BaseModel], dict]) -> dict[str, Any]:
        out: dict[str, Any] = {"summary": op.summary, "tags": [op.tag]}
        out["operationId"] = f"{op.method}_{op.path.strip('/').replace('/', '_')}".replace(
            "{", ""
        ).replace("}", "")
        if op.description:
            out["description"] = op.description
        if op.params:
            out["parameters"] = op.params
        if op.body is not None:
            out["requestBody"] = {"required": True, "content": _content(op.body, ref)}
        responses: dict[str, Any] = {}
        for status, what in op.ok.items():
            responses[str(status)] = {"description": "OK", "content": _content(what, ref)}
        error = ref[rp.OpenAIError if op.openai else jp.ErrorEnvelope]
        for status in op.errors:
            responses[str(status)] = {
                "description": ERROR_WORDS[status],
                "content": {"application/json": {"schema": error}},
            }
        # Whatever else goes wrong (a request past the size limit, a method not allowed...)
        # still answers the envelope.
        responses["default"] = {
            "description": "Any other error",
            "content": {"application/json": {"schema": error}},
        }
        out["responses"] = responses
        if op.security == OPEN:
            out["security"] = [{}]
        return out


def _content(what: Any, ref: dict[type[BaseModel], dict]) -> dict[str, Any]:
    """Return an OpenAPI content map for a model, a {media type: model or schema} map."""
    if not isinstance(what, dict):
        what = {"application/json": what}
    content = {}
    for media, item in what.items():
        if isinstance(item, dict) and "schema" in item:
            content[media] = item
        else:
            content[media] = {"schema": _schema(item, ref)}
    return content


def _schema(item: Any, ref: dict[type[BaseModel], dict]) -> dict[str, Any]:
    if isinstance(item, type) and issubclass(item, BaseModel):
        return ref[item]
    if isinstance(item, dict):
        return item
    return {"anyOf": [ref[m] for m in item.__args__]}  # a union of models


def _models(ops: list[Op]) -> list[type[BaseModel]]:
    """Return every model the operations name, once each, in order."""
    found: list[type[BaseModel]] = [jp.ErrorEnvelope, rp.OpenAIError]
    for op in ops:
        for what in [op.body, *op.ok.values()]:
            items = what.values() if isinstance(what, dict) else [what]
            for item in items:
                members = getattr(item, "__args__", None) or [item]
                for m in members:
                    if isinstance(m, type) and issubclass(m, BaseModel) and m not in found:
                        found.append(m)
    found += [m for m in (rp.ChatCompletionChunk, rp.CompletionChunk) if m not in found]
    return found
