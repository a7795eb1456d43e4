"""The Flask front door. Never imports workers/ or torch."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis
from flask import Flask

from shared.config import Settings
from shared.logs import setup_logging
from shared.payloads import PayloadStore
from shared.registry import Registry, load_registry
from shared.store.fleet import Fleet
from shared.store.jobs import JobStore, connect
from shared.store.on_demand import OnDemandBoard
from web.dispatch import Dispatcher
from web.errors import register_error_handlers
from web.hold_limit import HoldLimit
from web.job_feeds import JobFeeds
from web.service import JobService

log = logging.getLogger(__name__)

# Redis connections one web process opens for its requests' commands, however many
# requests run at once (they take turns); held streams and waits add one reader in all.
REDIS_POOL_SIZE = 64


@dataclass
class Services:
    """What the views use, built once per app and kept in app.extensions."""

    settings: Settings
    registry: Registry
    redis: redis.Redis
    store: JobStore
    payloads: PayloadStore
    fleet: Fleet
    jobs: JobService
    holds: HoldLimit  # streams and waits held open at once, capped


def build_services(settings: Settings) -> Services:
    """Wire the stores, dispatcher and job service for one app."""
    registry = load_registry(settings.registry)
    client = connect(settings.redis_url, pool_size=REDIS_POOL_SIZE)
    store = JobStore(client, ttl_s=settings.result_ttl_s)
    payloads = PayloadStore(settings.payload_location, max_bytes=settings.max_media_bytes)
    fleet = Fleet(client)
    jobs = JobService(
        settings,
        registry,
        store,
        payloads,
        Dispatcher(settings, registry),
        fleet,
        JobFeeds(store),
        on_demand=OnDemandBoard(client),
    )
    holds = HoldLimit(settings.max_held_requests)
    return Services(settings, registry, client, store, payloads, fleet, jobs, holds)


def create_app(settings: Settings | None = None) -> Flask:
    """Build the Flask app; tests pass their own settings."""
    settings = settings or Settings()
    setup_logging(settings.log_level, settings.log_format)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False
    app.extensions["conveyor"] = build_services(settings)
    register_error_handlers(app)

    from web.api import admin, events, health, jobs, metrics, openai, page, seeds
    from web.auth import install_auth

    metrics.install(app)  # before auth, so refused requests are timed and counted too
    install_auth(app, settings)
    for module in (health, jobs, events, admin, openai, seeds, page):
        app.register_blueprint(module.bp)
    return app
