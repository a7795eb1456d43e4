"""Standard Webhooks: signing, target checks, and the notifier that queues deliveries.

Every place a job changes state (the worker runtime, the reaper, the web's cancel) calls
one WebhookNotifier; it decides whether the job's webhook wants the event, freezes the
body, and queues one delivery on the `webhooks` queue. The webhook worker
(workers/webhooks.py) signs and sends it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import redis

from shared.errors import InvalidInput
from shared.jobs import JobRecord
from shared.store.job_reads import JobReads
from shared.store.webhook_snapshots import WebhookSnapshots

log = logging.getLogger(__name__)

EVENTS = ("start", "output", "completed")
OUTPUT_INTERVAL_S = 0.5  # at most one `output` event per job this often


class WebhookTargetRefused(InvalidInput):
    """A webhook URL conveyor will not call (bad scheme, private or loopback address)."""

    type = "invalid_webhook"


# signing
def secret_key(secret: str) -> bytes:
    """Return the HMAC key of a 'whsec_<base64>' secret.

    :raises ValueError: when the part after whsec_ is not base64.
    """
    return base64.b64decode(secret.removeprefix("whsec_"), validate=True)


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return the `webhook-signature` value: v1,<base64 HMAC-SHA256 of id.timestamp.body>."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signed_headers(
    key: bytes | None, msg_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """Return the headers of one delivery attempt (unsigned when no secret is set)."""
    ts = int(time.time()) if timestamp is None else timestamp
    headers = {
        "content-type": "application/json",
        "user-agent": "conveyor-webhooks",
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
    }
    if key is not None:
        headers["webhook-signature"] = sign(key, msg_id, ts, body)
    return headers


def backoff_s(
    attempt: int,
    *,
    base_s: float,
    max_s: float,
    retry_after: str | None = None,
    rand: Callable[[], float] = random.random,
) -> float:
    """Return the delay before attempt+1: exponential from base_s, half of it jittered."""
    delay = min(max_s, base_s * 2 ** (attempt - 1))
    delay = delay / 2 + rand() * delay / 2
    if retry_after and retry_after.strip().isdigit():
        delay = max(delay, min(max_s, float(retry_after)))
    return delay


# targets
Resolver = Callable[..., list]  # socket.getaddrinfo's shape: (host, port, type=...) -> infos


def check_target(url: str, *, allow_private: bool, resolve: Resolver = socket.getaddrinfo) -> None:
    """Refuse a webhook URL that is not http(s) or that resolves to a non-public address.

    This answers for the name at this moment only; the webhook worker's transport checks
    again the very addresses it connects to (DNS may answer differently by then).

    :raises WebhookTargetRefused: naming the reason.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _refused(f"webhook {url!r} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _refused("webhook must be an http:// or https:// URL with a host")
    if allow_private:
        return
    host = parts.hostname
    try:
        checked_addresses(
            host,
            port or (443 if parts.scheme == "https" else 80),
            allow_private=False,
            resolve=resolve,
        )
    except (OSError, UnicodeError):
        raise _refused(f"webhook host {host!r} cannot be resolved") from None


def checked_addresses(
    host: str, port: int, *, allow_private: bool, resolve: Resolver = socket.getaddrinfo
) -> list:
    """Resolve host once and return its getaddrinfo entries, all of them public.

    :raises OSError: when the name does not resolve (socket.gaierror).
    :raises WebhookTargetRefused: when any address is loopback, private or reserved.
    """
    infos = resolve(host, port, type=socket.SOCK_STREAM)
    if allow_private:
        return infos
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if not address.is_global:
            raise _refused(
                f"webhook host {host!r} resolves to {address}, a loopback, private "
                f"or reserved address (set CONVEYOR_WEBHOOK_ALLOW_PRIVATE to allow)"
            )
    return infos


def _refused(message: str) -> WebhookTargetRefused:
    return WebhookTargetRefused(message, param="webhook", code="webhook_target_refused")


# triggering
class WebhookNotifier:
    """Queue each webhook event of a job once: freeze its body, then send its id."""

    def __init__(
        self,
        store: JobReads,
        send: Callable[[str], None],
        *,
        ttl_s: int,
        output_interval_s: float = OUTPUT_INTERVAL_S,
    ) -> None:
        self.snapshots = WebhookSnapshots.from_store(store, ttl_s=ttl_s)
        self.send = send
        self.output_interval_s = output_interval_s
        self._last_output: dict[str, tuple[float, int]] = {}

    def started(self, job: JobRecord) -> None:
        """A worker claimed the job (one `start` per attempt)."""
        if _wants(job, "start"):  # most jobs have no webhook: skip building the body
            self._queue(job, "start", f"msg_{job.id}_start_{job.attempts}", job.public())

    def output(self, job: JobRecord, partial: Callable[[], dict[str, Any]]) -> None:
        """New tokens or progress: queue an `output` event, at most one per interval."""
        if not _wants(job, "output"):
            return
        t = time.monotonic()
        last, seq = self._last_output.get(job.id, (None, 0))
        if last is not None and t - last < self.output_interval_s:
            return
        self._last_output[job.id] = (t, seq + 1)
        body = job.public()
        body["output"] = partial()
        self._queue(job, "output", f"msg_{job.id}_output_{job.attempts}_{seq}", body)

    def ended(self, job: JobRecord | None) -> None:
        """The job reached a terminal state, wherever that happened: one `completed`."""
        if job is None or not job.status.is_terminal():
            return
        self._last_output.pop(job.id, None)
        if _wants(job, "completed"):
            self._queue(job, "completed", f"msg_{job.id}_completed", job.public())

    def forget(self, job_id: str) -> None:
        """Drop a job's throttle state (its worker is done with it)."""
        self._last_output.pop(job_id, None)

    def _queue(self, job: JobRecord, event: str, msg_id: str, body: dict[str, Any]) -> None:
        if not _wants(job, event):
            return
        snapshot = json.dumps(
            {
                "job_id": job.id,
                "model": job.model,
                "event": event,
                "url": job.webhook.url,
                "body": json.dumps(body, separators=(",", ":")),
            }
        )
        try:
            # NX: a second trigger of the same event (web and worker racing) sends nothing.
            if not self.snapshots.freeze(msg_id, snapshot):
                return
            self.send(msg_id)
        except Exception:  # a webhook must never break the job path
            with contextlib.suppress(redis.RedisError):
                self.snapshots.drop(msg_id)  # a later trigger may try again
            log.warning(
                "job %s model %s: could not queue webhook %s",
                job.id,
                job.model,
                event,
                exc_info=True,
            )
            return
        log.info("job %s model %s: webhook %s queued as %s", job.id, job.model, event, msg_id)


def _wants(job: JobRecord, event: str) -> bool:
    return job.webhook is not None and event in job.webhook.events
