"""GET /metrics after real jobs on real workers, scraped from a two-process gunicorn, and
the JSON logs of every process that ran them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from shared.metrics.store import QUEUE_BUCKETS, RUN_BUCKETS, TTFT_BUCKETS
from shared.processes.child import child_env
from shared.processes.gunicorn import gunicorn_command, open_files_needed, raise_open_files_limit
from shared.processes.redis_server import free_port
from tests.conftest import ROOT, wait_for
from tests.webhook_receiver import Receiver, start_webhook_worker

pytestmark = pytest.mark.timeout(300)

KEY = "metrics-test-key"
WEB_PROCESSES = 2


class Web:
    """gunicorn with several processes, logging to a file of its own."""

    def __init__(self, settings, log: Path) -> None:
        self.settings = settings
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> Web:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        raise_open_files_limit(open_files_needed(self.settings))
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                gunicorn_command(self.settings, f"127.0.0.1:{port}", workers=WEB_PROCESSES),
                env=child_env(self.settings),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )

        def up():
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                return requests.get(self.url + "/readyz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_for(up, 30, what="gunicorn")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)

    def call(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {KEY}", **kwargs.pop("headers", {})}
        return requests.request(method, self.url + path, headers=headers, timeout=90, **kwargs)

    def scrape(self) -> dict[tuple[str, tuple], float]:
        """Return every sample of /metrics as {(name, sorted labels): value}."""
        resp = self.call("GET", "/metrics")
        assert resp.status_code == 200, resp.text
        assert resp.headers["Content-Type"].startswith("text/plain")
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(resp.text)
            for s in family.samples
        }


def value(samples, name: str, **labels) -> float:
    """Return one sample's value (0 when absent, as Prometheus sees a missing series)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def buckets(samples, name: str, **labels) -> dict[str, float]:
    return {
        dict(k)["le"]: v
        for (n, k), v in samples.items()
        if n == name + "_bucket" and all(dict(k).get(a) == b for a, b in labels.items())
    }


def expected_buckets(bounds, observations) -> dict[str, float]:
    """Return the cumulative buckets Prometheus should show for these observations."""
    out = {repr(float(b)): float(sum(1 for o in observations if o <= b)) for b in bounds}
    out["+Inf"] = float(len(observations))
    return out


@pytest.fixture(scope="module")
def settings(make_settings):
    return make_settings(
        api_keys=[KEY],
        log_format="json",
        webhook_allow_private=True,
        webhook_backoff_s=0.2,
        webhook_backoff_max_s=1.0,
    )


@pytest.fixture(scope="module")
def fleet(settings, start_worker, tmp_path_factory):
    logs = tmp_path_factory.mktemp("metrics-logs")
    workers = {
        "echo": start_worker(settings, "echo"),
        "smollm2-135m": start_worker(settings, "smollm2-135m"),
    }
    hooks = start_webhook_worker(settings, logs)
    web = Web(settings, logs / "web.log").start()
    yield web, workers, hooks
    web.stop()
    hooks.stop()


@pytest.fixture(scope="module")
def jobs(fleet):
    """Run echo jobs that succeed, fail and get canceled, a chat job, and one job canceled
    while queued for a model no worker serves; return their final records."""
    web, _workers, _hooks = fleet
    records = {"succeeded": [], "failed": [], "canceled": []}

    def run(body):
        resp = web.call("POST", "/v1/jobs", json=body)
        assert resp.status_code == 202, resp.text
        return ended(resp.json()["id"])

    def ended(job_id):
        def done():
            rec = web.call("GET", f"/v1/jobs/{job_id}").json()
            return rec if rec["status"] in ("succeeded", "failed", "canceled") else None

        return wait_for(done, 60, interval=0.2, what=f"job {job_id} to end")

    for n in range(3):
        records["succeeded"].append(run({"model": "echo", "input": {"n": n}}))
    for _ in range(2):
        records["failed"].append(run({"model": "echo", "input": {"fail": "x"}}))
    long = web.call("POST", "/v1/jobs", json={"model": "echo", "input": {"sleep_s": 30}}).json()

    def running():
        return web.call("GET", f"/v1/jobs/{long['id']}").json()["status"] == "running"

    wait_for(running, 30, what="the long echo job to run")
    # While it runs, its worker's heartbeat says so.
    wait_for(
        lambda: (
            value(
                web.scrape(),
                "conveyor_worker_running_jobs",
                worker=_echo_worker_id(web),
                model="echo",
            )
            == 1
        ),
        10,
        what="the echo worker to report one running job",
    )
    web.call("POST", f"/v1/jobs/{long['id']}/cancel")
    records["canceled"].append(ended(long["id"]))
    chat = run(
        {
            "model": "smollm2-135m",
            "task": "chat",
            "input": {"prompt": "Name a fruit.", "max_tokens": 12, "temperature": 0},
        }
    )
    queued = web.call(
        "POST", "/v1/jobs", json={"model": "minilm", "input": {"text": "hi"}, "priority": "high"}
    ).json()
    depth = value(web.scrape(), "conveyor_queue_depth", model="minilm", priority="high")
    canceled_queued = web.call("POST", f"/v1/jobs/{queued['id']}/cancel").json()
    for rec in [*records["succeeded"], *records["failed"], *records["canceled"], chat]:
        assert rec["status"] in ("succeeded", "failed", "canceled"), rec
    return {**records, "chat": chat, "queued_depth": depth, "canceled_queued": canceled_queued}


