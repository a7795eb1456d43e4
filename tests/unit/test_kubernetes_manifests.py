"""Static checks of the Kubernetes manifests (docs/kubernetes), as test_compose.py does
for compose: no cluster is needed.

The kustomizations are rendered in Python (kubernetes_render.py: the subset of kustomize
they use, since no kustomize binary comes from PyPI). Every Kubernetes object then passes
the Kubernetes JSON schemas (kubernetes-validate, strict: an unknown field fails); KEDA's
ScaledObject and TriggerAuthentication are custom resources, so they are checked against
the fields of KEDA's CRDs (kubernetes_render.py). Images, commands, environment names,
settings and queue names are looked up in the code.
"""

from __future__ import annotations

import copy
import json
import os
import re
from functools import cache
from pathlib import Path

import pytest
import yaml

try:
    import kubernetes_validate
except ImportError as exc:  # a missing prerequisite fails, saying how to get it
    raise ImportError("kubernetes-validate is missing: `make install` (the dev extra)") from exc

from shared.celery_app import broker_keys, job_time_limits
from shared.config import Settings
from shared.registry import load_registry
from tests.unit.deploy_files import (
    command_of,
    dockerfile_stages,
    instructions,
    services,
    worker_entrypoint_script,
)
from tests.unit.kubernetes_render import (
    CLUSTER_WIDE,
    KEDA,
    containers,
    keda_errors,
    key,
    render,
)

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "docs" / "kubernetes"
BASE = K8S / "base"
OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
PREFIX = "CONVEYOR_"


@cache
def base() -> tuple[dict, ...]:
    return tuple(render(BASE))


def of_kind(kind: str, docs=None) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in (docs or base()) if d["kind"] == kind}


def workers() -> dict[str, dict]:
    """Return the worker Deployments by model id."""
    found = {}
    for deployment in of_kind("Deployment").values():
        args = containers(deployment)[0].get("args", [])
        if "--model" in args:
            found[args[args.index("--model") + 1]] = deployment
    return found


def registry():
    return load_registry(Settings().registry)


def pod_labels(deployment: dict) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict, labels: dict[str, str]) -> bool:
    return selector["matchLabels"].items() <= labels.items()


# ---------------------------------------------------------------- kustomize and schemas


def test_everything_lives_in_the_namespace_the_kustomization_names():
    namespace = yaml.safe_load((BASE / "kustomization.yaml").read_text())["namespace"]
    assert of_kind("Namespace").keys() == {namespace}
    for doc in base():
        if doc["kind"] not in CLUSTER_WIDE:
            assert doc["metadata"]["namespace"] == namespace, key(doc)


def test_the_base_kustomization_lists_every_manifest():
    listed = yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"]
    on_disk = sorted(
        str(p.relative_to(BASE)) for p in BASE.rglob("*.yaml") if p.name != "kustomization.yaml"
    )
    assert sorted(listed) == on_disk
    assert OVERLAYS, "no overlay (external Redis) under docs/kubernetes/overlays"


def schema_errors(doc: dict) -> list[str]:
    try:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{key(doc)}: {'/'.join(map(str, exc.path))}: {exc.message}"]
    return []


@pytest.mark.parametrize("folder", [BASE, *OVERLAYS], ids=lambda p: p.name)
def test_every_kubernetes_object_passes_the_kubernetes_schemas(folder):
    docs = [d for d in render(folder) if d["apiVersion"] != KEDA]
    assert {"Deployment", "StatefulSet", "Service", "Secret", "PodDisruptionBudget"} <= {
        d["kind"] for d in docs
    } or folder != BASE
    errors = [e for doc in docs for e in schema_errors(doc)]
    assert not errors, "\n".join(errors)


def test_the_schema_check_catches_mistakes():
    web = copy.deepcopy(of_kind("Deployment")["web"])
    web["spec"]["template"]["spec"]["terminationGracePeriod"] = 30
    assert schema_errors(web)
    web = copy.deepcopy(of_kind("Deployment")["web"])
    web["spec"]["replicas"] = "two"
    assert schema_errors(web)


