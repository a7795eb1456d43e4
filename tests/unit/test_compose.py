"""Static checks of docker-compose.yml and .env.example: the compose-spec schema, the
services and what they share, settings, monitoring. No Docker engine is needed."""

from __future__ import annotations

import json
import os
import re

import pytest
import yaml

from shared.config import Settings
from shared.registry import load_registry
from tests.unit.deploy_files import (
    PREFIX,
    ROOT,
    InterpolationError,
    command_of,
    compose_and_vars,
    compose_raw,
    dockerfile_stages,
    environment_of,
    instructions,
    interpolate,
    model_of,
    read_env_file,
    schema_errors,
    services,
    worker_services,
)

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