def _echo_worker_id(web) -> str:
    for (name, labels), _ in web.scrape().items():
        labels = dict(labels)
        if name == "conveyor_worker_rss_bytes" and labels["model"] == "echo":
            return labels["worker"]
    raise AssertionError("no echo worker in /metrics")


def test_job_counters_match_what_happened(fleet, jobs):
    web, _, _ = fleet
    assert [r["status"] for r in jobs["succeeded"]] == ["succeeded"] * 3
    assert [r["error"]["type"] for r in jobs["failed"]] == ["echo_failure"] * 2
    assert jobs["canceled"][0]["status"] == "canceled"
    for _ in range(2 * WEB_PROCESSES):  # every process reads the same fleet numbers
        s = web.scrape()
        assert value(s, "conveyor_jobs_submitted_total", model="echo", task="echo") == 6
        finished = {
            k: v
            for k, v in s.items()
            if k[0] == "conveyor_jobs_finished_total" and dict(k[1])["model"] == "echo" and v
        }
        assert finished == {
            (
                "conveyor_jobs_finished_total",
                (("error_type", ""), ("model", "echo"), ("status", "succeeded"), ("task", "echo")),
            ): 3,
            (
                "conveyor_jobs_finished_total",
                (
                    ("error_type", "echo_failure"),
                    ("model", "echo"),
                    ("status", "failed"),
                    ("task", "echo"),
                ),
            ): 2,
            (
                "conveyor_jobs_finished_total",
                (("error_type", ""), ("model", "echo"), ("status", "canceled"), ("task", "echo")),
            ): 1,
        }
        assert value(s, "conveyor_jobs_submitted_total", model="minilm", task="embed") == 1
        assert (
            value(
                s,
                "conveyor_jobs_finished_total",
                model="minilm",
                task="embed",
                status="canceled",
                error_type="",
            )
            == 1
        )


def test_histograms_hold_each_job_in_its_bucket(fleet, jobs):
    web, _, _ = fleet
    s = web.scrape()
    echo = [*jobs["succeeded"], *jobs["failed"], *jobs["canceled"]]
    queue = [r["metrics"]["queue_seconds"] for r in echo]
    run = [r["metrics"]["run_seconds"] for r in echo]
    assert buckets(s, "conveyor_job_queue_wait_seconds", model="echo") == expected_buckets(
        QUEUE_BUCKETS, queue
    )
    assert buckets(s, "conveyor_job_run_seconds", model="echo") == expected_buckets(
        RUN_BUCKETS, run
    )
    assert value(s, "conveyor_job_run_seconds_count", model="echo") == len(echo)
    assert value(s, "conveyor_job_run_seconds_sum", model="echo") == pytest.approx(sum(run))
    # The job canceled while queued never started: no wait or run time of it.
    assert value(s, "conveyor_job_queue_wait_seconds_count", model="minilm") == 0