def test_keda_objects_have_the_fields_of_kedas_crds():
    docs = [d for d in base() if d["apiVersion"] == KEDA]
    assert {d["kind"] for d in docs} == {"ScaledObject", "TriggerAuthentication"}
    errors = [e for doc in docs for e in keda_errors(doc)]
    assert not errors, "\n".join(errors)
    broken = copy.deepcopy(of_kind("ScaledObject")["worker-echo"])
    broken["spec"]["triggers"][0]["metadata"]["listname"] = "model.echo"
    broken["spec"]["minReplicas"] = 0
    assert len(keda_errors(broken)) == 2


# ---------------------------------------------------------------- images and commands


def test_web_and_webhooks_run_the_web_image_with_composes_commands():
    deployments = of_kind("Deployment")
    for name, service in (("web", "web"), ("webhooks", "webhooks")):
        (container,) = containers(deployments[name])
        assert container["image"].split(":")[0] == "conveyor-web", name
        assert container["command"] == command_of(services()[service]), name
    (web,) = containers(deployments["web"])
    port = int(web["command"][web["command"].index("--port") + 1])
    assert web["ports"] == [{"name": "http", "containerPort": port}]
    service = of_kind("Service")["web"]
    assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels(deployments["web"]))
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_web_is_probed_on_healthz_and_readyz_which_the_api_serves():
    (web,) = containers(of_kind("Deployment")["web"])
    assert web["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert web["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    routes = "".join(p.read_text() for p in (ROOT / "web").rglob("*.py"))
    for path in ("/readyz", "/healthz"):
        assert re.search(rf"\.(get|route)\(\"{path}\"", routes), f"no route {path} in web/"


def test_workers_run_the_worker_image_entrypoint_with_a_registry_model():
    models = registry()
    assert set(workers()) >= {"smollm2-135m", "echo", "minilm"}
    entrypoint = json_words(instructions(dockerfile_stages("Dockerfile.worker")[-1], "ENTRYPOINT"))
    assert entrypoint == ["conveyor-worker-entrypoint"]
    assert 'exec conveyor worker "$@"' in worker_entrypoint_script()
    for model, deployment in workers().items():
        (container,) = containers(deployment)
        assert model in models, f"{model} is not in shared/models.yaml"
        assert "command" not in container, "workers run the image's entrypoint"
        assert container["args"] == ["--model", model]
        assert container["image"].split(":")[0] in ("conveyor-worker", "conveyor-worker-cuda")
        assert pod_labels(deployment)["conveyor/model"] == model


def json_words(exec_forms: list[str]) -> list[str]:
    return yaml.safe_load(exec_forms[-1])


def test_pods_run_as_the_images_user():
    uid = int(instructions(dockerfile_stages("Dockerfile.worker")[-1], "USER")[-1].split(":")[0])
    for name, deployment in of_kind("Deployment").items():
        context = deployment["spec"]["template"]["spec"]["securityContext"]
        assert context["runAsNonRoot"] and context["runAsUser"] == uid, name


# ---------------------------------------------------------------- settings and secrets


def container_env(container: dict) -> dict[str, str]:
    """Return a container's environment as the kubelet builds it: ConfigMaps and Secrets
    (their placeholder values) first, then env in order, with $(VAR) expanded."""
    configs, secrets = of_kind("ConfigMap"), of_kind("Secret")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configs[source["configMapRef"]["name"]]["data"])
        else:
            ref = source["secretRef"]
            assert ref["name"] in secrets or ref.get("optional"), ref
            env.update(secrets.get(ref["name"], {}).get("stringData", {}))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], item["value"])
            continue
        if "configMapKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["configMapKeyRef"]
            source = configs[ref["name"]].get("data", {})
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            source = secrets[ref["name"]]["stringData"]
        assert ref["key"] in source or ref.get("optional"), f"{item['name']}: {ref} is missing"
        if ref["key"] in source:
            env[item["name"]] = source[ref["key"]]
    return env


def conveyor_containers() -> dict[str, dict]:
    return {
        f"{name}/{c['name']}": c
        for name, d in of_kind("Deployment").items()
        for c in containers(d)
        if c["image"].startswith("conveyor-")
    }


