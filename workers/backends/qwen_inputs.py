"""Model inputs for the Qwen vision family (Qwen2-VL, Qwen2.5-VL, Qwen2.5-Omni thinker).

Chat messages with image, video and audio parts become: the model's chat template
rendered with one placeholder per item, each placeholder widened to the number of
tokens its item takes, image pixels from the checkpoint's image processor, video
frames patched the way Qwen's video processor patches them, and audio features from
the checkpoint's Whisper feature extractor.

Why not `AutoProcessor` and qwen-vl-utils: both need torchvision (transformers 5 builds
its video processors on it, and qwen-vl-utils imports it at module import), and there
is no CPU build of torchvision for torch 2.13 on PyPI. This module needs only
Pillow/numpy, so the same code runs on CPU-only workers and on GPUs. It follows
qwen-vl-utils' rules: frames are sampled at a bounded rate and count (see
workers.decoding.decode_video), and each frame is resized with `smart_resize` to
multiples of patch_size * merge_size within the pixel budget.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from shared.errors import InputRejected
from shared.registry import Limits
from workers.decoding import Video

KINDS = ("image", "video", "audio")


def split_media(messages: list[dict[str, Any]], allowed: tuple[str, ...],
                model_id: str) -> tuple[list[dict[str, Any]], list[tuple[str, dict]]]:
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
                raise InputRejected(f"model {model_id} does not take {kind!r} content parts "
                                    f"(it takes text and {', '.join(allowed)})")
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


def patch_video(video: Video, image_processor, limits: Limits) -> tuple[np.ndarray, list[int]]:
    """Return flattened (patches, C*T*P*P) pixels and [t, h, w] grid for one video."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    ps = image_processor.patch_size
    tps = image_processor.temporal_patch_size
    ms = image_processor.merge_size
    min_pixels = image_processor.size["shortest_edge"]
    max_pixels = max(min_pixels, min(limits.video_max_pixels, image_processor.size["longest_edge"]))
    h, w = video.frames[0].shape[:2]
    rh, rw = smart_resize(h, w, factor=ps * ms, min_pixels=min_pixels, max_pixels=max_pixels)
    mean = np.asarray(image_processor.image_mean, dtype=np.float32)[:, None, None]
    std = np.asarray(image_processor.image_std, dtype=np.float32)[:, None, None]
    frames = [np.asarray(Image.fromarray(f).resize((rw, rh), Image.BICUBIC), np.float32)
              for f in video.frames]
    while len(frames) % tps:
        frames.append(frames[-1])  # pad to whole temporal patches, as Qwen's processor does
    x = (np.stack(frames).transpose(0, 3, 1, 2) / 255.0 - mean) / std  # (T, C, H, W)
    t, c = x.shape[0] // tps, x.shape[1]
    gh, gw = rh // ps, rw // ps
    x = x.reshape(t, tps, c, gh // ms, ms, ps, gw // ms, ms, ps)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(t * gh * gw, c * tps * ps * ps).astype(np.float32), [t, gh, gw]


class QwenInputs:
    """Build generate() inputs for a Qwen vision/omni checkpoint from decoded media."""

    def __init__(self, path, tokenizer, config, limits: Limits, *, audio: bool) -> None:
        from transformers import AutoImageProcessor

        self.tokenizer = tokenizer
        self.limits = limits
        self.family = config.model_type
        self.image_processor = AutoImageProcessor.from_pretrained(str(path))
        self.features = None
        if audio:
            from transformers import WhisperFeatureExtractor

            self.features = WhisperFeatureExtractor.from_pretrained(str(path))
        get = lambda *names: next(getattr(config, n) for n in names if hasattr(config, n))  # noqa: E731
        self.token_ids = {
            "image": get("image_token_id", "image_token_index"),
            "video": get("video_token_id", "video_token_index"),
        }
        if audio:
            self.token_ids["audio"] = get("audio_token_index", "audio_token_id")
        self.tokens = {k: tokenizer.convert_ids_to_tokens(v) for k, v in self.token_ids.items()}

    @property
    def sampling_rate(self) -> int:
        return self.features.sampling_rate if self.features else 16000

    def build(self, messages, images: list, videos: list[Video], audios: list) -> dict:
        """Return the tensors generate() takes for rendered messages and their media."""
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                  tokenize=False)
        batch: dict[str, Any] = {}
        counts: dict[str, list[int]] = {"image": [], "video": [], "audio": []}
        merge = self.image_processor.merge_size ** 2
        if images:
            pix = self.image_processor(images=images, return_tensors="pt")
            batch.update(pixel_values=pix["pixel_values"], image_grid_thw=pix["image_grid_thw"])
            counts["image"] = (pix["image_grid_thw"].prod(-1) // merge).tolist()
        if videos:
            self._videos(videos, batch, counts, merge)
        if audios:
            self._audios(audios, batch, counts)
        for kind in KINDS:
            if kind in self.tokens:
                text = self._widen(text, kind, counts[kind])
        enc = self.tokenizer(text, return_tensors="pt")
        batch.update(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        if self.family in ("qwen2_vl", "qwen2_5_vl"):
            ids = enc["input_ids"]
            kinds = torch.zeros_like(ids)
            kinds[ids == self.token_ids["image"]] = 1
            kinds[ids == self.token_ids["video"]] = 2
            batch["mm_token_type_ids"] = kinds
        return batch

    def _videos(self, videos: list[Video], batch: dict, counts: dict, merge: int) -> None:
        patches, grids, seconds = [], [], []
        for video in videos:
            pixels, grid = patch_video(video, self.image_processor, self.limits)
            patches.append(pixels)
            grids.append(grid)
            seconds.append(self.image_processor.temporal_patch_size / video.sample_fps)
        batch["pixel_values_videos"] = torch.from_numpy(np.concatenate(patches))
        batch["video_grid_thw"] = torch.tensor(grids, dtype=torch.long)
        counts["video"] = [t * h * w // merge for t, h, w in grids]
        if self.family == "qwen2_5_vl":
            batch["second_per_grid_ts"] = torch.tensor(seconds)
        elif self.family.startswith("qwen2_5_omni"):
            batch["video_second_per_grid"] = torch.tensor(seconds)

    def _audios(self, audios: list, batch: dict, counts: dict) -> None:
        feats = self.features(audios, sampling_rate=self.sampling_rate, return_attention_mask=True,
                              padding="max_length", return_tensors="pt")
        mask = feats["attention_mask"]
        batch.update(input_features=feats["input_features"], feature_attention_mask=mask)
        lengths = (mask.sum(-1) - 1) // 2 + 1  # the audio encoder's conv stride, then pooling
        counts["audio"] = ((lengths - 2) // 2 + 1).tolist()

    def _widen(self, text: str, kind: str, counts: list[int]) -> str:
        token = self.tokens[kind]
        pieces = text.split(token)
        if len(pieces) - 1 != len(counts):
            raise InputRejected(f"the chat has {len(pieces) - 1} {kind} placeholders for "
                                f"{len(counts)} {kind} inputs")
        out = [pieces[0]]
        for count, piece in zip(counts, pieces[1:], strict=True):
            out.append(token * int(count) + piece)
        return "".join(out)
