"""Vision-language backend: Qwen2-VL / Qwen2.5-VL chat over images and video frames."""

from __future__ import annotations

import logging

import numpy as np

from shared.inputs import ChatInput
from workers.backends.base import JobContext, Result
from workers.backends.hf_generation import generate, to_device
from workers.backends.hf_loading import HFBackend, input_device, load_model
from workers.backends.qwen_inputs import QwenInputs, attach_media, split_media
from workers.decoding import Video, decode_audio, decode_image, decode_video

log = logging.getLogger(__name__)


class QwenVisionBackend(HFBackend):
    """Chat with images and videos as content parts (or input.image/images/video)."""

    tasks = ("chat",)
    media_kinds: tuple[str, ...] = ("image", "video")

    def load_model(self, path) -> None:
        """Load the processor and the model. :raises ModelNotAvailable:"""
        self.inputs = QwenInputs(path, self.spec.limits, audio="audio" in self.media_kinds)
        self.tokenizer = self.inputs.tokenizer
        self.model = self._model_class_load(path)

    def warm_up(self) -> None:
        """One greedy token over a small image, a two-frame video (and a second of silence
        for Omni): the media path's one-time allocations happen at load, not in a job."""
        import cv2  # noqa: F401  (imported here, not by the first video job)
        from PIL import Image

        media: list[tuple[str, object]] = [
            ("image", Image.new("RGB", (56, 56))),
            (
                "video",
                Video(frames=[np.zeros((56, 56, 3), np.uint8)] * 2, sample_fps=2.0, duration_s=1.0),
            ),
        ]
        if "audio" in self.media_kinds:
            media.append(("audio", np.zeros(self.inputs.sampling_rate, np.float32)))
        messages = [{"role": "user", "content": "Hello"}]
        attach_media(messages, media)  # the placeholders a job's media get
        messages, media = split_media(messages, self.media_kinds, self.spec.id)
        batch = to_device(
            self.inputs.build(messages, media), input_device(self.model), self.model.dtype
        )
        self.model.generate(**batch, max_new_tokens=1, do_sample=False)

    def _model_class_load(self, path):
        from transformers import AutoModelForImageTextToText

        return load_model(AutoModelForImageTextToText, self.spec, path)

    def chat(self, inputs: ChatInput, ctx: JobContext) -> Result:
        """Answer a chat whose user turns may hold media parts."""
        messages = inputs.chat_messages(self.spec.options.get("system_prompt"))
        top = [("image", inputs.image)] if inputs.image else []
        top += [("image", ref) for ref in inputs.images or []]
        top += [("video", inputs.video)] if inputs.video else []
        top += [("audio", inputs.audio)] if inputs.audio else []
        attach_media(
            messages, [(k, r.model_dump() if hasattr(r, "model_dump") else r) for k, r in top]
        )
        messages, media = split_media(messages, self.media_kinds, self.spec.id)
        decoded = [
            (kind, self._decode(kind, ref, ctx, f"{kind} #{n + 1}"))
            for n, (kind, ref) in enumerate(media)
        ]
        batch = self.inputs.build(messages, decoded)
        del decoded
        batch = to_device(batch, input_device(self.model), self.model.dtype)
        return generate(self.model, self.tokenizer, batch, inputs.generation_params(self.spec), ctx)

    def _decode(self, kind: str, ref: dict, ctx: JobContext, field: str):
        limits = self.spec.limits
        if kind == "image":
            return decode_image(ctx.media(ref), field)
        if kind == "video":
            return decode_video(ctx, ref, limits, field)
        return decode_audio(ctx.media(ref), self.inputs.sampling_rate, limits, field)
