"""Multimodal transformers backends through the queue: tiny random-weight checkpoints,
quantized with bitsandbytes (nf4 and int8) on the CPU, real worker processes, real media.

The tiny models answer gibberish; what is checked is the path: the media reaches the
model (prompt token counts grow by exactly the tokens each item takes), the job ends in
the right state with the right shape of output, bad media fails with a clear error, and
the worker keeps serving after it.
"""

from __future__ import annotations

import pytest
import redis
import yaml

from shared.store.fleet import Fleet
from shared.store.jobs import JobStore
from tests.conftest import wait_for
from tests.integration import media_samples as media
from tests.integration.tiny_models import BUILDERS

pytestmark = pytest.mark.timeout(600)

QUANTS = ("nf4", "int8")
MODELS = {  # tiny model -> (backend, tasks, limits)
    "tiny-qwen2-vl": (
        "qwen_vl",
        ["chat"],
        {"video_max_frames": 4, "video_fps": 2.0, "video_max_seconds": 5},
    ),
    "tiny-qwen25-vl": (
        "qwen_vl",
        ["chat"],
        {"video_max_frames": 4, "video_fps": 2.0, "video_max_seconds": 5},
    ),
    "tiny-blip-vqa": ("blip_vqa", ["vqa"], {}),
    "tiny-whisper": ("whisper", ["transcribe"], {"max_tokens": 64}),
    "tiny-qwen2-audio": ("qwen_audio", ["chat", "transcribe"], {}),
    "tiny-qwen25-omni": (
        "qwen_omni",
        ["chat"],
        {"video_max_frames": 4, "video_fps": 2.0, "video_max_seconds": 5},
    ),
    "tiny-bert-classifier": ("classifier", ["classify"], {}),
}


def write_registry(path, folders):
    entries = []
    for name, (backend, tasks, limits) in MODELS.items():
        for quant in QUANTS:
            entries.append(
                {
                    "id": f"{name}-{quant}",
                    "backend": backend,
                    "tasks": tasks,
                    "source": {"path": str(folders[name])},
                    "quantization": quant,
                    "limits": {"time_limit_s": 120, **limits},
                }
            )
    entries.append(
        {
            "id": "tiny-qwen2-vl-fp4",
            "backend": "qwen_vl",
            "tasks": ["chat"],
            "source": {"path": str(folders["tiny-qwen2-vl"])},
            "quantization": "fp4",
        }
    )
    # A full Qwen2.5-Omni checkpoint (thinker + talker + vocoder), served by its thinker.
    entries.append(
        {
            "id": "tiny-qwen25-omni-full-nf4",
            "backend": "qwen_omni",
            "tasks": ["chat"],
            "source": {"path": str(folders["tiny-qwen25-omni-full"])},
            "quantization": "nf4",
            "limits": MODELS["tiny-qwen25-omni"][2],
        }
    )
    path.write_text(yaml.safe_dump({"models": entries}))
    return path


def start_all(start_worker, settings, models):
    """Start workers in parallel (each spends seconds importing torch), then wait for all."""
    workers = [start_worker(settings, m, wait=False) for m in models]
    fleet = Fleet(redis.Redis.from_url(settings.redis_url, decode_responses=True))
    for w in workers:

        def ready(w=w):
            assert w.proc.poll() is None, f"worker {w.model} exited:\n{w.tail()}"
            return any(
                f.get("loaded") and f.get("pid") in w.pool_pids() for f in fleet.workers(w.model)
            )

        wait_for(ready, 240, what=f"worker {w.model} to load")
    return workers


@pytest.fixture(scope="module")
def client(tmp_path_factory, make_settings, start_worker, make_app):
    root = tmp_path_factory.mktemp("tiny-models")
    folders = {name: build(root / name) for name, build in BUILDERS.items()}
    registry = write_registry(root / "models.yaml", folders)
    settings = make_settings(registry=registry)
    start_all(
        start_worker,
        settings,
        [f"{m}-{q}" for m in MODELS for q in QUANTS]
        + ["tiny-qwen2-vl-fp4", "tiny-qwen25-omni-full-nf4"],
    )
    app = make_app(settings)
    app.conveyor_store = JobStore(
        redis.Redis.from_url(settings.redis_url, decode_responses=True), ttl_s=600
    )
    return app.test_client()


