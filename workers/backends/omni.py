"""Omni backend: the Qwen2.5-Omni thinker (text output) over text, image, audio and video."""

from __future__ import annotations

from workers.backends.hf_loading import load_model
from workers.backends.vision import QwenVisionBackend


class QwenOmniBackend(QwenVisionBackend):
    """Chat with any mix of images, audio clips and videos; answers in text."""

    media_kinds = ("image", "video", "audio")

    def _model_class_load(self, path):
        from transformers import (
            AutoConfig,
            Qwen2_5OmniForConditionalGeneration,
            Qwen2_5OmniThinkerForConditionalGeneration,
        )

        config = AutoConfig.from_pretrained(str(path))
        if config.model_type == "qwen2_5_omni":
            # A full Omni checkpoint: build it without the talker (speech output) and keep
            # only the thinker, which is what answers in text.
            full = load_model(
                Qwen2_5OmniForConditionalGeneration, self.spec, path, enable_audio_output=False
            )
            return full.thinker
        return load_model(Qwen2_5OmniThinkerForConditionalGeneration, self.spec, path)
