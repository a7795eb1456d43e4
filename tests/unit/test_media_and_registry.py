"""Media sniffing and decoding, registry validation, settings bounds."""

from __future__ import annotations

import base64
import textwrap

import pytest

from shared.config import Settings
from shared.errors import InvalidMedia, ModelNotAvailable
from shared.media import check_kind, decode_b64, sniff
from shared.registry import load_registry, resolve_source


@pytest.mark.parametrize(
    "head,mime",
    [
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"\xff\xd8\xff\xe0", "image/jpeg"),
        (b"GIF89a", "image/gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "audio/wav"),
        (b"fLaC\x00\x00", "audio/flac"),
        (b"OggS\x00\x02", "audio/ogg"),
        (b"ID3\x04\x00", "audio/mpeg"),
        (b"\x00\x00\x00\x18ftypisom", "video/mp4"),
        (b"\x00\x00\x00\x18ftypM4A ", "audio/mp4"),
        (b"\x1a\x45\xdf\xa3\x01", "video/webm"),
        (b"RIFF\x00\x00\x00\x00AVI LIST", "video/x-msvideo"),
        (b"hello world", None),
    ],
)
def test_sniff(head, mime):
    assert sniff(head + b"\x00" * 40) == mime


def test_decode_data_url_and_plain_base64():
    raw = b"\x89PNG\r\n\x1a\n" + b"\x01" * 10
    b64 = base64.b64encode(raw).decode()
    assert decode_b64(f"data:image/png;base64,{b64}", "image") == raw
    assert decode_b64(b64.rstrip("="), "image") == raw  # missing padding is forgiven
    with pytest.raises(InvalidMedia):
        decode_b64("not*base64", "image")
    with pytest.raises(InvalidMedia):
        decode_b64("", "image")


def test_check_kind_rejects_wrong_kind():
    with pytest.raises(InvalidMedia, match="expected image, got audio/wav"):
        check_kind(b"RIFF\x00\x00\x00\x00WAVEfmt " + b"\x00" * 40, "input.image", "image")


def write(tmp_path, text):
    path = tmp_path / "models.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_default_registry_has_the_contract_ids():
    registry = load_registry(Settings().registry)
    assert {"smollm2-135m", "echo", "minilm"} <= {s.id for s in registry}
    assert registry.get("smollm2-135m").queue == "model.smollm2-135m"
    assert registry.default_for("chat").id == "smollm2-135m"
    assert resolve_source(registry.get("smollm2-135m")).name.endswith(".gguf")


@pytest.mark.parametrize(
    "body,needle",
    [
        ("models: {}", "top-level 'models:' list"),
        ("models:\n  - {id: x, backend: echo, tasks: [fly]}", "unknown tasks"),
        ("models:\n  - {id: X!, backend: echo, tasks: [echo]}", "model X!"),
        ("models:\n  - {backend: echo, tasks: [echo]}", "model #0"),
        ("models:\n  - {id: a, backend: echo, tasks: [echo], quantization: int3}", "model a"),
        ("models:\n  - {id: a, backend: echo, tasks: [echo], colour: red}", "model a"),
        (
            "models:\n  - {id: a, backend: echo, tasks: [echo]}\n  - {id: a, backend: echo, "
            "tasks: [echo]}",
            "duplicate",
        ),
        ("models: [", "not valid YAML"),
    ],
)
def test_registry_errors_name_the_problem(tmp_path, body, needle):
    with pytest.raises(ValueError, match=needle):
        load_registry(write(tmp_path, body))


def test_missing_weights_say_how_to_fix(tmp_path):
    registry = load_registry(
        write(
            tmp_path,
            """
        models:
          - {id: local, backend: llamacpp, tasks: [chat], source: {path: /nope/model.gguf}}
          - {id: pkg, backend: llamacpp, tasks: [chat],
             source: {package: no_such_pkg_xyz, file: m.gguf}}
    """,
        )
    )
    with pytest.raises(ModelNotAvailable, match="conveyor models pull local"):
        resolve_source(registry.get("local"))
    with pytest.raises(ModelNotAvailable, match="not installed"):
        resolve_source(registry.get("pkg"))


def test_settings_are_bounded(monkeypatch):
    monkeypatch.setenv("CONVEYOR_RESULT_TTL_S", "5")
    with pytest.raises(ValueError):
        Settings()
    monkeypatch.delenv("CONVEYOR_RESULT_TTL_S")
    with pytest.raises(ValueError, match="below visibility_timeout_s"):
        Settings(default_time_limit_s=100, visibility_timeout_s=60)
    monkeypatch.setenv("CONVEYOR_MAX_QUEUED_PER_MODEL", "7")
    assert Settings().max_queued_per_model == 7


def test_settings_errors_never_echo_secrets(monkeypatch):
    monkeypatch.setenv("CONVEYOR_WEBHOOK_SECRET", "whsec_not-base64-but-secret!!")
    with pytest.raises(ValueError) as info:
        Settings()
    assert "not-base64-but-secret" not in str(info.value)


def test_empty_variables_mean_unset(monkeypatch):
    monkeypatch.setenv("CONVEYOR_WORKER_MAX_MEMORY_MB", "")
    assert Settings().worker_max_memory_mb is None


def test_sampling_defaults_come_from_the_request_then_the_model_then_conveyor():
    from shared.inputs import ChatInput
    from shared.registry import ModelSpec

    spec = ModelSpec(
        id="m",
        backend="llamacpp",
        tasks=["chat"],
        options={"sampling": {"temperature": 0, "top_k": 5}},
    )
    plain = ModelSpec(id="p", backend="llamacpp", tasks=["chat"])
    params = ChatInput(prompt="hi").generation_params(spec)
    assert params["temperature"] == 0 and params["top_k"] == 5 and params["top_p"] == 0.95
    assert ChatInput(prompt="hi", temperature=0.9).generation_params(spec)["temperature"] == 0.9
    assert ChatInput(prompt="hi").generation_params(plain)["temperature"] == 0.7


def test_text_over_the_models_input_limit_is_refused_but_media_do_not_count():
    from shared.errors import InvalidInput
    from shared.inputs import parse_input
    from shared.registry import ModelSpec

    spec = ModelSpec(
        id="small", backend="llamacpp", tasks=["chat"], limits={"max_input_chars": 100}
    )
    image = "data:image/png;base64," + "A" * 5000
    ok = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "x" * 90},
                    {"type": "image_url", "image_url": {"url": image}},
                ],
            }
        ]
    }
    assert parse_input("chat", ok, spec)
    with pytest.raises(InvalidInput, match="101 characters of text is over model small's limit"):
        parse_input("chat", {"prompt": "y" * 101}, spec)
    with pytest.raises(InvalidInput, match="over model small's limit") as exc:
        parse_input(
            "chat",
            {
                "messages": [
                    {"role": "user", "content": "z" * 60},
                    {"role": "assistant", "content": "z" * 60},
                ]
            },
            spec,
        )
    assert exc.value.param == "input"
