"""Thousands of clients held at once by one gunicorn worker: event streams and waits, while
health checks and submits still answer; past the cap, 503 with Retry-After.

Times are only hang guards: the benchmark (`python -m bench held`) prints the percentiles.
"""

from __future__ import annotations

import pytest
import requests

from bench.held_streams import HeldOptions, hold, probe, start_long_jobs
from shared.processes.gunicorn import raise_open_files_limit
from tests.conftest import wait_for
from tests.webhook_receiver import sse_frames

pytestmark = pytest.mark.timeout(240)

STREAMS, WAITS, JOBS = 2000, 500, 2


@pytest.fixture(scope="module")
def settings(make_settings):
    return make_settings()


@pytest.fixture(scope="module")
def url(settings, start_worker, start_server):
    for _ in range(JOBS):  # one long job each
        start_worker(settings, "echo")
    return start_server(settings).url


def test_thousands_of_streams_and_waits_are_held_while_health_answers(url):
    raise_open_files_limit(STREAMS + WAITS + 1000)  # this process's client sockets
    opts = HeldOptions(streams=STREAMS, waits=WAITS, jobs=JOBS, job_s=15, wait_s=60)
    job_ids = start_long_jobs(url, opts)
    streams, waits, probes = hold(
        url, job_ids, opts, limit_s=100, while_held=lambda: probe(url, 3.0, rate_hz=10)
    )

    errors = [c.error for c in streams + waits if c.error]
    assert not errors, f"{len(errors)} clients failed, e.g. {errors[:5]}"
    assert all(c.first is not None for c in streams), "a stream never got its first event"
    assert {c.terminal for c in streams} == {"succeeded"}, "a stream missed its job's end"
    # The waits' jobs queued behind the long ones; each answer is the ended job.
    assert {c.terminal for c in waits} == {"succeeded"}
    assert len({c.job_id for c in waits}) == WAITS
    assert probes is not None, "the streams were never all held"
    assert not probes.failures, probes.failures[:5]
    assert all(probes.latency.get(r) for r in ("healthz", "readyz", "submit"))


@pytest.fixture(scope="module")
def capped_url(make_settings, start_worker, start_server):
    settings = make_settings(max_held_requests=2, sse_heartbeat_s=0.5)
    start_worker(settings, "echo")
    return start_server(settings).url


def test_past_the_cap_streams_and_waits_get_503_and_health_still_answers(capped_url):
    url = capped_url
    job = requests.post(
        f"{url}/v1/jobs", json={"model": "echo", "input": {"sleep_s": 20}}, timeout=10
    ).json()
    events = f"{url}/v1/jobs/{job['id']}/events"
    held = [requests.get(events, stream=True, timeout=30) for _ in range(2)]
    # Kept referenced: a frame reader collected early would close its connection.
    readers = [sse_frames(resp) for resp in held]
    try:
        for resp, reader in zip(held, readers, strict=True):
            assert resp.status_code == 200
            next(reader)  # it is held now
        refused = [
            requests.get(events, timeout=10),
            requests.post(
                f"{url}/v1/jobs",
                json={"model": "echo", "input": {}},
                headers={"Prefer": "wait=5"},
                timeout=10,
            ),
            requests.post(
                f"{url}/v1/chat/completions",
                timeout=10,
                json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
            ),
        ]
        for resp in refused:
            assert resp.status_code == 503, resp.text
            assert int(resp.headers["Retry-After"]) >= 1
        assert refused[0].json()["error"]["code"] == "too_many_held_requests"
        # What is not held still answers: health, submits, polls.
        assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
        assert requests.get(f"{url}/readyz", timeout=5).status_code == 200
        quick = requests.post(f"{url}/v1/jobs", json={"model": "echo", "input": {}}, timeout=10)
        assert quick.status_code == 202
        assert requests.get(f"{url}/v1/jobs/{job['id']}", timeout=5).status_code == 200
    finally:
        for resp in held:
            resp.close()

    def admitted():  # the server notices the closed streams at their next heartbeat
        resp = requests.get(f"{url}/v1/jobs/{job['id']}", headers={"Prefer": "wait=1"}, timeout=10)
        return resp.status_code != 503 and resp

    resp = wait_for(admitted, 20, interval=0.5, what="a place under the cap")
    assert resp.status_code == 200
    requests.post(f"{url}/v1/jobs/{job['id']}/cancel", timeout=10)
