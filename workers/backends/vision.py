"""Vision-language backend: Qwen2-VL / Qwen2.5-VL chat over images and video frames."""

from __future__ import annotations

import logging

from shared.inputs import ChatInput
from workers.backends.base import JobContext, Result
from workers.backends.hf_generation import generate, to_device
from workers.backends.hf_loading import (
    HFBackend,
    cap_address_space,
    greedy_token,
    input_device,
    load_model,
    warm_up,
    weights_path,
)
from workers.backends.qwen_inputs import QwenInputs, attach_media, split_media
from workers.decoding import decode_audio, decode_image, decode_video

log = logging.getLogger(__name__)


class QwenVisionBackend(HFBackend):
    """Chat with images and videos as content parts (or input.image/images/video)."""

    tasks = ("chat",)
    media_kinds: tuple[str, ...] = ("image", "video")

    def load(self) -> None:
        """Load tokenizer, model and the input builder. :raises ModelNotAvailable:"""
        from transformers import AutoTokenizer

        path = weights_path(self.spec)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = self._load_model(path)
        self.inputs = QwenInputs(path, self.tokenizer, self.model.config, self.spec.limits,
                                 audio="audio" in self.media_kinds)
        warm_up(self.spec, lambda: greedy_token(self.model, self.tokenizer))
        cap_address_space(self.spec)
        self.loaded = True

    def _load_model(self, path):
        from transformers import AutoModelForImageTextToText

        return load_model(AutoModelForImageTextToText, self.spec, path)

    def chat(self, inputs: ChatInput, ctx: JobContext) -> Result:
        """Answer a chat whose user turns may hold media parts."""
        messages = inputs.chat_messages(self.spec.options.get("system_prompt"))
        top = [("image", inputs.image)] if inputs.image else []
        top += [("image", ref) for ref in inputs.images or []]
        top += [("video", inputs.video)] if inputs.video else []
        top += [("audio", inputs.audio)] if inputs.audio else []
        attach_media(messages, [(k, r.model_dump() if hasattr(r, "model_dump") else r)
                                for k, r in top])
        messages, media = split_media(messages, self.media_kinds, self.spec.id)
        images, videos, audios = [], [], []
        limits = self.spec.limits
        for n, (kind, ref) in enumerate(media):
            field = f"{kind} #{n + 1}"
            if kind == "image":
                images.append(decode_image(ctx.media(ref), field))
            elif kind == "video":
                videos.append(decode_video(ctx, ref, limits, field))
            else:
                audios.append(decode_audio(ctx.media(ref), self.inputs.sampling_rate, limits,
                                           field))
        batch = self.inputs.build(messages, images, videos, audios)
        del images, videos, audios
        batch = to_device(batch, input_device(self.model), self.model.dtype)
        return generate(self.model, self.tokenizer, batch, inputs.generation_params(self.spec),
                        ctx)
