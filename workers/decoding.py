"""Decode job media into arrays: images with Pillow, audio with soundfile/librosa,
video with OpenCV into a bounded number of frames.

The web side already checked each item's magic bytes; what still fails here is
media that looks right and is not (truncated, corrupt, an unsupported codec). That
raises MediaDecodeError, which fails the job as `invalid_media` with a clear message
and leaves the worker serving. Media over a model's limits raises InputRejected.
"""

from __future__ import annotations

import io
import logging
import math
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from shared.errors import InputRejected, MediaDecodeError
from shared.registry import Limits
from workers.backends.base import JobContext

log = logging.getLogger(__name__)


def decode_image(data: bytes, field: str = "image"):
    """Return an RGB PIL image. :raises MediaDecodeError: for bytes Pillow cannot decode."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decode now: a truncated file fails here, not inside the model
        return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise MediaDecodeError(f"{field}: the image could not be decoded ({exc})") from exc


def decode_audio(data: bytes, sampling_rate: int, limits: Limits, field: str = "audio"):
    """Return mono float32 samples at sampling_rate (wav, flac, ogg, mp3 and more).

    :raises MediaDecodeError: undecodable bytes. :raises InputRejected: too long.
    """
    import soundfile as sf

    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        samples = samples.mean(axis=1)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as first:
        samples, rate = _decode_with_librosa(data, field, first)
    if samples.size == 0:
        raise MediaDecodeError(f"{field}: the audio holds no samples")
    seconds = samples.size / rate
    if seconds > limits.audio_max_seconds:
        raise InputRejected(
            f"{field}: {seconds:.1f} s of audio is over this model's limit "
            f"of {limits.audio_max_seconds:g} s"
        )
    if rate != sampling_rate:
        import librosa

        samples = librosa.resample(samples, orig_sr=rate, target_sr=sampling_rate)
    return np.ascontiguousarray(samples, dtype=np.float32)


def _decode_with_librosa(data: bytes, field: str, first: Exception):
    # libsndfile reads wav/flac/ogg/mp3; librosa's audioread fallback adds what ffmpeg can.
    import librosa

    try:
        samples, rate = librosa.load(io.BytesIO(data), sr=None, mono=True)
    except Exception as exc:  # audioread raises its own family, unrelated to libsndfile's
        raise MediaDecodeError(
            f"{field}: the audio could not be decoded ({first}); send wav, flac, ogg or mp3"
        ) from exc
    return samples.astype(np.float32), rate


@dataclass
class Video:
    """Frames sampled from a video: RGB uint8 arrays, and the rate they were taken at."""

    frames: list[np.ndarray]
    sample_fps: float
    duration_s: float


@contextmanager
def _video_file(ctx: JobContext, ref: dict):
    # OpenCV reads files, not bytes: use the payload's own file when the store is local.
    path = ctx.media_path(ref)
    if path and os.path.exists(path):
        yield path
        return
    with tempfile.NamedTemporaryFile(suffix=".video") as tmp:
        tmp.write(ctx.media(ref))
        tmp.flush()
        yield tmp.name


def decode_video(ctx: JobContext, ref: dict, limits: Limits, field: str = "video") -> Video:
    """Sample at most limits.video_max_frames frames at limits.video_fps with OpenCV.

    Frames are scaled down to at most limits.video_max_pixels pixels each.
    :raises MediaDecodeError: undecodable video. :raises InputRejected: over the limits.
    """
    import cv2

    with _video_file(ctx, ref) as path:
        cap = cv2.VideoCapture(path)
        try:
            if not cap.isOpened():
                raise MediaDecodeError(
                    f"{field}: the video could not be opened (corrupt or an unsupported codec)"
                )
            fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
            total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            if fps <= 0 or total <= 0:
                raise MediaDecodeError(f"{field}: the video has no readable frames")
            duration = total / fps
            if duration > limits.video_max_seconds:
                raise InputRejected(
                    f"{field}: {duration:.1f} s of video is over this model's "
                    f"limit of {limits.video_max_seconds:g} s"
                )
            wanted = _frame_indices(total, fps, limits)
            frames = _read_frames(cap, wanted, limits.video_max_pixels, ctx)
        finally:
            cap.release()
    if not frames:
        raise MediaDecodeError(f"{field}: no frame of the video could be decoded")
    sample_fps = len(frames) / duration if duration > 0 else limits.video_fps
    return Video(frames=frames, sample_fps=sample_fps, duration_s=duration)


def _frame_indices(total: int, fps: float, limits: Limits) -> list[int]:
    """Evenly spaced frame indices: video_fps per second, at most video_max_frames."""
    duration = total / fps
    count = max(1, min(limits.video_max_frames, math.ceil(duration * limits.video_fps), total))
    return sorted({min(total - 1, int(i * total / count)) for i in range(count)})


def _read_frames(cap, wanted: list[int], max_pixels: int, ctx: JobContext) -> list[np.ndarray]:
    import cv2

    frames = []
    keep = set(wanted)
    for index in range(wanted[-1] + 1):
        if ctx.should_stop():
            break
        if not cap.grab():  # grab() skips decoding the frames we do not keep
            break
        if index not in keep:
            continue
        ok, frame = cap.retrieve()
        if not ok or frame is None:
            continue
        frames.append(_fit(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), max_pixels))
    return frames


def _fit(frame: np.ndarray, max_pixels: int) -> np.ndarray:
    import cv2

    h, w = frame.shape[:2]
    if h * w <= max_pixels:
        return frame
    scale = math.sqrt(max_pixels / (h * w))
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
