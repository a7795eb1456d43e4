"""API keys guard every route the app has, but the health checks."""

from __future__ import annotations

import re

import pytest

from web.auth import OPEN_PATHS

KEY = "sk-conveyor-auth-test"


@pytest.fixture(scope="module")
def app(make_settings, make_app):
    return make_app(make_settings(api_keys=[KEY, "sk-second"]))


def requests_for(app) -> list[tuple[str, str]]:
    """Return (method, path) for every route and method of the app, placeholders filled."""
    out = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"x-\1", rule.rule)
        out += [(method, path) for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return out


def test_every_route_but_health_needs_a_key(app):
    client = app.test_client()
    routes = requests_for(app)
    guarded = [(m, p) for m, p in routes if p not in OPEN_PATHS]
    # The loop covers the app as it is, not a list that could fall behind it.
    assert {
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs/x-job_id/events"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/generate/x-model"),
        ("POST", "/admin/temp/cleanup"),
        ("POST", "/setModel"),
    } <= set(guarded)
    assert len(guarded) >= 30
    for method, path in guarded:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"X-API-Key": "wrong"},
            {"Authorization": f"Basic {KEY}"},
        ):
            resp = client.open(path, method=method, headers=headers, json={})
            assert resp.status_code == 401, (method, path, headers, resp.status_code)
            assert "API key" in resp.get_json()["error"]["message"]  # either envelope


def test_open_paths_and_good_keys_pass(app):
    client = app.test_client()
    opened = [(m, p) for m, p in requests_for(app) if p in OPEN_PATHS]
    assert {p for _m, p in opened} >= {"/healthz", "/readyz", "/health"}
    for method, path in opened:
        assert client.open(path, method=method).status_code == 200, path
    for headers in (
        {"Authorization": f"Bearer {KEY}"},
        {"Authorization": "bearer sk-second"},
        {"X-API-Key": KEY},
    ):
        resp = client.get("/v1/jobs", headers=headers)
        assert resp.status_code == 200, (headers, resp.get_json())