def test_every_conveyor_variable_is_a_setting():
    names = set(of_kind("ConfigMap")["conveyor-config"]["data"])
    for container in conveyor_containers().values():
        names |= {item["name"] for item in container.get("env", [])}
    conveyor = {n for n in names if n.startswith(PREFIX)}
    assert {"CONVEYOR_REDIS_URL", "CONVEYOR_PAYLOAD_URL", "CONVEYOR_API_KEYS"} <= conveyor
    unknown = {n for n in conveyor if n.removeprefix(PREFIX).lower() not in Settings.model_fields}
    assert not unknown, f"not Settings fields: {unknown}"


def test_each_container_environment_makes_valid_settings(monkeypatch):
    secrets = of_kind("Secret")["conveyor-secrets"]["stringData"]
    password = secrets["redis-password"]
    redis = of_kind("Service")["redis"]
    for name, container in conveyor_containers().items():
        for variable in [k for k in os.environ if k.startswith(PREFIX)]:
            monkeypatch.delenv(variable)
        env = container_env(container)
        for variable, value in env.items():
            monkeypatch.setenv(variable, value)
        settings = Settings()
        expected = f"redis://:{password}@{redis['metadata']['name']}:"
        assert settings.redis_url.startswith(expected), name
        assert settings.redis_url.endswith(f":{redis['spec']['ports'][0]['port']}/0"), name
        assert settings.payload_location.startswith("s3://"), name  # every node reaches it
        assert settings.webhook_secret, name
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"} <= set(env), name
        if name.startswith("web/"):
            assert settings.api_keys == json.loads(secrets["api-keys"])


