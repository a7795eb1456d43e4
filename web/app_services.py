"""The services one app's views use, built once per app and kept in app.extensions."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from shared.config import Settings
from shared.payloads import PayloadStore
from shared.registry import Registry, load_registry
from shared.store.chat_model import ChatModelChoice
from shared.store.fleet import Fleet
from shared.store.jobs import JobStore, connect
from shared.store.on_demand import OnDemandBoard
from web.catalog import ModelCatalog
from web.dispatch import Dispatcher
from web.hold_limit import HoldLimit
from web.housekeeping import Housekeeping
from web.job_feeds import JobFeeds
from web.service import JobService

EXTENSION = "conveyor"
# Redis connections one web process opens for its requests' commands, however many
# requests run at once (they take turns); held streams and waits add one reader in all.
REDIS_POOL_SIZE = 64


@dataclass
class Services:
    """What the views use."""

    settings: Settings
    registry: Registry
    store: JobStore
    payloads: PayloadStore
    fleet: Fleet
    jobs: JobService  # the job lifecycle
    catalog: ModelCatalog  # the models with live facts, and the default models
    housekeeping: Housekeeping  # operators' memory reports and cleanups
    holds: HoldLimit  # streams and waits held open at once, capped


def build_services(settings: Settings) -> Services:
    """Wire the stores, dispatcher and services for one app."""
    registry = load_registry(settings.registry)
    client = connect(settings.redis_url, pool_size=REDIS_POOL_SIZE)
    store = JobStore(client, ttl_s=settings.result_ttl_s)
    payloads = PayloadStore(settings.payload_location, max_bytes=settings.max_media_bytes)
    fleet = Fleet.from_store(store)
    on_demand = OnDemandBoard.from_store(store)
    jobs = JobService(
        settings,
        registry,
        store,
        payloads,
        Dispatcher(settings, registry),
        fleet,
        JobFeeds(store),
        on_demand=on_demand,
    )
    catalog = ModelCatalog(registry, store, fleet, ChatModelChoice.from_store(store), on_demand)
    housekeeping = Housekeeping(
        store, payloads, fleet, orphan_grace_s=settings.payload_orphan_grace_s
    )
    holds = HoldLimit(settings.max_held_requests)
    return Services(settings, registry, store, payloads, fleet, jobs, catalog, housekeeping, holds)


def services() -> Services:
    """Return the services of the app handling the current request."""
    return current_app.extensions[EXTENSION]
