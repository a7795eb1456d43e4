"""Real media files made at test time: PNG/JPEG with Pillow, WAV/FLAC with soundfile,
MP4 with OpenCV; and corrupt files that keep a valid header (so they pass the magic-byte
check at submit and fail only when the worker decodes them)."""

from __future__ import annotations

import base64
import io
import tempfile
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf
from PIL import Image


def image(width: int = 64, height: int = 48, fmt: str = "PNG") -> bytes:
    """Return a gradient image with a red square, encoded as PNG or JPEG."""
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None]
    pixels = np.broadcast_to(x, (height, width, 3)).copy()
    pixels[height // 4 : height // 2, width // 4 : width // 2] = (255, 0, 0)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def audio(seconds: float = 1.0, rate: int = 16_000, fmt: str = "WAV", channels: int = 1) -> bytes:
    """Return a 440 Hz tone as WAV or FLAC."""
    t = np.arange(int(seconds * rate)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    data = np.stack([tone] * channels, axis=1) if channels > 1 else tone
    buf = io.BytesIO()
    sf.write(buf, data, rate, format=fmt)
    return buf.getvalue()


def video(seconds: float = 2.0, fps: int = 10, width: int = 64, height: int = 48) -> bytes:
    """Return an MP4 (mpeg4 part 2) of a square moving across, written by OpenCV."""
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "clip.mp4")
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        assert writer.isOpened(), "OpenCV has no MP4 writer"
        for i in range(int(seconds * fps)):
            frame = np.zeros((height, width, 3), np.uint8)
            x = (i * 4) % (width - 8)
            frame[10:18, x : x + 8] = (0, 255, 0)
            writer.write(frame)
        writer.release()
        return Path(path).read_bytes()


def corrupt(data: bytes, keep: int = 16) -> bytes:
    """Keep a file's header (its magic bytes) and replace the rest with noise."""
    noise = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    return data[:keep] + noise


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{b64(data)}"