def run(client, model, input, task=None, expect="succeeded"):
    body = {"model": model, "input": input, **({"task": task} if task else {})}
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == 202, resp.get_json()
    job_id = resp.get_json()["id"]

    def ended():
        rec = client.get(f"/v1/jobs/{job_id}").get_json()
        return rec if rec["status"] in ("succeeded", "failed", "canceled") else None

    rec = wait_for(ended, 120, what=f"job on {model}")
    assert rec["status"] == expect, rec
    return rec


def events(client, job_id):
    return client.application.conveyor_store.read_events(job_id)


def chat_parts(*parts, text="describe the image"):
    return {
        "messages": [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}],
        "max_tokens": 4,
        "temperature": 0,
    }


def image_part(data, mime="image/png"):
    return {"type": "image_url", "image_url": {"url": media.data_url(data, mime)}}


def video_part(data):
    return {"type": "video_url", "video_url": {"url": media.data_url(data, "video/mp4")}}


def audio_part(data, fmt="wav"):
    return {"type": "input_audio", "input_audio": {"data": media.b64(data), "format": fmt}}


# A 56x56 image is one 28x28-pixel merge block of 2x2 patches per side: 2x2 = 4 tokens.
IMAGE_56_TOKENS = 4
# 1 s of 16 kHz audio is 100 feature frames: the conv halves it (50), pooling again (25).
AUDIO_1S_TOKENS = 25
PLACEHOLDER_BRACKETS = 2  # <|vision_start|>/<|audio_bos|> and the matching end token


@pytest.mark.parametrize("quant", (*QUANTS, "fp4"))
def test_qwen_vl_image_tokens_reach_the_model(client, quant):
    model = f"tiny-qwen2-vl-{quant}"
    plain = run(client, model, chat_parts())
    with_image = run(client, model, chat_parts(image_part(media.image(56, 56))))
    grown = with_image["metrics"]["prompt_tokens"] - plain["metrics"]["prompt_tokens"]
    assert grown == IMAGE_56_TOKENS + PLACEHOLDER_BRACKETS
    assert with_image["output"]["finish_reason"] in ("stop", "length")
    assert 0 < with_image["metrics"]["completion_tokens"] <= 4
    assert with_image["input"]["messages"][0]["content"][0]["image"]["media_type"] == "image/png"


@pytest.mark.parametrize("quant", QUANTS)
def test_qwen_vl_jpeg_and_mp4_video(client, quant):
    rec = run(
        client,
        f"tiny-qwen2-vl-{quant}",
        chat_parts(
            image_part(media.image(90, 70, "JPEG"), "image/jpeg"),
            video_part(media.video(2.0)),
            text="what happens in the video",
        ),
    )
    assert isinstance(rec["output"]["text"], str)
    # 2 s at video_fps 2 -> 4 frames (the limit) -> 2 temporal patches of 2x2 merged blocks.
    plain = run(
        client,
        f"tiny-qwen2-vl-{quant}",
        chat_parts(
            image_part(media.image(90, 70, "JPEG"), "image/jpeg"), text="what happens in the video"
        ),
    )
    assert (
        rec["metrics"]["prompt_tokens"] - plain["metrics"]["prompt_tokens"]
        == 2 * 4 + PLACEHOLDER_BRACKETS
    )


