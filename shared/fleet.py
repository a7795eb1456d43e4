"""Worker presence: each worker publishes who it is, what it serves and its memory."""

from __future__ import annotations

import json
from typing import Any

import redis

from shared.results import PREFIX

WORKER_KEY = PREFIX + ":worker:{}"
COMMANDS_CHANNEL = PREFIX + ":commands"


class Fleet:
    """Read and write worker heartbeats kept in Redis with a short TTL."""

    def __init__(self, client: redis.Redis, *, ttl_s: float = 15.0) -> None:
        self.r = client
        self.ttl_s = ttl_s

    def publish(self, worker_id: str, info: dict[str, Any]) -> None:
        """Record that a worker is alive, with its facts (model, memory, jobs done...)."""
        self.r.set(WORKER_KEY.format(worker_id), json.dumps(info), px=int(self.ttl_s * 1000))

    def remove(self, worker_id: str) -> None:
        self.r.delete(WORKER_KEY.format(worker_id))

    def workers(self, model: str | None = None) -> list[dict[str, Any]]:
        """Return the live workers, optionally only those serving one model."""
        keys = sorted(self.r.scan_iter(WORKER_KEY.format("*"), count=500))
        out = []
        for raw in self.r.mget(keys) if keys else []:
            if not raw:
                continue
            info = json.loads(raw)
            if model is None or info.get("model") == model:
                out.append(info)
        return out

    def broadcast(self, command: str, **args: Any) -> int:
        """Ask every worker to run a command (e.g. cleanup); return how many listen."""
        return self.r.publish(COMMANDS_CHANNEL, json.dumps({"command": command, **args}))
