"""Model inputs for the Qwen vision family (Qwen2-VL, Qwen2.5-VL, Qwen2.5-Omni thinker).

Chat messages with image, video and audio parts are prepared the way Qwen's own
examples prepare them: qwen-vl-utils' `process_vision_info` resizes images and video
frames to the model's patch grid within a pixel budget, then the checkpoint's
processor renders the chat template, widens each placeholder to the tokens its item
takes, and makes the pixel and audio features.

conveyor decodes the media itself first (workers.decoding): images with Pillow, video
with OpenCV into at most `video_max_frames` frames sampled at `video_fps`, audio with
soundfile/librosa to mono at the feature extractor's rate. qwen-vl-utils then gets
decoded frames, never a path or URL, so it fetches nothing and the limits hold.
"""

from __future__ import annotations

from typing import Any

from shared.errors import InputRejected, ModelNotAvailable
from shared.registry import Limits
from workers.decoding import Video

KINDS = ("image", "video", "audio")


def split_media(
    messages: list[dict[str, Any]], allowed: tuple[str, ...], model_id: str
) -> tuple[list[dict[str, Any]], list[tuple[str, dict]]]:
    """Return the messages with media parts as bare placeholders, and the media in order.

    :raises InputRejected: for a part of a kind the model does not take.
    """
    out, media = [], []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            out.append({"role": message["role"], "content": content or ""})
            continue
        parts = []
        for part in content:
            kind = part.get("type")
            if kind == "text":
                parts.append({"type": "text", "text": part.get("text", "")})
            elif kind in KINDS and kind in allowed:
                # The kind's key stays: Qwen's own templates test `'image' in part`.
                parts.append({"type": kind, kind: f"{kind}-{len(media)}"})
                media.append((kind, part[kind]))
            else:
                raise InputRejected(
                    f"model {model_id} does not take {kind!r} content parts "
                    f"(it takes text and {', '.join(allowed)})"
                )
        out.append({"role": message["role"], "content": parts})
    return out, media


def attach_media(messages: list[dict[str, Any]], media: list[tuple[str, dict]]) -> None:
    """Put top-level media fields (input.image, .video, .audio) before the last user text."""
    if not media:
        return
    users = [m for m in messages if m["role"] == "user"]
    if not users:
        raise InputRejected("media needs a user message to go with")
    last = users[-1]
    text = last["content"]
    parts = text if isinstance(text, list) else [{"type": "text", "text": text or ""}]
    last["content"] = [{"type": kind, kind: ref} for kind, ref in media] + parts


class QwenInputs:
    """Build generate() inputs for a Qwen vision/omni checkpoint from decoded media."""

    def __init__(self, path, limits: Limits, *, audio: bool) -> None:
        """:raises ModelNotAvailable: for a checkpoint without its processor files."""
        from transformers import AutoProcessor

        self.processor = AutoProcessor.from_pretrained(str(path))
        if not hasattr(self.processor, "image_processor"):
            raise ModelNotAvailable(
                f"{path} has no image processor (preprocessor_config.json or "
                f"processor_config.json); Qwen vision checkpoints ship one with the weights"
            )
        self.tokenizer = self.processor.tokenizer
        self.omni = audio
        images = self.processor.image_processor
        self.patch_size = images.patch_size
        self.image_pixels = {
            "min_pixels": images.size["shortest_edge"],
            "max_pixels": images.size["longest_edge"],
        }
        videos = self.processor.video_processor
        cap = limits.video_max_pixels  # per frame; the decoder scaled frames under it
        low = min(videos.size["shortest_edge"], cap)
        self.video_pixels = {
            "min_pixels": low,
            "max_pixels": max(low, min(videos.size["longest_edge"], cap)),
        }

    @property
    def sampling_rate(self) -> int:
        features = getattr(self.processor, "feature_extractor", None)
        return features.sampling_rate if features is not None else 16000

    def build(self, messages: list[dict[str, Any]], media: list[tuple[str, Any]]) -> dict:
        """Return the tensors generate() takes.

        `messages` hold bare placeholders (from split_media); `media` holds, in the same
        order, ("image", PIL image), ("video", Video) and ("audio", samples).
        """
        from qwen_vl_utils import process_vision_info

        text = self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        vision = [self._vision_part(kind, item) for kind, item in media if kind != "audio"]
        audios = [item for kind, item in media if kind == "audio"]
        kwargs: dict[str, Any] = {}
        if vision:
            try:
                images, videos, video_kwargs = process_vision_info(
                    [{"role": "user", "content": vision}],
                    return_video_kwargs=True,
                    return_video_metadata=True,
                    image_patch_size=self.patch_size,
                )
            except ValueError as exc:  # an aspect ratio past 200:1, say
                raise InputRejected(f"an image or video could not be prepared: {exc}") from exc
            kwargs.update(video_kwargs, images=images)
            if videos:
                frames, metadata = map(list, zip(*videos, strict=True))
                # qwen-vl-utils applied the per-frame share of the video's pixel budget.
                kwargs.update(videos=frames, video_metadata=metadata, cap_pixels_per_frame=True)
        if audios:
            kwargs.update(audio=audios, sampling_rate=self.sampling_rate)
        # qwen-vl-utils has resized everything to the patch grid; the processor keeps it.
        batch = dict(self.processor(text=[text], do_resize=False, return_tensors="pt", **kwargs))
        if self.omni and "video_grid_thw" in batch:
            # The Omni processor assumes 2 fps for every video; use each one's real rate.
            step = self.processor.video_processor.temporal_patch_size
            batch["video_second_per_grid"] = batch["video_second_per_grid"].new_tensor(
                [step / item.sample_fps for kind, item in media if kind == "video"]
            )
        return batch

    def _vision_part(self, kind: str, item) -> dict[str, Any]:
        if kind == "image":
            return {"type": "image", "image": item, **self.image_pixels}
        video: Video = item
        from PIL import Image

        return {
            "type": "video",
            "video": [Image.fromarray(f) for f in video.frames],
            "sample_fps": video.sample_fps,
            **self.video_pixels,
        }
