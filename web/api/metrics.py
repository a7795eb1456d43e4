"""GET /metrics: the whole fleet in Prometheus' text format, and the HTTP request hooks."""

from __future__ import annotations

import time

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from shared.metrics.collector import FleetCollector
from shared.metrics.store import MetricsStore
from web.request_metrics import RequestMetrics

bp = Blueprint("metrics", __name__)
EXTENSION = "conveyor_metrics"


@bp.get("/metrics")
def metrics():
    encoder, content_type = choose_encoder(request.headers.get("Accept"))
    return Response(encoder(current_app.extensions[EXTENSION]), content_type=content_type)


def install(app: Flask) -> None:
    """Serve /metrics and count every request; call it before install_auth (401s count)."""
    services = app.extensions["conveyor"]
    store = MetricsStore.from_store(services.store)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(store, services.store, services.fleet, services.registry))
    app.extensions[EXTENSION] = registry
    requests = RequestMetrics(store)

    @app.before_request
    def _start_clock():
        g.metrics_t0 = time.perf_counter()

    @app.after_request
    def _count(response):
        t0 = g.get("metrics_t0")
        if t0 is not None:
            route = request.url_rule.rule if request.url_rule is not None else "unmatched"
            requests.observe(route, request.method, response.status_code, time.perf_counter() - t0)
        return response

    app.register_blueprint(bp)
