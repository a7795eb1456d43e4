"""With Redis unreachable the API says 503 in the envelope; health stays up."""

from __future__ import annotations

from shared.redis_server import free_port


def test_readyz_and_submit_answer_503_when_redis_is_down(make_settings, make_app):
    settings = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    client = make_app(settings).test_client()

    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["error"]["type"] == "service_unavailable"

    for resp in (client.post("/v1/jobs", json={"model": "echo", "input": {}}),
                 client.get("/v1/jobs/abc"), client.get("/v1/jobs"), client.get("/v1/models")):
        assert resp.status_code == 503, resp.get_data(as_text=True)
        assert resp.get_json()["error"]["type"] == "service_unavailable"
        assert resp.headers["Retry-After"]


def test_readyz_ok_with_redis(make_settings, make_app):
    client = make_app(make_settings()).test_client()
    assert client.get("/readyz").get_json() == {"status": "ready", "redis": "ok"}
