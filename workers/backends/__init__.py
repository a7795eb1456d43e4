"""Backends by name; each module is imported only by the worker that serves it."""

from __future__ import annotations

import importlib

from workers.backends.base import Backend

# name -> "module:Class". Imported lazily so an echo worker never imports torch.
BACKENDS: dict[str, str] = {
    "echo": "workers.backends.echo:EchoBackend",
    "llamacpp": "workers.backends.llamacpp:LlamaCppBackend",
    "sentence_transformers": "workers.backends.embeddings:EmbeddingsBackend",
    "transformers": "workers.backends.hf_text:TransformersTextBackend",
    "qwen_vl": "workers.backends.vision:QwenVisionBackend",
    "qwen_omni": "workers.backends.omni:QwenOmniBackend",
    "blip_vqa": "workers.backends.blip:BlipVqaBackend",
    "whisper": "workers.backends.audio:WhisperBackend",
    "qwen_audio": "workers.backends.audio:QwenAudioBackend",
    "classifier": "workers.backends.classify:ClassifierBackend",
}


def backend_class(name: str) -> type[Backend]:
    """Return the backend class registered under a name.

    :raises KeyError: for an unknown backend name.
    """
    try:
        module, cls = BACKENDS[name].split(":")
    except KeyError:
        raise KeyError(f"unknown backend {name!r}; known: {sorted(BACKENDS)}") from None
    return getattr(importlib.import_module(module), cls)
