"""A small kustomize renderer for the features deploy/kubernetes uses, so testing the manifests
needs no kubectl or kustomize binary (neither is a dependency of the project).

Supported, following kustomize v5 (`kubectl kustomize`): ``resources`` (YAML files, and
directories holding a kustomization, rendered first); ``patches`` holding inline JSON 6902
patches (ops add, remove, replace, test) with a ``target`` of kind and/or name; ``namespace``;
``labels`` with ``pairs`` and ``includeTemplates``. Patches are applied before the namespace and
labels, as kustomize orders its built-in transformers. Anything else (strategic merge
patches, generators, images, commonLabels, ...) raises ``Unsupported`` rather than being
rendered wrongly. tests/test_manifests.py compares the output with `kubectl kustomize` when
a kubectl is on PATH.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

KEYS = {"apiVersion", "kind", "resources", "patches", "namespace", "labels"}
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding",
                  "CustomResourceDefinition", "PriorityClass"}
# includeTemplates: where kustomize's templateLabels field specs put the labels, for the kinds
# checked against `kubectl kustomize`; other workload kinds raise Unsupported.
TEMPLATES = {"Deployment": lambda o: [o["spec"]["template"]], "Job": lambda o: [o["spec"]["template"]],
             "StatefulSet": lambda o: [o["spec"]["template"], *o["spec"].get("volumeClaimTemplates", [])]}
UNCHECKED_WORKLOADS = {"DaemonSet", "ReplicaSet", "CronJob", "ReplicationController"}


class Unsupported(Exception):
    """The kustomization uses a feature this renderer does not implement."""


def render(directory: str | Path) -> list[dict[str, Any]]:
    directory = Path(directory)
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KEYS
    if unknown:
        raise Unsupported(f"{directory}: kustomization keys {sorted(unknown)}")
    objects: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        objects += render(path) if path.is_dir() else [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    ids = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{directory}: duplicate resources in {ids}")
    for patch in kustomization.get("patches", []):
        apply_patch(objects, patch, directory)
    if "namespace" in kustomization:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = kustomization["namespace"]
    for spec in kustomization.get("labels", []):
        if set(spec) - {"pairs", "includeTemplates"}:
            raise Unsupported(f"{directory}: labels options {sorted(set(spec) - {'pairs', 'includeTemplates'})}")
        for obj in objects:
            targets = [obj]
            if spec.get("includeTemplates") and obj["kind"] in UNCHECKED_WORKLOADS:
                raise Unsupported(f"{directory}: labels includeTemplates on a {obj['kind']}")
            if spec.get("includeTemplates") and obj["kind"] in TEMPLATES:
                targets += TEMPLATES[obj["kind"]](obj)
            for target in targets:
                target.setdefault("metadata", {}).setdefault("labels", {}).update(spec["pairs"])
    return objects


def apply_patch(objects: list[dict[str, Any]], patch: dict[str, Any], directory: Path) -> None:
    target = patch.get("target", {})
    if set(patch) != {"target", "patch"} or not target or set(target) - {"kind", "name"}:
        raise Unsupported(f"{directory}: only inline patches with a kind/name target: {patch}")
    operations = yaml.safe_load(patch["patch"])
    if not isinstance(operations, list):
        raise Unsupported(f"{directory}: strategic merge patch for {target}")
    # kustomize matches the target's fields as anchored regular expressions.
    matched = [o for o in objects if all(re.fullmatch(pattern, o["kind"] if field == "kind" else o["metadata"]["name"])
                                         for field, pattern in target.items())]
    if not matched:
        raise ValueError(f"{directory}: patch target {target} matches no resource")
    for obj in matched:
        patched = json_patch(obj, operations)
        obj.clear()
        obj.update(patched)


def json_patch(document: Any, operations: list[dict[str, Any]]) -> Any:
    """RFC 6902 add/remove/replace/test; like kustomize, ``add`` does not create missing parents."""
    document = copy.deepcopy(document)
    for operation in operations:
        op, path = operation["op"], operation["path"]
        *parents, last = [part.replace("~1", "/").replace("~0", "~") for part in path.split("/")[1:]]
        parent = document
        for part in parents:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        if isinstance(parent, list):
            index = len(parent) if last == "-" and op == "add" else int(last)
            if not 0 <= index <= len(parent) - (op != "add"):
                raise IndexError(f"{op} {path}: index out of range")
        else:
            index = last
            if op != "add" and index not in parent:
                raise KeyError(f"{op} {path}: no such member")
        if op == "test":
            if parent[index] != operation["value"]:
                raise ValueError(f"test {path}: {parent[index]!r} != {operation['value']!r}")
        elif op == "remove":
            del parent[index]
        elif op == "replace":
            parent[index] = copy.deepcopy(operation["value"])
        elif op == "add" and isinstance(parent, list):
            parent.insert(index, copy.deepcopy(operation["value"]))
        elif op == "add":
            parent[index] = copy.deepcopy(operation["value"])
        else:
            raise Unsupported(f"JSON patch op {op!r}")
    return document
