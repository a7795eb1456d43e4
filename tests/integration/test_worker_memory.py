"""Worker memory: what workers publish (admin views), the RSS ceiling that recycles a
worker, out-of-memory that fails a job and then recycles a worker that keeps hitting it,
and workers or pulls for hub models that are not on this machine.

Out-of-memory is real here, not simulated: the `memory_limit_mb` option caps the pool
process's address space after the model loads, and a classification batch too large for
that cap makes torch's CPU allocator fail (which the backend reports as
torch.OutOfMemoryError, as CUDA's allocator would).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import redis
import yaml

from shared.processes.child import child_env
from shared.store.fleet import Fleet
from tests.conftest import ROOT, wait_for
from tests.integration.tiny_models import build_bert_classifier

pytestmark = pytest.mark.timeout(600)

# Exactly the tiny BERT's 128-token window. A forward pass over 4096 of them needs about
# 1 GiB of activations, far past the 384 MiB cap, while tokenizing them takes well under
# it (the Rust tokenizer aborts the process on a failed allocation instead of raising).
LONG_TEXT = " ".join(["this movie was great i loved it"] * 18)
OOM_BATCH = 4096


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory")
    folder = build_bert_classifier(root / "bert")
    entries = [
        {
            "id": "bert-plain",
            "backend": "classifier",
            "tasks": ["classify"],
            "source": {"path": str(folder)},
            "quantization": "int8",
        },
        {
            "id": "bert-capped",
            "backend": "classifier",
            "tasks": ["classify"],
            "source": {"path": str(folder)},
            "options": {"memory_limit_mb": 384, "batch_size": OOM_BATCH},
            # The batch is millions of characters, far past the default input limit.
            "limits": {"max_batch": OOM_BATCH, "max_input_chars": 10_000_000},
        },
        {
            "id": "bert-ceiling",
            "backend": "classifier",
            "tasks": ["classify"],
            "source": {"path": str(folder)},
        },
        {
            "id": "hub-model",
            "backend": "classifier",
            "tasks": ["classify"],
            "source": {"hf_repo": "conveyor-tests/never-downloaded"},
        },
    ]
    path = root / "models.yaml"
    path.write_text(yaml.safe_dump({"models": entries}))
    return path


@pytest.fixture(scope="module")
def stack(registry, make_settings, start_worker, make_app):
    settings = make_settings(registry=registry)
    plain = start_worker(settings, "bert-plain", wait=False)
    capped = start_worker(settings, "bert-capped", wait=False)
    fleet = Fleet(redis.Redis.from_url(settings.redis_url, decode_responses=True))
    for w in (plain, capped):
        wait_for(
            lambda w=w: any(
                f.get("loaded") and f.get("pid") in w.pool_pids() for f in fleet.workers(w.model)
            ),
            180,
            what=f"worker {w.model}",
        )
    app = make_app(settings)
    return app.test_client(), settings, fleet


def run(client, model, input, expect="succeeded"):
    resp = client.post("/v1/jobs", json={"model": model, "input": input})
    assert resp.status_code == 202, resp.get_json()
    job_id = resp.get_json()["id"]

    def ended():
        rec = client.get(f"/v1/jobs/{job_id}").get_json()
        return rec if rec["status"] in ("succeeded", "failed", "canceled") else None

    rec = wait_for(ended, 180, what=f"job on {model}")
    assert rec["status"] == expect, rec
    return rec


def serving_pid(fleet, model):
    """Return the pid of the one live pool process serving a model, once there is one."""

    def one():
        live = [w for w in fleet.workers(model) if w.get("loaded")]
        return live[0]["pid"] if len(live) == 1 else None

    return wait_for(one, 120, what=f"one loaded worker for {model}")


def test_admin_memory_shows_every_worker(stack):
    client, _, _ = stack
    before = {w["model"]: w for w in client.get("/admin/memory").get_json()["workers"]}
    run(client, "bert-plain", {"text": "great"})

    def plain_after_job():
        for w in client.get("/admin/memory").get_json()["workers"]:
            if w["model"] == "bert-plain" and w["jobs_done"] > before["bert-plain"]["jobs_done"]:
                return w
        return None

    after = wait_for(plain_after_job, 15, what="the job to show in /admin/memory")
    assert set(before) >= {"bert-plain", "bert-capped"}
    assert after["memory"]["rss_bytes"] > 50 * 2**20  # torch + transformers + the model
    assert after["pid"] and after["current_job"] is None
    models = {m["id"]: m for m in client.get("/admin/models").get_json()["models"]}
    plain = models["bert-plain"]
    assert plain["quantization"] == "int8" and plain["workers_online"] == 1
    worker = plain["workers"][0]
    assert worker["loaded"] is True and worker["load_seconds"] > 0
    assert worker["health"]["quantization"] == "int8"
    assert worker["health"]["labels"] == ["negative", "positive"]
    assert models["hub-model"]["workers_online"] == 0


def test_out_of_memory_fails_the_job_and_the_worker_keeps_serving(stack):
    client, _, fleet = stack
    pid = serving_pid(fleet, "bert-capped")
    rec = run(client, "bert-capped", {"texts": [LONG_TEXT] * OOM_BATCH}, expect="failed")
    assert rec["error"]["type"] == "out_of_memory"
    assert "can't allocate memory" in rec["error"]["message"]
    ok = run(client, "bert-capped", {"texts": [LONG_TEXT] * 8})
    assert len(ok["output"]["results"]) == 8
    assert serving_pid(fleet, "bert-capped") == pid  # the same process served it


def test_worker_that_keeps_running_out_of_memory_is_replaced(stack):
    client, _, fleet = stack
    pid = serving_pid(fleet, "bert-capped")
    for _ in range(3):  # runtime.OOM_EXIT_AFTER consecutive failures
        rec = run(client, "bert-capped", {"texts": [LONG_TEXT] * OOM_BATCH}, expect="failed")
        assert rec["error"]["type"] == "out_of_memory"
    new_pid = wait_for(
        lambda: (p := serving_pid(fleet, "bert-capped")) != pid and p,
        120,
        what="a fresh pool process",
    )
    assert new_pid != pid
    run(client, "bert-capped", {"text": "great"})


def test_worker_past_its_memory_ceiling_finishes_the_job_and_is_replaced(stack, start_worker):
    client, settings, fleet = stack
    # CONVEYOR_WORKER_MAX_MEMORY_MB=64: torch alone takes more, so every job crosses it.
    ceiling = settings.model_copy(update={"worker_max_memory_mb": 64})
    worker = start_worker(ceiling, "bert-ceiling")
    first = serving_pid(fleet, "bert-ceiling")
    rec = run(client, "bert-ceiling", {"text": "great"})
    assert rec["output"]["labels"]  # the job finished before the process was replaced
    second = wait_for(
        lambda: (p := serving_pid(fleet, "bert-ceiling")) != first and p,
        120,
        what="a fresh pool process",
    )
    assert second in worker.pool_pids() and first not in worker.pool_pids()
    assert worker.proc.poll() is None  # the worker itself keeps running
    fresh = next(w for w in fleet.workers("bert-ceiling") if w["pid"] == second)
    assert fresh["jobs_done"] == 0
    run(client, "bert-ceiling", {"text": "great"})
    worker.stop()


def _cli(args, settings, registry, **env):
    full = child_env(settings, {"CONVEYOR_REGISTRY": str(registry), **env})
    full.pop("HF_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "shared.cli.main", *args],
        env=full,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_worker_for_a_model_not_on_disk_exits_with_the_fix(stack, registry, tmp_path):
    _, settings, _ = stack
    proc = _cli(
        ["worker", "--model", "hub-model"],
        settings,
        registry,
        HF_HOME=str(tmp_path / "hf"),
        HF_HUB_OFFLINE="1",
    )
    assert proc.returncode != 0
    assert "model hub-model is not on disk" in proc.stderr
    assert "conveyor models pull hub-model" in proc.stderr
    assert "source: {path: /models/hub-model}" in proc.stderr


@pytest.mark.parametrize(
    "env, why",
    [
        ({"HF_HUB_OFFLINE": "1"}, "offline mode is on (HF_HUB_OFFLINE=1)"),
        (
            {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"},
            "the Hugging Face hub at http://127.0.0.1:9 is unreachable",
        ),
    ],
)
def test_models_pull_without_the_hub_says_so_and_how_to_use_a_folder(
    stack, registry, tmp_path, env, why
):
    _, settings, _ = stack
    proc = _cli(
        ["models", "pull", "hub-model"], settings, registry, HF_HOME=str(tmp_path / "hf"), **env
    )
    assert proc.returncode != 0
    assert "could not download conveyor-tests/never-downloaded" in proc.stderr
    assert why in proc.stderr
    assert "source: {path: /models/hub-model}" in proc.stderr
