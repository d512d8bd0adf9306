"""The Kubernetes manifests in deploy/kubernetes: every object of each overlay validates against the
Kubernetes API schemas, offline, and the stack is wired together as the services expect.

Rendering: tests/kustomize.py, a small pure-Python kustomize for the features the manifests use
(resources, JSON 6902 patches, namespace, labels), so no kubectl is needed;
test_renderer_matches_kubectl compares it with the real `kubectl kustomize` where one is on PATH.
Validation: kubernetes-validate's bundled JSON schemas in strict mode, which also rejects unknown
(misspelt) fields.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from sqlalchemy.engine import make_url

from tests.kustomize import Unsupported, render

# The oldest Kubernetes the manifests are written for: podFailurePolicy and resizing an
# Indexed Job (parallelism and completions together) are GA from 1.31. Strict validation
# against it also catches fields that only newer versions know.
K8S_VERSION = "1.31"

KUBERNETES = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
OVERLAYS = ("cpu", "gpu", "rwx")
Objects = dict[tuple[str, str], dict[str, Any]]


def by_kind_and_name(objects: list[dict[str, Any]]) -> Objects:
    return {(obj["kind"], obj["metadata"]["name"]): obj for obj in objects}


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, Objects]:
    return request.param, by_kind_and_name(render(KUBERNETES / "overlays" / request.param))


def validate(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def worker(objects: Objects) -> dict[str, Any]:
    (container,) = objects["Job", "worker"]["spec"]["template"]["spec"]["containers"]
    return container


def workloads(objects: Objects) -> Objects:
    return {key: obj for key, obj in objects.items() if "template" in obj.get("spec", {})}


def test_every_object_validates(overlay: tuple[str, Objects]) -> None:
    _, objects = overlay
    assert {kind for kind, _ in objects} >= {"Namespace", "Secret", "ConfigMap", "Service", "StatefulSet",
                                             "Deployment", "Job"}
    for obj in objects.values():
        validate(obj)
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "hpsearch"
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "hpsearch"


@pytest.mark.parametrize("key, path, misspelt", [
    (("Deployment", "dashboard"), ["spec", "replicas"], "replcias"),
    (("Job", "worker"), ["spec", "podFailurePolicy", "rules", 0, "onExitCodes"], "onExitCode"),
    (("Job", "worker"), ["spec", "template", "spec", "containers", 0, "resources", "limits"], "limit"),
])
def test_misspelt_field_fails_validation(key: tuple[str, str], path: list[Any], misspelt: str) -> None:
    obj = copy.deepcopy(by_kind_and_name(render(KUBERNETES / "overlays" / "gpu"))[key])
    parent = obj
    for step in path[:-1]:
        parent = parent[step]
    parent[misspelt] = parent.pop(path[-1])
    with pytest.raises(kubernetes_validate.ValidationError, match=f"'{misspelt}' was unexpected"):
        validate(obj)


def test_device_per_overlay(overlay: tuple[str, Objects]) -> None:
    name, objects = overlay
    assert objects["ConfigMap", "hpsearch-study"]["data"]["SEARCH_DEVICE"] == {"gpu": "cuda"}.get(name, "cpu")
    limits = worker(objects)["resources"]["limits"]
    tolerations = objects["Job", "worker"]["spec"]["template"]["spec"].get("tolerations", [])
    if name == "gpu":
        assert limits["nvidia.com/gpu"] == 1
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    else:
        assert "nvidia.com/gpu" not in limits and not tolerations
        assert worker(objects)["resources"]["requests"]["cpu"] == "2"


def test_worker_job_stops_on_configuration_errors(overlay: tuple[str, Objects]) -> None:
    _, objects = overlay
    spec = objects["Job", "worker"]["spec"]
    assert spec["completionMode"] == "Indexed" and spec["parallelism"] == spec["completions"]
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] >= 60
    rules = spec["podFailurePolicy"]["rules"]
    assert {"action": "FailJob", "onExitCodes": {"containerName": "worker", "operator": "In", "values": [2]}} in rules
    assert any(rule["action"] == "Ignore" and rule["onPodConditions"][0]["type"] == "DisruptionTarget"
               for rule in rules)


def test_services_and_shared_artifacts(overlay: tuple[str, Objects]) -> None:
    """The default overlays keep artifacts in a bucket, from a Secret, and claim no
    ReadWriteMany volume (most clusters' default storage class has none); overlays/rwx
    mounts one instead."""
    name, objects = overlay
    dashboard = objects["Service", "dashboard"]["spec"]
    assert dashboard["type"] == "ClusterIP" and dashboard["ports"][0]["port"] == 8080
    assert objects["Service", "pooler"]["spec"]["ports"][0]["port"] == 6432
    claims = {key[1]: obj["spec"]["accessModes"] for key, obj in objects.items() if key[0] == "PersistentVolumeClaim"}
    store = objects["Secret", "hpsearch-artifacts"]["stringData"]
    assert store["SEARCH_ARTIFACTS"].startswith("s3://") and {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= store.keys()
    for workload in ("Job", "worker"), ("Deployment", "dashboard"):
        pod = objects[workload]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert {"secretRef": {"name": "hpsearch-artifacts"}} in container["envFrom"]
        mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
        if name == "rwx":
            volume = {v["name"]: v for v in pod["volumes"]}["artifacts"]
            assert volume["persistentVolumeClaim"]["claimName"] == "hpsearch-artifacts"
            assert mounts["artifacts"] == "/artifacts"
            assert {"name": "SEARCH_ARTIFACTS", "value": "/artifacts"} in container["env"]  # wins over envFrom
        else:
            assert "artifacts" not in mounts and "SEARCH_ARTIFACTS" not in {e["name"] for e in container["env"]}
    if name == "rwx":
        assert claims["hpsearch-artifacts"] == ["ReadWriteMany"]
    else:
        assert not [modes for modes in claims.values() if "ReadWriteMany" in modes]


def test_references_resolve(overlay: tuple[str, Objects]) -> None:
    """What the schemas cannot see: names, keys and labels that must match across objects."""
    _, objects = overlay
    for key, obj in workloads(objects).items():
        template = obj["spec"]["template"]
        assert obj["spec"].get("selector", {}).get("matchLabels", {}).items() <= template["metadata"]["labels"].items()
        volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
        claims = [v["persistentVolumeClaim"]["claimName"] for v in volumes.values() if "persistentVolumeClaim" in v]
        assert all(("PersistentVolumeClaim", claim) in objects for claim in claims), key
        volumes.update({c["metadata"]["name"]: c for c in obj["spec"].get("volumeClaimTemplates", [])})
        for container in template["spec"]["containers"]:
            assert {m["name"] for m in container.get("volumeMounts", [])} <= volumes.keys(), key
            for source in container.get("envFrom", []):
                ((kind, ref),) = source.items()
                assert ({"configMapRef": "ConfigMap", "secretRef": "Secret"}[kind], ref["name"]) in objects, key
            for ref in [e["valueFrom"]["secretKeyRef"] for e in container.get("env", []) if "valueFrom" in e]:
                assert ref["key"] in objects["Secret", ref["name"]]["stringData"], key
    for (kind, name), service in objects.items():
        if kind == "Service":
            selector = service["spec"]["selector"].items()
            (pod,) = [obj["spec"]["template"] for obj in workloads(objects).values()
                      if selector <= obj["spec"]["template"]["metadata"]["labels"].items()]
            ports = {port["name"] for container in pod["spec"]["containers"] for port in container.get("ports", [])}
            assert {port["targetPort"] for port in service["spec"]["ports"]} <= ports, name


def test_storage_urls_match_the_services_and_the_password(overlay: tuple[str, Objects]) -> None:
    _, objects = overlay
    secret = objects["Secret", "hpsearch-db"]["stringData"]
    for key, service in ("storage-url-pooled", "pooler"), ("storage-url-direct", "postgres"):
        url = make_url(secret[key])
        assert (url.host, url.port) == (service, objects["Service", service]["spec"]["ports"][0]["port"])
        assert (url.username, url.password, url.database) == (secret["username"], secret["password"], "hpsearch")


def test_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nimages: [{name: hpsearch, newTag: v2}]\n")
    with pytest.raises(Unsupported, match="images"):
        render(tmp_path)


@pytest.mark.parametrize("name", OVERLAYS)
def test_renderer_matches_kubectl(name: str) -> None:
    if not shutil.which("kubectl"):
        # CI's machine has one (Google Cloud SDK's); elsewhere the schema tests still run.
        if os.environ.get("CI"):
            pytest.fail("kubectl is not on PATH: the renderer cannot be compared with `kubectl kustomize`")
        pytest.skip("no kubectl on PATH to compare the renderer with")
    output = subprocess.run(["kubectl", "kustomize", str(KUBERNETES / "overlays" / name)], check=True,
                            capture_output=True, text=True, timeout=60).stdout
    real = by_kind_and_name([doc for doc in yaml.safe_load_all(output) if doc])
    assert by_kind_and_name(render(KUBERNETES / "overlays" / name)) == real
