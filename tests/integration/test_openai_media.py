"""The OpenAI-compatible embeddings, transcriptions and multimodal chat, driven by the
official `openai` package against gunicorn and real workers (MiniLM, and tiny random-weight
Whisper and Qwen-Omni checkpoints); every request is still a job on the queue."""

from __future__ import annotations

import io
import math
import struct
import wave

import openai
import pytest

from tests.integration.test_openai_api import KEY, WHISPER, job_of, registry  # noqa: F401

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def server(make_settings, start_worker, start_server, registry):  # noqa: F811
    settings = make_settings(api_keys=[KEY], registry=registry)
    start_worker(settings, "minilm")
    start_worker(settings, WHISPER)
    start_worker(settings, "qwen2.5-omni-3b")
    return start_server(settings)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def test_embeddings_string_list_and_base64(client, server):
    one = client.embeddings.create(model="minilm", input="The cat sits on the mat.")
    vector = one.data[0].embedding  # the openai client asks for base64 and decodes it
    assert len(vector) == 384 and one.data[0].index == 0
    assert math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-4)
    assert one.usage.prompt_tokens > 3 and one.model == "minilm"
    texts = [
        "A cat sits on a mat.",
        "Stock markets fell sharply today.",
        "The cat sits on the mat.",
    ]
    raw = client.embeddings.with_raw_response.create(
        model="minilm", input=texts, encoding_format="float"
    )
    many = raw.parse()
    vectors = [d.embedding for d in many.data]
    assert [d.index for d in many.data] == [0, 1, 2]

    def cos(a, b):
        return math.fsum(x * y for x, y in zip(a, b, strict=True))

    assert cos(vectors[2], vectors[0]) > cos(vectors[2], vectors[1]) + 0.3
    assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(vectors[2], vector, strict=True))
    job = job_of(server, "x-" + raw.headers["X-Conveyor-Job-Id"])
    assert job["task"] == "embed" and job["input"]["texts"] == texts


def test_embeddings_dimensions_and_token_input_are_refused(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model="minilm", input="hi", dimensions=128)
    assert exc.value.body["param"] == "dimensions"
    assert "does not support 'dimensions'" in exc.value.body["message"]
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model="minilm", input=[[1, 2, 3]])
    assert exc.value.body["param"].startswith("input")


def wav_bytes(seconds: float = 1.0, rate: int = 16_000) -> bytes:
    frames = b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
        for i in range(int(seconds * rate))
    )
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames)
    return buf.getvalue()


def test_transcription_multipart_is_a_job(client, server):
    audio = ("tone.wav", wav_bytes(), "audio/wav")
    raw = client.audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=audio, language="en"
    )
    result = raw.parse()
    assert isinstance(result.text, str)
    job = job_of(server, "x-" + raw.headers["X-Conveyor-Job-Id"])
    assert job["model"] == WHISPER and job["task"] == "transcribe"
    assert job["status"] == "succeeded" and job["output"]["text"] == result.text
    assert job["input"]["audio"]["media_type"] == "audio/wav" and job["input"]["language"] == "en"
    text = client.audio.transcriptions.create(model=WHISPER, file=audio, response_format="text")
    assert isinstance(text, str)
    verbose = client.audio.transcriptions.create(
        model=WHISPER, file=audio, response_format="verbose_json"
    )
    assert verbose.text == result.text == text and verbose.language is None
    with pytest.raises(openai.BadRequestError) as exc:
        client.audio.transcriptions.create(model=WHISPER, file=audio, response_format="srt")
    assert exc.value.body["param"] == "response_format"
    with pytest.raises(openai.BadRequestError) as exc:
        client.audio.transcriptions.create(
            model=WHISPER, file=("notes.txt", b"plain text", "text/plain")
        )
    assert exc.value.body["code"] == "invalid_media"


def test_image_audio_and_video_parts_reach_a_multimodal_model(client, server):
    from tests.integration import media_samples as media

    def ask(*parts):
        return client.chat.completions.with_raw_response.create(
            model="qwen_omni",
            max_tokens=4,
            temperature=0,
            messages=[
                {
                    "role": "user",
                    "content": [*parts, {"type": "text", "text": "tell me everything"}],
                }
            ],
        )

    plain = ask().parse()
    raw = ask(
        {
            "type": "image_url",
            "image_url": {"url": media.data_url(media.image(56, 56), "image/png")},
        },
        {
            "type": "input_audio",
            "input_audio": {"data": media.b64(media.audio(1.0)), "format": "wav"},
        },
        {"type": "video_url", "video_url": {"url": media.data_url(media.video(2.0), "video/mp4")}},
    )
    rich = raw.parse()
    # Tokens the tiny Omni spends on them: a 56x56 image 4, 1 s of audio 25, two video
    # frame pairs 2 x 4, and a start/end bracket around each of the three.
    assert rich.usage.prompt_tokens - plain.usage.prompt_tokens == 4 + 25 + 2 * 4 + 3 * 2
    assert isinstance(rich.choices[0].message.content, str)
    job = job_of(server, "x-" + raw.headers["X-Conveyor-Job-Id"])
    parts = job["input"]["messages"][0]["content"]
    assert [(p["type"], p[p["type"]]["media_type"]) for p in parts[:3]] == [
        ("image", "image/png"),
        ("audio", "audio/wav"),
        ("video", "video/mp4"),
    ]
