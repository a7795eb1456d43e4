"""The Flask front door. Never imports workers/ or torch."""

from __future__ import annotations

import logging

from flask import Flask

from shared.config import Settings
from shared.logs import setup_logging
from web.app_services import EXTENSION, Services, build_services
from web.errors import register_error_handlers

log = logging.getLogger(__name__)

__all__ = ["Services", "build_services", "create_app"]


def create_app(settings: Settings | None = None) -> Flask:
    """Build the Flask app; tests pass their own settings."""
    settings = settings or Settings()
    setup_logging(settings.log_level, settings.log_format)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False
    app.extensions[EXTENSION] = build_services(settings)
    register_error_handlers(app)

    from web.api import admin, docs, events, health, jobs, metrics, openai, page, seeds
    from web.auth import install_auth

    metrics.install(app)  # before auth, so refused requests are timed and counted too
    install_auth(app, settings)
    for module in (health, jobs, events, admin, openai, seeds, page):
        app.register_blueprint(module.bp)
    docs.install(app)
    return app
