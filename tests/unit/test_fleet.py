"""Worker presence on a real Redis: listing workers never scans the keyspace."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from shared.store import keys
from shared.store.fleet import INDEX_KEEP_S, Fleet
from tests.conftest import wait_for


@pytest.fixture
def client(redis_db):
    return redis.Redis.from_url(redis_db(), decode_responses=True)


def test_publish_list_and_remove(client):
    fleet = Fleet(client)
    fleet.publish("echo@h:1", {"model": "echo", "pid": 1})
    fleet.publish("llm@h:2", {"model": "llm", "pid": 2})
    assert [w["pid"] for w in fleet.workers()] == [1, 2]
    assert [w["pid"] for w in fleet.workers("llm")] == [2]
    fleet.remove("llm@h:2")
    assert fleet.workers("llm") == [] and client.zscore(keys.WORKERS_INDEX, "llm@h:2") is None


def test_expired_workers_vanish_and_stale_index_entries_are_pruned(client):
    fleet = Fleet(client, ttl_s=0.2)
    fleet.publish("echo@h:1", {"model": "echo"})
    time.sleep(0.3)
    assert fleet.workers() == []  # the key lapsed: gone, whatever the index says
    client.zadd(keys.WORKERS_INDEX, {"ghost@h:9": time.time() - INDEX_KEEP_S - 1})
    fleet.workers()
    assert client.zscore(keys.WORKERS_INDEX, "ghost@h:9") is None


def test_listing_ignores_unrelated_keys(client):
    # Job records and events fill the keyspace; only indexed workers are read.
    client.set(keys.worker("not-indexed"), '{"model": "echo"}')
    client.mset({keys.job(str(i)): "{}" for i in range(2000)})
    fleet = Fleet(client)
    fleet.publish("echo@h:1", {"model": "echo", "pid": 1})
    assert [w["pid"] for w in fleet.workers("echo")] == [1]


def test_broadcast_commands_reach_every_listener(client):
    fleet = Fleet(client)
    got: list[list[dict]] = [[], []]

    def listen(into: list[dict]) -> None:
        for command in Fleet(client).commands():
            into.append(command)
            return

    threads = [threading.Thread(target=listen, args=(box,), daemon=True) for box in got]
    for thread in threads:
        thread.start()
    # A broadcast reaches those subscribed by then: wait until both listen.
    wait_for(lambda: client.pubsub_numsub(keys.COMMANDS)[0][1] == 2, 10, what="listeners")
    assert fleet.broadcast("cleanup", reason="test") == 2
    for thread in threads:
        thread.join(10)
    assert got == [[{"command": "cleanup", "reason": "test"}]] * 2
