"""Real models through the transformers backends: MiniLM embeddings (sentence-transformers)
and SmolLM2-135M-Instruct loaded by transformers from its GGUF file."""

from __future__ import annotations

import math

import pytest
import redis
import yaml

from shared.config import DEFAULT_REGISTRY
from shared.store.fleet import Fleet
from shared.store.jobs import JobStore
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(600)
TERMINAL = ("succeeded", "failed", "canceled")


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """The default registry's two models, and MiniLM once more at 4-bit NF4."""
    default = yaml.safe_load(DEFAULT_REGISTRY.read_text())["models"]
    entries = [m for m in default if m["id"] in ("minilm", "smollm2-135m-hf")]
    minilm = next(m for m in entries if m["id"] == "minilm")
    entries.append({**minilm, "id": "minilm-nf4", "quantization": "nf4"})
    path = tmp_path_factory.mktemp("hf-registry") / "models.yaml"
    path.write_text(yaml.safe_dump({"models": entries}))
    return path


@pytest.fixture(scope="module")
def client(registry, make_settings, start_worker, make_app):
    settings = make_settings(registry=registry)
    workers = [
        start_worker(settings, m, wait=False) for m in ("minilm", "minilm-nf4", "smollm2-135m-hf")
    ]
    fleet = Fleet(redis.Redis.from_url(settings.redis_url, decode_responses=True))
    for w in workers:

        def ready(w=w):
            assert w.proc.poll() is None, f"worker {w.model} exited:\n{w.tail()}"
            return any(
                f.get("loaded") and f.get("pid") in w.pool_pids() for f in fleet.workers(w.model)
            )

        wait_for(ready, 300, what=f"worker {w.model}")
    app = make_app(settings)
    app.conveyor_store = JobStore(
        redis.Redis.from_url(settings.redis_url, decode_responses=True), ttl_s=600
    )
    return app.test_client()


def submit(client, model, input, task=None):
    body = {"model": model, "input": input, **({"task": task} if task else {})}
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["id"]


def finish(client, job_id, timeout=180):
    def ended():
        rec = client.get(f"/v1/jobs/{job_id}").get_json()
        return rec if rec["status"] in TERMINAL else None

    return wait_for(ended, timeout, what=f"job {job_id}")


def run(client, model, input, task=None):
    rec = finish(client, submit(client, model, input, task))
    assert rec["status"] == "succeeded", rec
    return rec


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


@pytest.mark.parametrize("model", ["minilm", "minilm-nf4"])
def test_minilm_paraphrase_is_closer_than_an_unrelated_sentence(client, model):
    rec = run(
        client,
        model,
        {
            "texts": [
                "A man is playing a guitar on stage.",
                "Someone performs music with a guitar in front of an audience.",
                "The central bank raised interest rates by half a point.",
            ]
        },
    )
    out = rec["output"]
    assert out["dimensions"] == 384 and len(out["embeddings"]) == 3
    a, b, c = out["embeddings"]
    assert all(len(v) == 384 for v in (a, b, c))
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3 for v in (a, b, c))
    para, unrelated = cosine(a, b), cosine(a, c)
    assert para > 0.5 and para > unrelated + 0.3, (para, unrelated)
    assert rec["metrics"]["prompt_tokens"] > 20


def test_quantized_minilm_reports_its_quantization(client):
    models = {m["id"]: m for m in client.get("/admin/models").get_json()["models"]}
    assert models["minilm-nf4"]["workers"][0]["health"]["quantization"] == "nf4"
    assert models["minilm"]["workers"][0]["health"]["dimensions"] == 384


def test_minilm_single_text_and_batches_agree(client):
    one = run(client, "minilm", {"text": "hello world"})["output"]["embeddings"][0]
    many = run(client, "minilm", {"texts": ["x"] * 40 + ["hello world"]})["output"]
    assert cosine(one, many["embeddings"][-1]) > 0.9999


