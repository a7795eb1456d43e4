"""A payload store every host reaches: CONVEYOR_PAYLOAD_URL=s3://… through s3fs, against a
real S3 endpoint run locally (moto's server, a subprocess), with two "hosts" that share only
Redis and the bucket: web (gunicorn) with one data dir, a worker with another. A job with an
image submitted to web runs on the worker, and its media leave the bucket when it ends.
Credentials and the endpoint reach both processes the way they would in production: as
AWS_* environment variables that boto reads.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import requests

try:
    import boto3
except ImportError as exc:  # a missing prerequisite fails, saying how to get it
    raise ImportError("boto3 is missing: `make install` (the dev extra: s3fs, moto)") from exc

from shared.processes.redis_server import free_port
from tests.conftest import wait_for
from tests.integration import media_samples as media
from tests.integration.tiny_models import build_blip_vqa

pytestmark = pytest.mark.timeout(600)

BUCKET = "conveyor-payloads"
PREFIX = "media"
MODEL = "tiny-blip-vqa"
IDLE = "tiny-blip-vqa-idle"  # registered, never served


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """Start moto's S3 server on a loopback port; put its endpoint and test credentials in
    this process's environment, which the web and worker processes inherit."""
    for module, package in (("moto", "moto[server]"), ("s3fs", "s3fs")):
        assert importlib.util.find_spec(module), f"{package} is missing: `make install` (dev extra)"
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def up():
        assert proc.poll() is None, f"moto server exited:\n{log.read_text()[-2000:]}"
        try:
            return requests.get(f"{url}/moto-api/", timeout=1).ok
        except requests.RequestException:
            return False

    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "conveyor-test")
        env.setenv("AWS_SECRET_ACCESS_KEY", "conveyor-test-secret")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_ENDPOINT_URL", url)
        try:
            wait_for(up, 60, what="moto's S3 server")
            boto3.client("s3").create_bucket(Bucket=BUCKET)
            yield url
        finally:
            proc.terminate()
            proc.wait(10)


def keys(job_id: str = "") -> list[str]:
    listing = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/{job_id}")
    return [item["Key"] for item in listing.get("Contents", [])]


def local_files(settings) -> list[str]:
    return [str(p) for p in settings.data_dir.rglob("*") if p.is_file() and "payload" in str(p)]


@pytest.fixture(scope="module")
def hosts(s3_endpoint, tmp_path_factory, make_settings, start_server):
    folder = build_blip_vqa(tmp_path_factory.mktemp("tiny") / "blip")
    registry = tmp_path_factory.mktemp("s3-registry") / "models.yaml"
    registry.write_text(
        "models:\n"
        + "".join(
            f"  - {{id: {name}, backend: blip_vqa, tasks: [vqa], source: {{path: '{folder}'}}}}\n"
            for name in (MODEL, IDLE)
        )
    )
    payload_url = f"s3://{BUCKET}/{PREFIX}"
    web_host = make_settings(registry=registry, payload_url=payload_url)
    worker_host = make_settings(
        registry=registry, payload_url=payload_url, redis_url=web_host.redis_url
    )
    assert web_host.data_dir != worker_host.data_dir
    return start_server(web_host), web_host, worker_host


def submit(web, question: str, model: str = MODEL) -> str:
    resp = requests.post(
        f"{web.url}/v1/jobs",
        json={
            "model": model,
            "input": {"image": media.b64(media.image(fmt="PNG")), "question": question},
        },
        timeout=30,
    )
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def record(web, job_id: str) -> dict:
    return requests.get(f"{web.url}/v1/jobs/{job_id}", timeout=10).json()


def test_a_job_submitted_on_one_host_runs_on_another_and_its_media_leave_the_bucket(
    hosts, start_worker
):
    web, web_host, worker_host = hosts
    job_id = submit(web, "what color is the square?")
    # No worker yet: the image waits in the bucket, on neither host's disk.
    assert keys(job_id), "the image was not written to the bucket"
    assert local_files(web_host) == [] and local_files(worker_host) == []
    assert f"s3://{BUCKET}/{PREFIX}" in requests.get(f"{web.url}/admin/temp", timeout=10).text

    worker = start_worker(worker_host, MODEL, timeout=240)
    done = wait_for(
        lambda: (rec := record(web, job_id))["status"] in ("succeeded", "failed") and rec,
        120,
        what="the job to end",
    )
    assert done["status"] == "succeeded", (done, worker.tail())
    assert isinstance(done["output"]["text"], str)
    assert done["input"]["image"]["media_type"] == "image/png"
    wait_for(lambda: keys(job_id) == [], 30, what="the job's media to leave the bucket")
    assert local_files(worker_host) == []


def test_a_queued_job_canceled_on_the_web_host_leaves_no_media_in_the_bucket(hosts):
    web, _, _ = hosts
    job_id = submit(web, "is it square?", model=IDLE)  # no worker serves it: it stays queued
    assert keys(job_id)
    resp = requests.post(f"{web.url}/v1/jobs/{job_id}/cancel", timeout=10)
    assert resp.status_code == 200, resp.text
    assert record(web, job_id)["status"] == "canceled"
    wait_for(lambda: keys(job_id) == [], 30, what="the job's media to leave the bucket")
