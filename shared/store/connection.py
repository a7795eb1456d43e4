"""Redis clients for the stores: fail fast when the server is gone, wait for a pooled one."""

from __future__ import annotations

import redis


def connect(url: str, *, pool_size: int | None = None, **kwargs) -> redis.Redis:
    """Return a Redis client that fails fast when the server is unreachable.

    pool_size bounds its connections: a caller past it waits for a free one (up to 10 s),
    as the web tier's thousands of concurrent requests must, instead of failing at once.
    """
    kwargs.setdefault("socket_connect_timeout", 3)
    # redis-py 8 reads with a 5 s timeout by default, which kills every blocking XREAD of
    # 5 s or more (job waits, event-stream heartbeats); stay well above the longest block.
    kwargs.setdefault("socket_timeout", 60)
    kwargs.setdefault("health_check_interval", 30)
    if pool_size is None:
        return redis.Redis.from_url(url, decode_responses=True, **kwargs)
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=pool_size, timeout=10, decode_responses=True, **kwargs
    )
    return redis.Redis(connection_pool=pool)
