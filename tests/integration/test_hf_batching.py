"""Batching through the transformers backends, jobs on real threads as a worker runs them.

Real all-MiniLM-L6-v2 for embeddings, tiny random-weight checkpoints (tiny_models.py)
for the classifier, Whisper, BLIP VQA and a causal LM. Each job's output must be the same
whether it ran alone or inside a batch, and the batcher's counters must show that the
batch was really shared. The end of the module runs MiniLM through a real worker.
"""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
import soundfile
import yaml
from PIL import Image

from shared.config import DEFAULT_REGISTRY, Settings
from shared.errors import InputRejected
from shared.inputs import ChatInput, ClassifyInput, EmbedInput, TranscribeInput, VqaInput
from shared.registry import ModelSpec
from shared.store.fleet import Fleet
from tests.conftest import on_threads, wait_for
from tests.integration.tiny_models import BUILDERS
from workers.backends import backend_class
from workers.backends.base import JobContext

pytestmark = pytest.mark.timeout(600)
CLIENTS = 32


class Media:
    """The media store a JobContext reads: refs to bytes."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def add(self, name: str, data: bytes, media_type: str) -> dict:
        self.blobs[name] = data
        return {"ref": name, "media_type": media_type, "bytes": len(data)}


MEDIA = Media()


def context(job_id: str, stop=lambda: False, events=None) -> JobContext:
    return JobContext(
        job_id,
        read_media=MEDIA.blobs.__getitem__,
        emit=lambda event, data: events.append((event, data)) if events is not None else None,
        stop_requested=stop,
        deadline=None,
        check_interval_s=0.01,
    )


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    names = ("tiny-bert-classifier", "tiny-whisper", "tiny-blip-vqa", "tiny-qwen2-lm")
    return {name: BUILDERS[name](root / name) for name in names}


@pytest.fixture
def loaded():
    backends = []

    def load(spec: ModelSpec):
        backend = backend_class(spec.backend)(spec, Settings())
        backend.load()
        backends.append(backend)
        return backend

    yield load
    for b in backends:
        b.close()


def default_spec(model_id: str) -> ModelSpec:
    entries = yaml.safe_load(DEFAULT_REGISTRY.read_text())["models"]
    return ModelSpec(**next(m for m in entries if m["id"] == model_id))


# encoders


def test_minilm_32_concurrent_jobs_match_one_at_a_time(loaded):
    backend = loaded(default_spec("minilm"))
    assert backend.max_concurrency >= CLIENTS
    texts = [f"sentence {i}: the {'quick ' * (i % 5)}brown fox" for i in range(CLIENTS)]
    alone = [
        backend.run("embed", EmbedInput(text=t), context(f"a{i}")) for i, t in enumerate(texts)
    ]
    before = backend.batcher.describe()
    together, errors = on_threads(
        lambda i: backend.run("embed", EmbedInput(text=texts[i]), context(f"b{i}")),
        CLIENTS,
        timeout=300,
    )
    assert errors == [None] * CLIENTS
    after = backend.batcher.describe()
    assert after["items"] - before["items"] == CLIENTS
    assert after["passes"] - before["passes"] < CLIENTS / 2, after  # shared passes
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_allclose(a.output["embeddings"], b.output["embeddings"], atol=1e-5)
        assert a.metrics == b.metrics  # the same token counts
    assert len(together[0].output["embeddings"][0]) == 384


def test_minilm_a_bad_text_fails_only_its_own_job(loaded):
    backend = loaded(default_spec("minilm"))

    def job(i):
        texts = ["fine", "bad \ud800 text"] if i == 5 else [f"text {i}", "another"]
        return backend.run("embed", EmbedInput(texts=texts), context(f"j{i}"))

    results, errors = on_threads(job, CLIENTS, timeout=300)
    assert isinstance(errors[5], InputRejected)
    assert "input.texts[1] is not valid Unicode" in str(errors[5])
    assert [e for i, e in enumerate(errors) if i != 5] == [None] * (CLIENTS - 1)
    assert all(len(r.output["embeddings"]) == 2 for i, r in enumerate(results) if i != 5)


def test_classifier_batched_matches_alone(loaded, folders):
    spec = ModelSpec(
        id="bert",
        backend="classifier",
        tasks=["classify"],
        source={"path": str(folders["tiny-bert-classifier"])},
        quantization="int8",
    )
    backend = loaded(spec)
    texts = [f"this movie was {'great ' * i}and {'boring ' * (i % 3)}" for i in range(16)]
    alone = [backend.run("classify", ClassifyInput(text=t), context("a")).output for t in texts]
    before = backend.batcher.describe()["passes"]
    together, errors = on_threads(
        lambda i: backend.run("classify", ClassifyInput(text=texts[i]), context(f"b{i}")),
        16,
        timeout=300,
    )
    assert errors == [None] * 16
    assert [r.output for r in together] == alone
    assert backend.batcher.describe()["passes"] - before < 16


def wav(seconds: float, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    soundfile.write(
        buf, rng.standard_normal(int(16000 * seconds)).astype(np.float32) * 0.1, 16000, format="WAV"
    )
    return buf.getvalue()


def test_whisper_windows_of_concurrent_jobs_share_generate(loaded, folders):
    spec = ModelSpec(
        id="whisper",
        backend="whisper",
        tasks=["transcribe"],
        source={"path": str(folders["tiny-whisper"])},
        limits={"max_tokens": 16},
    )
    backend = loaded(spec)
    refs = [MEDIA.add(f"audio-{i}", wav(1 + i % 3, i), "audio/wav") for i in range(6)]

    def job(i, prefix):
        events = []
        result = backend.run(
            "transcribe", TranscribeInput(audio=refs[i]), context(prefix, events=events)
        )
        return result.output, [d["text"] for e, d in events if e == "token"]

    alone = [job(i, "a") for i in range(6)]
    before = backend.batcher.describe()["passes"]
    together, errors = on_threads(lambda i: job(i, "b"), 6, timeout=300)
    assert errors == [None] * 6
    assert together == alone  # the same text, and the same window texts streamed
    assert backend.batcher.describe()["passes"] - before < 6


def test_blip_questions_of_concurrent_jobs_share_generate(loaded, folders):
    spec = ModelSpec(
        id="blip",
        backend="blip_vqa",
        tasks=["vqa"],
        source={"path": str(folders["tiny-blip-vqa"])},
    )
    backend = loaded(spec)
    rng = np.random.default_rng(0)
    images = []
    for i in range(8):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(buf, "PNG")
        images.append(MEDIA.add(f"image-{i}", buf.getvalue(), "image/png"))
    broken = MEDIA.add("broken", b"not an image", "image/png")
    questions = ["what color is it?", "how many?", "is there a cat on the mat?", "why?"] * 2

    def job(i, image=None):
        inputs = VqaInput(image=image or images[i], question=questions[i])
        return backend.run("vqa", inputs, context(f"q{i}"))

    alone = [job(i) for i in range(8)]
    before = backend.batcher.describe()["passes"]
    together, errors = on_threads(lambda i: job(i, broken if i == 2 else None), 8, timeout=300)
    assert "could not be decoded" in str(errors[2])
    for i in range(8):
        if i != 2:
            assert errors[i] is None
            assert together[i].output == alone[i].output
            assert together[i].metrics["prompt_tokens"] == alone[i].metrics["prompt_tokens"]
    assert backend.batcher.describe()["passes"] - before < 7


# causal LM: transformers' continuous batching


def lm_spec(folders, quantization: str, max_concurrency: int) -> ModelSpec:
    return ModelSpec(
        id=f"lm-{quantization}-{max_concurrency}",
        backend="transformers",
        tasks=["chat", "complete"],
        source={"path": str(folders["tiny-qwen2-lm"])},
        quantization=quantization,
        max_concurrency=max_concurrency,
    )


PROMPTS = [
    "hello world",
    "the cat sat on the mat",
    "what color is the car",
    "a",
    "listen to the audio",
    "this movie was great",
    "two three one",
    "a red square on a blue background",
]


def chat(i, **extra) -> ChatInput:
    fields = {"max_tokens": 24, "temperature": 0, **extra}
    return ChatInput(messages=[{"role": "user", "content": PROMPTS[i]}], **fields)


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_causal_lm_greedy_chats_in_one_batch_match_one_at_a_time(loaded, folders, quantization):
    alone_backend = loaded(lm_spec(folders, quantization, 1))
    assert alone_backend.continuous is None
    alone = [alone_backend.run("chat", chat(i), context(f"a{i}")) for i in range(8)]
    backend = loaded(lm_spec(folders, quantization, 8))
    streams = [[] for _ in range(8)]
    together, errors = on_threads(
        lambda i: backend.run("chat", chat(i), context(f"b{i}", events=streams[i])), 8, timeout=300
    )
    assert errors == [None] * 8
    # The registry's default sampling (repeat_penalty 1.1) runs inside the batch.
    assert backend.health()["continuous_batching"] == {"jobs_in_batch": 9, "jobs_beside": 0}
    for i in range(8):
        assert together[i].output == alone[i].output
        assert together[i].metrics["completion_tokens"] == alone[i].metrics["completion_tokens"]
        streamed = "".join(d["text"] for e, d in streams[i] if e == "token")
        assert streamed == together[i].output["text"]


def test_causal_lm_cancel_one_job_mid_batch_while_the_others_finish(loaded, folders):
    backend = loaded(lm_spec(folders, "none", 8))
    alone = [backend.run("chat", chat(i), context(f"a{i}")) for i in range(4)]
    stop = threading.Event()
    events = []

    def job(i):
        if i == 0:  # long: canceled after its first tokens
            inputs = chat(0, max_tokens=4000)

            def first_token_then_cancel():
                if any(e == "token" for e, _ in events):
                    stop.set()
                return stop.is_set()

            return backend.run("chat", inputs, context("long", first_token_then_cancel, events))
        return backend.run("chat", chat(i), context(f"b{i}"))

    results, errors = on_threads(job, 4, timeout=300)
    assert errors == [None] * 4
    assert results[0].output["finish_reason"] == "canceled"
    assert results[0].metrics["completion_tokens"] < 4000
    assert [r.output for r in results[1:]] == [a.output for a in alone[1:]]


def test_causal_lm_a_job_joins_a_running_batch(loaded, folders):
    backend = loaded(lm_spec(folders, "none", 8))
    alone = backend.run("chat", chat(3), context("alone"))
    long_events = []
    joined = {}

    def long_job():
        inputs = chat(0, max_tokens=2000)
        return backend.run("chat", inputs, context("long", events=long_events))

    def late_job():
        wait_for(lambda: len(long_events) >= 3, 60, what="the long job's first tokens")
        joined["at"] = len(long_events)
        joined["result"] = backend.run("chat", chat(3), context("late"))
        joined["after"] = len(long_events)

    late = threading.Thread(target=late_job)
    late.start()
    long = long_job()
    late.join()
    assert joined["result"].output == alone.output
    assert long.output["finish_reason"] == "length"
    # The late job finished while the long one was still generating: it joined the batch
    # instead of waiting for it.
    assert joined["after"] < long.metrics["completion_tokens"], (joined, long.metrics)


def test_causal_lm_seeded_and_stop_string_jobs_run_beside_the_batch(loaded, folders):
    backend = loaded(lm_spec(folders, "none", 8))
    seeded = chat(1, temperature=0.9, seed=11, max_tokens=16)
    alone = [backend.run("chat", seeded, context("s")).output for _ in range(2)]
    assert alone[0] == alone[1]  # the seed holds on the side path
    plain = backend.run("chat", chat(2), context("p")).output["text"]
    stop_at = next(plain[i : i + 3] for i in range(3, len(plain) - 3) if plain[i : i + 3].isalpha())
    before = backend.continuous.beside
    results, errors = on_threads(
        lambda i: backend.run(
            "chat",
            seeded if i == 0 else chat(2, stop=[stop_at]) if i == 1 else chat(i),
            context(f"j{i}"),
        ),
        6,
        timeout=300,
    )
    assert errors == [None] * 6
    assert results[0].output == alone[0]
    assert results[1].output == {"text": plain[: plain.find(stop_at)], "finish_reason": "stop"}
    assert backend.continuous.beside - before == 1  # only the seeded job left the batch


# through a real worker


def test_minilm_worker_batches_concurrent_jobs(make_settings, start_worker, make_app):
    settings = make_settings()
    worker = start_worker(settings, "minilm", wait=False)
    fleet = Fleet.from_url(settings.redis_url)

    def facts():
        live = [f for f in fleet.workers("minilm") if f.get("loaded")]
        return live[0] if live else None

    wait_for(lambda: facts() is not None, 300, what=f"worker minilm\n{worker.tail()}")
    client = make_app(settings).test_client()
    texts = [f"job {i} says the weather is {'very ' * (i % 4)}nice" for i in range(CLIENTS)]
    ids = []
    for text in texts:
        resp = client.post("/v1/jobs", json={"model": "minilm", "input": {"text": text}})
        assert resp.status_code == 202, resp.get_json()
        ids.append(resp.get_json()["id"])

    def done(job_id):
        rec = client.get(f"/v1/jobs/{job_id}").get_json()
        return rec if rec["status"] in ("succeeded", "failed", "canceled") else None

    records = [wait_for(lambda j=j: done(j), 300, what=f"job {j}") for j in ids]
    assert [r["status"] for r in records] == ["succeeded"] * CLIENTS, records
    reference = backend_class("sentence_transformers")(default_spec("minilm"), Settings())
    reference.load()
    try:
        for text, rec in zip(texts, records, strict=True):
            want = reference.run("embed", EmbedInput(text=text), context("ref")).output
            np.testing.assert_allclose(rec["output"]["embeddings"], want["embeddings"], atol=1e-5)
    finally:
        reference.close()
    time.sleep(0.5)
    batching = wait_for(
        lambda: (f := facts()) and f["health"]["batching"]["items"] >= CLIENTS and f,
        30,
        what="the worker's published batching counters",
    )["health"]["batching"]
    assert batching["passes"] < batching["items"], batching  # jobs shared forward passes


def test_causal_lm_a_job_past_the_kv_cache_fails_alone(loaded, folders):
    spec = lm_spec(folders, "none", 4).model_copy(
        update={"id": "lm-small-cache", "options": {"kv_cache_tokens": 256}}
    )
    backend = loaded(spec)
    alone = backend.run("chat", chat(1), context("alone")).output
    long_prompt = {"role": "user", "content": "hello world " * 200}

    def job(i):
        if i == 0:
            inputs = ChatInput(messages=[long_prompt], max_tokens=24, temperature=0)
            return backend.run("chat", inputs, context("too-long"))
        return backend.run("chat", chat(1), context(f"j{i}"))

    results, errors = on_threads(job, 4, timeout=300)
    assert isinstance(errors[0], InputRejected) and "kv_cache_tokens" in str(errors[0])
    assert errors[1:] == [None] * 3
    assert [r.output for r in results[1:]] == [alone] * 3
    assert backend.run("chat", chat(1), context("after")).output == alone