def test_smollm2_via_transformers_gguf_answers_and_streams(client):
    rec = run(
        client,
        "smollm2-135m-hf",
        {"prompt": "What is the capital of France?", "max_tokens": 24, "temperature": 0},
        task="chat",
    )
    assert "Paris" in rec["output"]["text"]
    assert rec["output"]["finish_reason"] in ("stop", "length")
    assert rec["metrics"]["prompt_tokens"] > 5
    assert 0 < rec["metrics"]["completion_tokens"] <= 24
    tokens = [
        d["text"]
        for _, kind, d in client.application.conveyor_store.read_events(rec["id"])
        if kind == "token"
    ]
    assert len(tokens) > 1  # streamed piece by piece, not in one lump
    assert "".join(tokens).strip() == rec["output"]["text"].strip()


def test_smollm2_sampling_fields_and_stop_strings(client):
    rec = run(
        client,
        "smollm2-135m-hf",
        {
            "messages": [
                {"role": "system", "content": "You list things, one per line."},
                {"role": "user", "content": "List three fruits."},
            ],
            "max_tokens": 40,
            "temperature": 0.7,
            "top_p": 0.9,
            "top_k": 20,
            "seed": 3,
            "repeat_penalty": 1.1,
            "stop": ["\n"],
        },
        task="chat",
    )
    assert "\n" not in rec["output"]["text"]
    assert rec["output"]["finish_reason"] == "stop"
    again = run(
        client,
        "smollm2-135m-hf",
        {
            "messages": [
                {"role": "system", "content": "You list things, one per line."},
                {"role": "user", "content": "List three fruits."},
            ],
            "max_tokens": 40,
            "temperature": 0.7,
            "top_p": 0.9,
            "top_k": 20,
            "seed": 3,
            "repeat_penalty": 1.1,
            "stop": ["\n"],
        },
        task="chat",
    )
    assert again["output"]["text"] == rec["output"]["text"]  # same seed, same sample


def test_smollm2_completion(client):
    rec = run(
        client,
        "smollm2-135m-hf",
        {"prompt": "One, two, three,", "max_tokens": 6, "temperature": 0},
        task="complete",
    )
    assert rec["output"]["text"] and rec["metrics"]["completion_tokens"] <= 6


def test_cancel_stops_transformers_generation_between_tokens(client):
    job_id = submit(
        client,
        "smollm2-135m-hf",
        {
            "prompt": "Write a very long story about a dragon.",
            "max_tokens": 800,
            "temperature": 0.8,
        },
        task="chat",
    )
    store = client.application.conveyor_store
    wait_for(
        lambda: any(kind == "token" for _, kind, _ in store.read_events(job_id)),
        120,
        interval=0.05,
        what="first token",
    )
    client.post(f"/v1/jobs/{job_id}/cancel")
    rec = finish(client, job_id, timeout=30)
    assert rec["status"] == "canceled"
    assert rec["output"]["finish_reason"] == "canceled"
    assert 0 < rec["metrics"]["completion_tokens"] < 800
    assert rec["output"]["text"]


def test_multimodal_parts_to_a_text_model_fail_clearly(client):
    import base64

    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode()
    rec = finish(
        client, submit(client, "smollm2-135m-hf", {"prompt": "hi", "image": png}, task="chat")
    )
    assert rec["status"] == "failed" and rec["error"]["type"] == "invalid_input"
    assert "takes text only" in rec["error"]["message"]


def test_smollm2_concurrent_greedy_chats_share_one_continuous_batch(client):
    """Four chats at once on one worker (max_concurrency 8): each answers as it does alone,
    and the worker's facts show they ran inside transformers' continuous batch."""
    questions = [
        "What is the capital of France?",
        "Name a primary color.",
        "What is 2 + 2?",
        "Say hello in Spanish.",
    ]

    def body(q):
        return {"prompt": q, "max_tokens": 16, "temperature": 0}

    alone = [run(client, "smollm2-135m-hf", body(q), task="chat")["output"] for q in questions]
    ids = [submit(client, "smollm2-135m-hf", body(q), task="chat") for q in questions]
    together = [finish(client, job_id) for job_id in ids]
    assert [r["status"] for r in together] == ["succeeded"] * 4, together
    assert [r["output"] for r in together] == alone
    assert "Paris" in together[0]["output"]["text"]

    def in_batch():
        models = {m["id"]: m for m in client.get("/admin/models").get_json()["models"]}
        cb = models["smollm2-135m-hf"]["workers"][0]["health"]["continuous_batching"]
        return cb["jobs_in_batch"] >= 8 and cb

    wait_for(in_batch, 15, what="the worker's facts to count the 8 jobs run in the batch")