def test_the_secrets_hold_the_redis_password_api_keys_and_webhook_secret():
    data = of_kind("Secret")["conveyor-secrets"]["stringData"]
    assert {"redis-password", "api-keys", "webhook-secret"} <= set(data)
    (redis,) = containers(of_kind("StatefulSet")["redis"])
    env = container_env(redis)
    assert env["REDIS_PASSWORD"] == env["REDISCLI_AUTH"] == data["redis-password"]
    args = redis["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert args[args.index("--appendonly") + 1] == "yes"


# ---------------------------------------------------------------- workers, queues, scaling


def test_each_model_has_one_pdb_and_one_scaled_object_on_its_queues_lists():
    budgets, scalers = of_kind("PodDisruptionBudget"), of_kind("ScaledObject")
    auths, secrets = of_kind("TriggerAuthentication"), of_kind("Secret")
    redis = of_kind("Service")["redis"]
    # KEDA's operator reads the lists from its own namespace: the full DNS name of the Service.
    service, namespace = redis["metadata"]["name"], redis["metadata"]["namespace"]
    address = f"{service}.{namespace}.svc:{redis['spec']['ports'][0]['port']}"
    models = registry()
    assert selects(budgets["web"]["spec"]["selector"], pod_labels(of_kind("Deployment")["web"]))
    for model, deployment in workers().items():
        name = deployment["metadata"]["name"]
        mine = [
            b for b in budgets.values() if selects(b["spec"]["selector"], pod_labels(deployment))
        ]
        assert len(mine) == 1, f"{name}: {len(mine)} PodDisruptionBudgets"
        (scaler,) = [s for s in scalers.values() if s["spec"]["scaleTargetRef"]["name"] == name]
        triggers = scaler["spec"]["triggers"]
        assert {t["type"] for t in triggers} == {"redis"}
        # One trigger per Redis list of the queue: kombu keeps a list per priority step.
        assert [t["metadata"]["listName"] for t in triggers] == broker_keys(models.get(model).queue)
        for trigger in triggers:
            meta = trigger["metadata"]
            assert meta["address"] == address and meta["databaseIndex"] == "0", name
            assert int(meta["listLength"]) >= 1
            for ref in auths[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"]:
                assert ref["key"] in secrets[ref["name"]]["stringData"]
    assert set(scalers) == {d["metadata"]["name"] for d in workers().values()}


def test_the_broker_list_names_are_kombus():
    from kombu.transport.redis import Channel

    from shared.celery_app import PRIORITY_SEP, PRIORITY_STEPS

    channel = Channel.__new__(Channel)
    channel.priority_steps, channel.sep = PRIORITY_STEPS, PRIORITY_SEP
    lists = [channel._q_for_pri("model.echo", step) for step in PRIORITY_STEPS]
    assert (
        lists
        == broker_keys("model.echo")
        == [
            "model.echo",
            "model.echo:3",
            "model.echo:6",
            "model.echo:9",
        ]
    )


def test_models_scale_to_zero_where_they_allow_it_and_the_default_model_stays_up():
    scalers = {
        s["spec"]["scaleTargetRef"]["name"]: s["spec"] for s in of_kind("ScaledObject").values()
    }
    minimum = {m: scalers[d["metadata"]["name"]]["minReplicaCount"] for m, d in workers().items()}
    assert 0 in minimum.values(), "no model scales to zero"
    default = next(s.id for s in registry() if s.default)
    # Synchronous routes answer 503 at once for a model with no worker (nothing is queued to
    # wake KEDA), so the default model keeps one.
    assert minimum[default] >= 1
    for model, deployment in workers().items():
        spec = scalers[deployment["metadata"]["name"]]
        assert spec["maxReplicaCount"] >= max(1, spec["minReplicaCount"]), model
        assert deployment["spec"]["replicas"] == spec["minReplicaCount"], model
        if spec["minReplicaCount"] == 0:
            assert spec["cooldownPeriod"] > 0, model
            assert all(t["metadata"]["activationListLength"] == "0" for t in spec["triggers"])


def test_workers_outlast_their_jobs_on_sigterm():
    config = of_kind("ConfigMap")["conveyor-config"]["data"]
    limit = int(config.get("CONVEYOR_DEFAULT_TIME_LIMIT_S", Settings().default_time_limit_s))
    settings = Settings(default_time_limit_s=limit)
    for model, deployment in workers().items():
        _, hard = job_time_limits(registry().get(model), settings, None)
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > hard, f"{model}: a running job ({hard:.0f} s at most) would be cut off"


def test_gpu_models_request_a_gpu_and_cpu_models_none():
    gpus = 0
    for model, deployment in workers().items():
        (container,) = containers(deployment)
        resources = container["resources"]
        wants = int(resources.get("limits", {}).get("nvidia.com/gpu", 0))
        spec = registry().get(model)
        if wants:
            gpus += 1
            assert spec.backend not in ("echo", "llamacpp"), f"{model} does not run on torch"
            assert container["image"].startswith("conveyor-worker-cuda:"), model
            assert int(resources["requests"]["nvidia.com/gpu"]) == wants
            tolerations = deployment["spec"]["template"]["spec"]["tolerations"]
            assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)
        else:
            assert not container["image"].startswith("conveyor-worker-cuda"), model
    assert gpus >= 1


def test_workers_share_the_model_cache_volume_at_hf_home():
    claim = of_kind("PersistentVolumeClaim")["conveyor-model-cache"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    final_env = " ".join(instructions(dockerfile_stages("Dockerfile.worker")[-1], "ENV"))
    for model, deployment in workers().items():
        pod = deployment["spec"]["template"]["spec"]
        (volume,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
        assert volume["persistentVolumeClaim"]["claimName"] == "conveyor-model-cache"
        (container,) = containers(deployment)
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        hf_home = container_env(container)["HF_HOME"]
        assert mount["mountPath"] == hf_home, model
        assert f"HF_HOME={hf_home}" in final_env  # the image's default too


def test_the_external_redis_overlay_drops_the_statefulset_and_aliases_the_service():
    (overlay,) = [o for o in OVERLAYS if o.name == "external-redis"]
    docs = render(overlay)
    assert "redis" not in of_kind("StatefulSet", docs)
    service = of_kind("Service", docs)["redis"]
    assert service["spec"]["type"] == "ExternalName" and "selector" not in service["spec"]
    assert len(docs) == len(base()) - 1