def test_tokens_and_time_to_first_token(fleet, jobs):
    web, _, _ = fleet
    s = web.scrape()
    chat = jobs["chat"]["metrics"]
    assert chat["completion_tokens"] > 0 and chat["time_to_first_token_seconds"] > 0
    assert (
        value(s, "conveyor_generated_tokens_total", model="smollm2-135m")
        == chat["completion_tokens"]
    )
    assert value(s, "conveyor_prompt_tokens_total", model="smollm2-135m") == chat["prompt_tokens"]
    ttft = chat["time_to_first_token_seconds"]
    assert ttft <= chat["queue_seconds"] + chat["run_seconds"]
    assert buckets(
        s, "conveyor_job_time_to_first_token_seconds", model="smollm2-135m"
    ) == expected_buckets(TTFT_BUCKETS, [ttft])
    assert value(s, "conveyor_job_tokens_per_second_count", model="smollm2-135m") == 1
    assert value(s, "conveyor_job_tokens_per_second_sum", model="smollm2-135m") == pytest.approx(
        chat["tokens_per_second"]
    )
    # echo generates no tokens: no first-token time for it.
    assert value(s, "conveyor_job_time_to_first_token_seconds_count", model="echo") == 0


def test_queue_depth_and_workers(fleet, jobs):
    web, workers, _ = fleet
    assert jobs["queued_depth"] == 1  # by its priority, while it waited
    assert jobs["canceled_queued"]["status"] == "canceled"
    s = web.scrape()
    for priority in ("high", "normal", "low"):
        assert value(s, "conveyor_queue_depth", model="minilm", priority=priority) == 0
    assert value(s, "conveyor_workers_online", model="echo") == 1
    assert value(s, "conveyor_workers_online", model="smollm2-135m") == 1
    assert value(s, "conveyor_workers_online", model="minilm") == 0
    assert value(s, "conveyor_webhook_workers_online") == 1
    rss = {
        dict(k)["worker"]: v
        for (n, k), v in s.items()
        if n == "conveyor_worker_rss_bytes" and dict(k)["model"] == "echo"
    }
    ((worker, resident),) = rss.items()
    assert (
        worker.startswith("echo@") and int(worker.rsplit(":", 1)[1]) in workers["echo"].pool_pids()
    )
    assert resident > 10 * 2**20
    assert value(s, "conveyor_worker_running_jobs", worker=worker, model="echo") == 0
    assert value(s, "conveyor_redis_up") == 1


def test_http_requests_counted_across_processes(fleet, jobs):
    web, _, _ = fleet
    before = web.scrape()
    n = 40
    for _ in range(n):
        assert web.call("GET", "/healthz").status_code == 200
    assert web.call("GET", "/no/such/route").status_code == 404
    assert requests.get(web.url + "/v1/jobs/abc", timeout=10).status_code == 401

    def counted():
        s = web.scrape()
        grew = value(
            s, "conveyor_http_requests_total", route="/healthz", method="GET", status="200"
        ) - value(
            before, "conveyor_http_requests_total", route="/healthz", method="GET", status="200"
        )
        others = (
            value(s, "conveyor_http_requests_total", route="unmatched", method="GET", status="404"),
            value(
                s,
                "conveyor_http_requests_total",
                route="/v1/jobs/<job_id>",
                method="GET",
                status="401",
            ),
            value(s, "conveyor_http_requests_total", route="/v1/jobs", method="POST", status="202")
            >= 8,
        )
        return s if grew == n and all(others) else None

    # Each process adds its counts to Redis once a second: wait for both processes' counts.
    s = wait_for(counted, 10, what="every process to flush its request counts")
    assert (
        value(s, "conveyor_http_requests_total", route="unmatched", method="GET", status="404") >= 1
    )
    assert (
        value(
            s, "conveyor_http_requests_total", route="/v1/jobs/<job_id>", method="GET", status="401"
        )
        >= 1
    )
    assert (
        value(s, "conveyor_http_requests_total", route="/v1/jobs", method="POST", status="202") == 8
    )  # echo (6), chat, the queued minilm job
    assert value(
        s, "conveyor_http_request_duration_seconds_count", route="/healthz", method="GET"
    ) == value(s, "conveyor_http_requests_total", route="/healthz", method="GET", status="200")
    assert not any("job_id" in dict(k) or "id" in dict(k) for _, k in s)


