"""Media intake: decode base64 / data: URLs and tell a file's type by its bytes."""

from __future__ import annotations

import base64
import binascii
import re

from shared.errors import InvalidMedia

# Input fields that carry media, and the kind of media each accepts.
MEDIA_FIELDS = {"image": "image", "images": "image", "audio": "audio", "video": "video"}

_DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)"
    r"(?P<b64>;base64)?,",
    re.IGNORECASE,
)


def sniff(data: bytes) -> str | None:
    """Return the MIME type that a file's leading bytes announce, or None."""
    head = data[:64]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head.startswith(b"BM") and len(data) > 26:
        return "image/bmp"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video/x-msvideo"
    if head.startswith(b"fLaC"):
        return "audio/flac"
    if head.startswith(b"OggS"):
        return "audio/ogg"
    if head.startswith(b"ID3") or (
        len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06 != 0
    ):
        return "audio/mpeg"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"M4A ", b"M4B "):
            return "audio/mp4"
        if brand == b"qt  ":
            return "video/quicktime"
        return "video/mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm"
    return None


def kind_of(mime: str | None) -> str | None:
    """Return 'image', 'audio' or 'video' for a MIME type."""
    return mime.split("/", 1)[0] if mime else None


def decode_b64(value: str, field: str) -> bytes:
    """Decode a base64 string or a data: URL into bytes.

    :raises InvalidMedia: when the text is not valid base64.
    """
    text = value.strip()
    match = _DATA_URL.match(text)
    if match:
        if not match.group("b64"):
            raise InvalidMedia(f"{field}: only base64 data: URLs are accepted", param=field)
        text = text[match.end() :]
    text = "".join(text.split())
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidMedia(f"{field}: not valid base64 ({exc})", param=field) from exc
    if not data:
        raise InvalidMedia(f"{field}: empty media", param=field)
    return data


def check_kind(data: bytes, field: str, expected: str) -> str:
    """Return the sniffed MIME type, insisting it is the kind the field takes.

    :raises InvalidMedia: when the bytes are no known format or the wrong kind.
    """
    mime = sniff(data)
    if mime is None:
        raise InvalidMedia(
            f"{field}: bytes are not a known {expected} format "
            f"(image: png/jpeg/gif/webp/bmp, audio: wav/flac/ogg/mp3/m4a, "
            f"video: mp4/mov/webm/avi)",
            param=field,
        )
    if kind_of(mime) != expected and not (expected == "audio" and mime == "video/mp4"):
        raise InvalidMedia(f"{field}: expected {expected}, got {mime}", param=field)
    return mime
