"""Worker presence: each worker publishes who it is, what it serves and its memory."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import redis

from shared.store import keys
from shared.store.job_reads import JobReads

# Workers are listed from an index of those that published lately (keys.WORKERS_INDEX), so
# listing them never scans the whole keyspace (which holds every job's record and events: a
# SCAN per submit grew with the job count). An index entry outlives its worker's key this
# long; the key, not the index, says alive.
INDEX_KEEP_S = 3600
# Every worker (model or webhook) publishes its facts this often; a worker whose last
# publish is TTL_S old is gone from the fleet (five missed publishes, not one blip).
PUBLISH_INTERVAL_S = 3.0
TTL_S = 15.0


class Fleet:
    """Read and write worker heartbeats kept in Redis with a short TTL."""

    def __init__(self, client: redis.Redis, *, ttl_s: float = TTL_S) -> None:
        self.r = client
        self.ttl_s = ttl_s

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Fleet:
        """Return a Fleet on its own connection pool to the Redis at url."""
        return cls(redis.Redis.from_url(url, decode_responses=True), **kwargs)

    @classmethod
    def from_store(cls, store: JobReads, **kwargs: Any) -> Fleet:
        """Return a Fleet on the job store's connection pool."""
        return cls(store.r, **kwargs)

    def publish(self, worker_id: str, info: dict[str, Any]) -> None:
        """Record that a worker is alive, with its facts (model, memory, jobs done...)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.set(keys.worker(worker_id), json.dumps(info), px=int(self.ttl_s * 1000))
        pipe.zadd(keys.WORKERS_INDEX, {worker_id: time.time()})
        pipe.execute()

    def remove(self, worker_id: str) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.delete(keys.worker(worker_id))
        pipe.zrem(keys.WORKERS_INDEX, worker_id)
        pipe.execute()

    def workers(self, model: str | None = None) -> list[dict[str, Any]]:
        """Return the live workers, optionally only those serving one model."""
        pipe = self.r.pipeline(transaction=False)
        pipe.zremrangebyscore(keys.WORKERS_INDEX, "-inf", time.time() - INDEX_KEEP_S)
        pipe.zrange(keys.WORKERS_INDEX, 0, -1)
        ids = sorted(pipe.execute()[1])
        out = []
        for raw in self.r.mget([keys.worker(i) for i in ids]) if ids else []:
            if not raw:
                continue
            info = json.loads(raw)
            if model is None or info.get("model") == model:
                out.append(info)
        return out

    def broadcast(self, command: str, **args: Any) -> int:
        """Ask every worker to run a command (e.g. cleanup); return how many listen."""
        return self.r.publish(keys.COMMANDS, json.dumps({"command": command, **args}))

    def commands(self) -> Iterator[dict[str, Any]]:
        """Yield each command broadcast from now on ({"command": name, ...args}), for ever.

        :raises redis.RedisError: when the connection drops (call again to listen again).
        """
        pubsub = self.r.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(keys.COMMANDS)
            for message in pubsub.listen():
                yield json.loads(message["data"])
        finally:
            pubsub.close()