def test_webhook_deliveries_by_outcome(fleet, jobs):
    web, _, _ = fleet
    answers = iter([503, 200])
    receiver = Receiver(lambda _d: next(answers, 200))
    try:
        before = web.scrape()
        rec = web.call(
            "POST",
            "/v1/jobs",
            json={
                "model": "echo",
                "input": {},
                "webhook": receiver.url,
                "webhook_events_filter": ["completed"],
            },
        ).json()
        receiver.wait(rec["id"], "completed", count=2)

        def grew(outcome):
            return value(
                web.scrape(), "conveyor_webhook_deliveries_total", outcome=outcome
            ) - value(before, "conveyor_webhook_deliveries_total", outcome=outcome)

        wait_for(lambda: grew("delivered") == 1, 10, what="the delivery to be counted")
        assert grew("retrying") == 1
        assert grew("gave_up") == 0
    finally:
        receiver.close()


def test_counters_survive_a_web_restart(fleet, jobs):
    web, _, _ = fleet
    kept = (
        "conveyor_jobs_submitted_total",
        "conveyor_jobs_finished_total",
        "conveyor_job_run_seconds_bucket",
        "conveyor_generated_tokens_total",
        "conveyor_webhook_deliveries_total",
    )
    healthz = {"route": "/healthz", "method": "GET", "status": "200"}
    before = web.scrape()  # earlier tests waited for their /healthz counts to land
    for _ in range(5):
        assert web.call("GET", "/healthz").status_code == 200
    web.stop()  # a graceful stop: each process flushes what it counted since its last flush
    web.start()
    after = web.scrape()
    assert (
        value(after, "conveyor_http_requests_total", **healthz)
        == value(before, "conveyor_http_requests_total", **healthz) + 5
    )
    changed = {k: (v, after.get(k)) for k, v in before.items() if k[0] in kept and after[k] != v}
    assert changed == {}
    # No HTTP count went down (some may have grown: counts a process had not flushed yet).
    lost = {
        k: (v, after.get(k))
        for k, v in before.items()
        if k[0] == "conveyor_http_requests_total" and after.get(k, 0) < v
    }
    assert lost == {}


def json_lines(path: Path) -> list[dict]:
    """Return every line of a log as JSON; fail on a line that is not one JSON object."""
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            pytest.fail(f"{path.name} line {n} is not JSON: {line!r}")
        assert isinstance(out[-1], dict) and {"ts", "level", "logger", "message"} <= out[-1].keys()
    return out


def test_every_process_logs_json_with_job_ids(fleet, jobs):
    web, workers, hooks = fleet
    echo_ids = {r["id"] for r in [*jobs["succeeded"], *jobs["failed"], *jobs["canceled"]]}
    logs = {
        "web": json_lines(web.log),
        "echo": json_lines(workers["echo"].log),
        "smollm2": json_lines(workers["smollm2-135m"].log),
        "webhooks": json_lines(hooks.log),
    }
    all_ids = echo_ids | {jobs["chat"]["id"], jobs["canceled_queued"]["id"]}
    for name, lines in logs.items():
        assert lines, name
        for line in lines:
            named = [i for i in all_ids if i in line["message"]]
            if named:  # a line about a job carries its id (and model) as fields
                assert line.get("job_id") == named[0], (name, line)
                # gunicorn's access lines too: from the answer's job headers.
                assert line.get("model"), (name, line)
    echo = logs["echo"]
    for job_id in echo_ids:
        about = [line for line in echo if line.get("job_id") == job_id]
        assert {line["model"] for line in about} == {"echo"}
        loggers = {line["logger"] for line in about}
        # Celery's own lines (message received, task ended) and ours.
        assert {"celery.worker.strategy", "celery.app.trace", "workers.runtime"} <= loggers, loggers
    assert any(line["logger"] == "stdout" for line in echo)  # Celery's banner, as records
    access = [line for line in logs["web"] if line["logger"] == "gunicorn.access"]
    assert any(line["path"] == "/metrics" and line["status"] == 200 for line in access)
    chat = [line for line in access if line.get("job_id") == jobs["chat"]["id"]]
    assert chat and {line["model"] for line in chat} == {"smollm2-135m"}
    queued = [
        line
        for line in logs["web"]
        if "queued" in line["message"] and line.get("job_id") == jobs["chat"]["id"]
    ]
    assert queued and queued[0]["model"] == "smollm2-135m"
