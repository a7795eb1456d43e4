"""Move a request's media into the payload store, leaving refs in the job input."""

from __future__ import annotations

from typing import Any

from shared.errors import InvalidInput, InvalidMedia, PayloadTooLarge
from shared.media import MEDIA_FIELDS, check_kind, decode_b64
from shared.payloads import PayloadStore

# OpenAI-style content parts that carry media, and where their data sits.
_PART_KINDS = {
    "image_url": ("image", lambda p: (p.get("image_url") or {}).get("url")),
    "input_image": ("image", lambda p: p.get("image_url") or p.get("image")),
    "video_url": ("video", lambda p: (p.get("video_url") or {}).get("url")),
    "input_video": ("video", lambda p: p.get("video")),
    "input_audio": ("audio", lambda p: (p.get("input_audio") or {}).get("data")),
    "audio_url": ("audio", lambda p: (p.get("audio_url") or {}).get("url")),
}


class Intake:
    """Decode, sniff and store the media of one job."""

    def __init__(self, payloads: PayloadStore, job_id: str) -> None:
        self.payloads = payloads
        self.job_id = job_id
        self.count = 0

    def store(self, data: bytes, field: str, kind: str) -> dict[str, Any]:
        """Store one media item after checking its size and that its bytes are the kind.

        :raises PayloadTooLarge: over the per-item limit. :raises InvalidMedia: not the kind.
        """
        limit = self.payloads.max_bytes
        if len(data) > limit:  # named by its field here; the store only knows its file name
            raise PayloadTooLarge(
                f"{field}: {len(data)} bytes is over the {limit}-byte media limit", param=field
            )
        mime = check_kind(data, field, kind)
        self.count += 1
        ref = self.payloads.put(self.job_id, f"{self.count:03d}-{field.replace('.', '_')}", data)
        return {"ref": ref, "media_type": mime, "bytes": len(data)}

    def _value(self, value: Any, field: str, kind: str) -> dict[str, Any]:
        if isinstance(value, bytes):
            return self.store(value, field, kind)
        if not isinstance(value, str):
            raise InvalidInput(f"{field}: expected base64 text or a data: URL", param=field)
        if value.startswith(("http://", "https://")):
            raise InvalidMedia(
                f"{field}: remote URLs are not fetched; send base64, a data: URL or a file part",
                param=field,
            )
        return self.store(decode_b64(value, field), field, kind)

    def process(self, inputs: dict[str, Any], files: dict[str, list[bytes]]) -> dict[str, Any]:
        """Return a copy of inputs with every media value replaced by its stored ref."""
        out = dict(inputs)
        for name, blobs in files.items():
            if name not in MEDIA_FIELDS:
                raise InvalidInput(
                    f"file part {name!r} is not a media field ({', '.join(MEDIA_FIELDS)})",
                    param=name,
                )
            out[name] = blobs if name == "images" else blobs[0]
        for name, kind in MEDIA_FIELDS.items():
            value = out.get(name)
            if value is None:
                continue
            if name == "images":
                if not isinstance(value, list):
                    raise InvalidInput("input.images: expected a list", param="input.images")
                out[name] = [self._value(v, f"input.images.{i}", kind) for i, v in enumerate(value)]
            else:
                out[name] = self._value(value, f"input.{name}", kind)
        if isinstance(out.get("messages"), list):
            out["messages"] = [self._message(m, i) for i, m in enumerate(out["messages"])]
        return out

    def _message(self, message: Any, index: int) -> Any:
        if not isinstance(message, dict) or not isinstance(message.get("content"), list):
            return message
        parts = []
        for j, part in enumerate(message["content"]):
            kind_get = _PART_KINDS.get(part.get("type")) if isinstance(part, dict) else None
            if kind_get is None:
                parts.append(part)
                continue
            kind, get = kind_get
            field = f"input.messages.{index}.content.{j}"
            value = get(part)
            if isinstance(value, dict):  # {"url": ...} nested one level more
                value = value.get("url")
            ref = self._value(value, field, kind)
            parts.append({"type": kind, kind: ref})
        return {**message, "content": parts}
