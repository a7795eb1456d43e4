"""Queued webhook events in Redis: each one's frozen body, then a done marker.

The notifier (shared/webhooks.py) freezes an event's body under its webhook-id before it
queues the id; the webhook worker (workers/webhooks.py) reads the body on every attempt,
so each retry sends the same bytes, and closes the event when it is done with it.
"""

from __future__ import annotations

import json

import redis

from shared.store import keys
from shared.store.job_reads import JobReads

DONE = json.dumps({"done": True})


class WebhookSnapshots:
    """Frozen webhook events by message id, kept as long as job records."""

    def __init__(self, client: redis.Redis, *, ttl_s: int) -> None:
        self._r = client
        self.ttl_s = ttl_s

    @classmethod
    def from_store(cls, store: JobReads, *, ttl_s: int | None = None) -> WebhookSnapshots:
        """Return the snapshots on the job store's connection pool (with its TTL unless
        ttl_s is given)."""
        return cls(store.r, ttl_s=store.ttl_s if ttl_s is None else ttl_s)

    def freeze(self, msg_id: str, snapshot: str) -> bool:
        """Store an event's snapshot unless one exists; return whether this call stored it."""
        return bool(self._r.set(keys.webhook(msg_id), snapshot, nx=True, ex=self.ttl_s))

    def drop(self, msg_id: str) -> None:
        """Forget a snapshot whose message could not be queued (a later trigger may retry)."""
        self._r.delete(keys.webhook(msg_id))

    def get(self, msg_id: str) -> str | None:
        """Return the snapshot (JSON), DONE once closed, or None when unknown or expired."""
        return self._r.get(keys.webhook(msg_id))

    def close(self, msg_id: str) -> None:
        """Mark an event done: a late trigger or duplicate message of it then sends nothing."""
        self._r.set(keys.webhook(msg_id), DONE, keepttl=True, xx=True)
