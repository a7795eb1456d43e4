"""Helpers of tests/unit/test_kubernetes_manifests.py: a renderer for the subset of
kustomize that docs/kubernetes uses (resources, namespace, labels, images, and
strategic-merge patches that delete or merge), and the fields of KEDA's custom resources.
"""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import yaml

KEDA = "keda.sh/v1alpha1"
KUSTOMIZE_FIELDS = {"apiVersion", "kind", "namespace", "resources", "labels", "images", "patches"}
CLUSTER_WIDE = {"Namespace"}


def load_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def key(doc: dict) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def merge(target: dict, patch: dict) -> None:
    """Strategic merge for maps: null deletes a key, maps merge, anything else replaces."""
    for name, value in patch.items():
        if value is None:
            target.pop(name, None)
        elif isinstance(value, dict) and isinstance(target.get(name), dict):
            merge(target[name], value)
        else:
            target[name] = copy.deepcopy(value)


def containers(doc: dict) -> list[dict]:
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})
    return pod.get("containers", []) + pod.get("initContainers", [])


def render(folder: Path) -> list[dict]:
    """Render a kustomization the way `kustomize build` does, for the fields it uses."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KUSTOMIZE_FIELDS
    assert not unknown, f"{folder}: the test's renderer does not know {unknown}"
    docs: list[dict] = []
    for entry in kustomization.get("resources", []):
        path = folder / entry
        docs += render(path) if path.is_dir() else load_docs(path)
    for patch_entry in kustomization.get("patches", []):
        for patch in load_docs(folder / patch_entry["path"]):
            targets = [d for d in docs if key(d) == key(patch)]
            assert targets, f"{patch_entry['path']} patches {key(patch)}, which is not there"
            if patch.get("$patch") == "delete":
                docs.remove(targets[0])
            else:
                merge(targets[0], {k: v for k, v in patch.items() if k != "apiVersion"})
    if "namespace" in kustomization:
        for doc in docs:
            if doc["kind"] not in CLUSTER_WIDE:
                doc["metadata"]["namespace"] = kustomization["namespace"]
    for label in kustomization.get("labels", []):
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(label["pairs"])
    images = {i["name"]: i for i in kustomization.get("images", [])}
    for doc in docs:
        for container in containers(doc):
            name, _, tag = container["image"].partition(":")
            if name in images:
                new = images[name]
                container["image"] = f"{new.get('newName', name)}:{new.get('newTag', tag)}"
    keys = [key(d) for d in docs]
    assert len(keys) == len(set(keys)), f"{folder}: a resource is defined twice"
    return docs


# KEDA's CRDs (keda.sh_scaledobjects.yaml, keda.sh_triggerauthentications.yaml), the fields
# these manifests use; anything else is refused, so a typo fails.
_SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": KEDA},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string"},
                        "kind": {"type": "string"},
                        "apiVersion": {"type": "string"},
                    },
                },
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            # The redis (lists) scaler's parameters; every value a string.
                            "metadata": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["listName", "listLength"],
                                "properties": {
                                    name: {"type": "string"}
                                    for name in (
                                        "address",
                                        "host",
                                        "port",
                                        "listName",
                                        "listLength",
                                        "activationListLength",
                                        "databaseIndex",
                                        "enableTLS",
                                    )
                                },
                            },
                            "authenticationRef": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["name"],
                                "properties": {"name": {"type": "string"}},
                            },
                        },
                    },
                },
            },
        },
    },
}
_TRIGGER_AUTHENTICATION = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": KEDA},
        "kind": {"const": "TriggerAuthentication"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "secretTargetRef": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["parameter", "name", "key"],
                        "properties": {
                            "parameter": {"enum": ["password", "username"]},
                            "name": {"type": "string"},
                            "key": {"type": "string"},
                        },
                    },
                }
            },
        },
    },
}


def keda_errors(doc: dict) -> list[str]:
    schema = {"ScaledObject": _SCALED_OBJECT, "TriggerAuthentication": _TRIGGER_AUTHENTICATION}
    assert doc["kind"] in schema, f"{key(doc)}: no schema for this KEDA kind"
    validator = jsonschema.Draft202012Validator(schema[doc["kind"]])
    return [f"{key(doc)}: {e.json_path}: {e.message}" for e in validator.iter_errors(doc)]