@pytest.mark.parametrize("quant", QUANTS)
def test_qwen25_vl_image_and_timed_video(client, quant):
    model = f"tiny-qwen25-vl-{quant}"
    plain = run(client, model, chat_parts(text="what happens"))
    rec = run(
        client,
        model,
        chat_parts(
            image_part(media.image(56, 56)), video_part(media.video(2.0)), text="what happens"
        ),
    )
    grown = rec["metrics"]["prompt_tokens"] - plain["metrics"]["prompt_tokens"]
    assert grown == IMAGE_56_TOKENS + 2 * 4 + 2 * PLACEHOLDER_BRACKETS
    assert rec["output"]["finish_reason"] in ("stop", "length")


def test_qwen_vl_top_level_image_field_and_token_events(client):
    rec = run(
        client,
        "tiny-qwen2-vl-nf4",
        {
            "prompt": "describe the image",
            "image": media.b64(media.image(56, 56)),
            "max_tokens": 6,
            "temperature": 0,
        },
    )
    plain = run(
        client,
        "tiny-qwen2-vl-nf4",
        {"prompt": "describe the image", "max_tokens": 6, "temperature": 0},
    )
    assert (
        rec["metrics"]["prompt_tokens"] - plain["metrics"]["prompt_tokens"]
        == IMAGE_56_TOKENS + PLACEHOLDER_BRACKETS
    )
    tokens = [data["text"] for _, kind, data in events(client, rec["id"]) if kind == "token"]
    assert "".join(tokens).strip() == rec["output"]["text"].strip()


@pytest.mark.parametrize("quant", QUANTS)
def test_blip_answers_a_question_about_an_image(client, quant):
    rec = run(
        client,
        f"tiny-blip-vqa-{quant}",
        {
            "image": media.b64(media.image(fmt="JPEG")),
            "question": "what color is the square?",
            "max_tokens": 5,
        },
    )
    assert isinstance(rec["output"]["text"], str)
    assert 0 < rec["metrics"]["completion_tokens"] <= 5 + 1  # the decoder's start token
    assert rec["input"]["image"]["media_type"] == "image/jpeg"


@pytest.mark.parametrize("quant", QUANTS)
def test_whisper_transcribes_wav_and_stereo_flac(client, quant):
    wav = run(
        client,
        f"tiny-whisper-{quant}",
        {"audio": media.b64(media.audio(1.0)), "language": "en", "max_tokens": 8},
    )
    assert wav["output"]["language"] == "en" and isinstance(wav["output"]["text"], str)
    assert wav["output"]["duration"] == pytest.approx(1.0, abs=0.01)
    # 44.1 kHz stereo FLAC: decoded, mixed to mono and resampled to 16 kHz.
    flac = run(
        client,
        f"tiny-whisper-{quant}",
        {
            "audio": media.b64(media.audio(1.5, rate=44_100, fmt="FLAC", channels=2)),
            "max_tokens": 8,
        },
    )
    assert flac["output"]["duration"] == pytest.approx(1.5, abs=0.01)
    assert flac["input"]["audio"]["media_type"] == "audio/flac"


@pytest.mark.parametrize("fmt, mime", [("OGG", "audio/ogg"), ("MP3", "audio/mpeg")])
def test_whisper_decodes_ogg_and_mp3(client, fmt, mime):
    data = media.audio(1.0, rate=22_050, fmt=fmt)
    rec = run(client, "tiny-whisper-int8", {"audio": media.b64(data), "max_tokens": 4})
    assert rec["input"]["audio"]["media_type"] == mime
    assert rec["output"]["duration"] == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("quant", QUANTS)
def test_qwen2_audio_chat_and_transcribe(client, quant):
    model = f"tiny-qwen2-audio-{quant}"
    rec = run(
        client,
        model,
        chat_parts(audio_part(media.audio(1.0)), text="what do you hear"),
        task="chat",
    )
    assert rec["output"]["finish_reason"] in ("stop", "length")
    plain = run(client, model, chat_parts(text="what do you hear"), task="chat")
    assert (
        rec["metrics"]["prompt_tokens"] - plain["metrics"]["prompt_tokens"]
        == AUDIO_1S_TOKENS + PLACEHOLDER_BRACKETS
    )
    text = run(
        client,
        model,
        {"audio": media.b64(media.audio(1.0, fmt="FLAC")), "max_tokens": 4},
        task="transcribe",
    )
    assert isinstance(text["output"]["text"], str) and "finish_reason" not in text["output"]


