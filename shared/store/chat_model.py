"""The chat model chosen at run time (POST /setModel), shared by every web process."""

from __future__ import annotations

import redis

from shared.store import keys
from shared.store.job_reads import JobReads


class ChatModelChoice:
    """Which chat model answers requests that name none, kept in Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self._r = client

    @classmethod
    def from_store(cls, store: JobReads) -> ChatModelChoice:
        """Return the choice on the job store's connection pool."""
        return cls(store.r)

    def get(self) -> str | None:
        """Return the chosen model id, or None when none was chosen."""
        return self._r.get(keys.CURRENT_CHAT_MODEL)

    def set(self, model_id: str) -> None:
        """Choose the model id requests naming no chat model get."""
        self._r.set(keys.CURRENT_CHAT_MODEL, model_id)