# The thinker-only checkpoints at both quantizations, and a full checkpoint (thinker +
# talker + vocoder) served by its thinker.
@pytest.mark.parametrize(
    "model", [*(f"tiny-qwen25-omni-{q}" for q in QUANTS), "tiny-qwen25-omni-full-nf4"]
)
def test_omni_takes_text_image_audio_and_video_together(client, model):
    plain = run(client, model, chat_parts(text="tell me everything"))
    rec = run(
        client,
        model,
        chat_parts(
            image_part(media.image(56, 56)),
            audio_part(media.audio(1.0)),
            video_part(media.video(2.0)),
            text="tell me everything",
        ),
    )
    expected = IMAGE_56_TOKENS + AUDIO_1S_TOKENS + 2 * 4 + 3 * PLACEHOLDER_BRACKETS
    assert rec["metrics"]["prompt_tokens"] - plain["metrics"]["prompt_tokens"] == expected
    assert isinstance(rec["output"]["text"], str)


def test_full_omni_checkpoint_loads_its_thinker_alone(client):
    models = {m["id"]: m for m in client.get("/admin/models").get_json()["models"]}
    full = models["tiny-qwen25-omni-full-nf4"]["workers"][0]["health"]
    thinker_only = models["tiny-qwen25-omni-nf4"]["workers"][0]["health"]
    assert full["class"] == "Qwen2_5OmniThinkerForConditionalGeneration"
    # The same thinker in both checkpoints: the talker and vocoder were never loaded.
    assert full["footprint_bytes"] == thinker_only["footprint_bytes"]


def test_qwen_vl_utils_keeps_a_large_image_within_the_pixel_budget(client):
    # 400x300 is 153 merged 28-pixel blocks; the tiny processor allows 16 (28*28*16 pixels),
    # so qwen-vl-utils scales it down to at most 4x4 blocks, keeping the aspect ratio.
    plain = run(client, "tiny-qwen25-vl-nf4", chat_parts())
    rec = run(client, "tiny-qwen25-vl-nf4", chat_parts(image_part(media.image(400, 300))))
    tokens = rec["metrics"]["prompt_tokens"] - plain["metrics"]["prompt_tokens"]
    assert tokens - PLACEHOLDER_BRACKETS == 4 * 3  # 112x84 pixels: 4x3 merged blocks


@pytest.mark.parametrize("quant", QUANTS)
def test_classifier_scores_every_label(client, quant):
    rec = run(
        client,
        f"tiny-bert-classifier-{quant}",
        {"texts": ["i loved this film", "this movie was terrible and boring"]},
    )
    results = rec["output"]["results"]
    assert len(results) == 2
    for r in results:
        assert {x["label"] for x in r["labels"]} == {"negative", "positive"}
        assert sum(x["score"] for x in r["labels"]) == pytest.approx(1.0, abs=1e-4)
        assert r["labels"][0]["score"] >= r["labels"][1]["score"]
    single = run(client, f"tiny-bert-classifier-{quant}", {"text": "great", "top_k": 1})
    assert len(single["output"]["labels"]) == 1


def test_admin_models_show_quantized_tiny_models(client):
    models = {m["id"]: m for m in client.get("/admin/models").get_json()["models"]}
    health = models["tiny-qwen2-vl-nf4"]["workers"][0]["health"]
    assert health["quantization"] == "nf4" and health["device"] == "cpu"
    assert health["class"] == "Qwen2VLForConditionalGeneration"
    assert models["tiny-qwen2-vl-fp4"]["workers"][0]["health"]["quantization"] == "fp4"
    nf4 = models["tiny-bert-classifier-nf4"]["workers"][0]["health"]["footprint_bytes"]
    int8 = models["tiny-bert-classifier-int8"]["workers"][0]["health"]["footprint_bytes"]
    assert 0 < nf4 < int8


# Bad input: a clear error, then the same worker serves the next job.


def test_corrupt_image_fails_the_job_and_the_worker_goes_on(client):
    bad = media.corrupt(media.image())
    rec = run(client, "tiny-qwen2-vl-nf4", chat_parts(image_part(bad)), expect="failed")
    assert rec["error"]["type"] == "invalid_media"
    assert "could not be decoded" in rec["error"]["message"]
    blip = run(
        client, "tiny-blip-vqa-nf4", {"image": media.b64(bad), "question": "what?"}, expect="failed"
    )
    assert blip["error"]["type"] == "invalid_media"
    run(client, "tiny-qwen2-vl-nf4", chat_parts(image_part(media.image())))
    run(client, "tiny-blip-vqa-nf4", {"image": media.b64(media.image()), "question": "what?"})


def test_corrupt_audio_fails_the_job_and_the_worker_goes_on(client):
    rec = run(
        client,
        "tiny-whisper-nf4",
        {"audio": media.b64(media.corrupt(media.audio()))},
        expect="failed",
    )
    assert rec["error"]["type"] == "invalid_media"
    assert "audio could not be decoded" in rec["error"]["message"]
    run(client, "tiny-whisper-nf4", {"audio": media.b64(media.audio()), "max_tokens": 4})


def test_corrupt_video_fails_the_job_and_the_worker_goes_on(client):
    bad = media.corrupt(media.video(), keep=32)
    rec = run(client, "tiny-qwen25-omni-nf4", chat_parts(video_part(bad)), expect="failed")
    assert rec["error"]["type"] == "invalid_media"
    assert "video" in rec["error"]["message"]
    run(client, "tiny-qwen25-omni-nf4", chat_parts(video_part(media.video())))


def test_video_over_the_duration_limit_fails_clearly(client):
    rec = run(
        client,
        "tiny-qwen2-vl-nf4",
        chat_parts(video_part(media.video(seconds=8.0))),
        expect="failed",
    )
    assert rec["error"]["type"] == "invalid_input"
    assert "over this model's limit of 5 s" in rec["error"]["message"]
    run(client, "tiny-qwen2-vl-nf4", chat_parts(video_part(media.video(seconds=1.0))))


def test_image_qwen_vl_utils_cannot_prepare_fails_clearly(client):
    rec = run(
        client, "tiny-qwen2-vl-nf4", chat_parts(image_part(media.image(1200, 4))), expect="failed"
    )
    assert rec["error"]["type"] == "invalid_input"
    assert "aspect ratio must be smaller than 200" in rec["error"]["message"]
    run(client, "tiny-qwen2-vl-nf4", chat_parts(image_part(media.image())))


def test_media_of_a_kind_the_model_does_not_take(client):
    rec = run(client, "tiny-qwen2-vl-nf4", chat_parts(audio_part(media.audio())), expect="failed")
    assert rec["error"]["type"] == "invalid_input"
    assert "does not take 'audio'" in rec["error"]["message"]


def test_bytes_that_are_no_media_are_refused_at_submit(client):
    resp = client.post(
        "/v1/jobs",
        json={
            "model": "tiny-whisper-nf4",
            "input": {"audio": media.b64(b"this is not audio at all, just text" * 10)},
        },
    )
    assert resp.status_code == 422
    assert resp.get_json()["error"]["type"] == "invalid_media"


def test_task_the_model_does_not_support_is_refused_at_submit(client):
    resp = client.post(
        "/v1/jobs",
        json={"model": "tiny-bert-classifier-nf4", "task": "vqa", "input": {"question": "?"}},
    )
    assert resp.status_code == 422
    err = resp.get_json()["error"]
    assert err["code"] == "unsupported_task" and "does not support task 'vqa'" in err["message"]
