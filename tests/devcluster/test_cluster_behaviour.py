"""The local control plane behaves like a real cluster: scheduling, GC, GPUs, CEL, kubectl, helm."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from waiting import wait_for

pytestmark = pytest.mark.cluster


def get_json(cluster, *args: str) -> dict:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def test_deployment_pods_become_ready_and_are_garbage_collected(cluster, namespace):
    cluster.kubectl("create", "deployment", "web", "--image=registry.example/web:1", "--replicas=3", "-n", namespace)

    def ready_pods():
        pods = get_json(cluster, "pods", "-n", namespace, "-l", "app=web")["items"]
        ready = [p for p in pods if any(c["type"] == "Ready" and c["status"] == "True"
                                        for c in p["status"].get("conditions", []))]
        return pods if len(ready) == 3 else None

    pods = wait_for("3 ready pods", ready_pods)
    assert all(p["spec"]["nodeName"] for p in pods), "every pod was bound to a node by the scheduler"
    assert get_json(cluster, "deployment", "web", "-n", namespace)["status"]["readyReplicas"] == 3

    cluster.kubectl("delete", "deployment", "web", "-n", namespace, "--cascade=background")
    wait_for("the ReplicaSet and pods to be garbage-collected",
             lambda: not get_json(cluster, "replicasets", "-n", namespace)["items"]
             and not get_json(cluster, "pods", "-n", namespace)["items"])


def _gpu_pod(name: str, resource: str, count: int) -> str:
    spec = {"containers": [{"name": "main", "image": "registry.example/cuda:1",
                            "resources": {"limits": {resource: str(count)}}}]}
    if resource != "nvidia.com/gpu":
        # ExtendedResourceToleration tolerates only the requested resource's own taint; a MIG
        # slice on a node tainted `nvidia.com/gpu` needs the toleration spelled out, as on a real cluster.
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return yaml.safe_dump({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})


def test_gpu_pods_land_on_gpu_nodes_and_too_many_gpus_stay_pending(cluster, namespace):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=_gpu_pod("one-gpu", "nvidia.com/gpu", 1))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=_gpu_pod("one-mig", "nvidia.com/mig-1g.10gb", 1))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=_gpu_pod("eight-gpus", "nvidia.com/gpu", 8))

    def node_of(pod: str) -> str:
        return get_json(cluster, "pod", pod, "-n", namespace)["spec"].get("nodeName", "")

    gpu_node = wait_for("one-gpu to be scheduled", lambda: node_of("one-gpu"))
    labels = get_json(cluster, "node", gpu_node)["metadata"]["labels"]
    assert int(get_json(cluster, "node", gpu_node)["status"]["capacity"].get("nvidia.com/gpu", "0")) >= 1
    assert labels["nvidia.com/gpu.product"].startswith("NVIDIA-")
    assert wait_for("one-mig to be scheduled", lambda: node_of("one-mig")) == "gpu-a100-mig-0"

    def unschedulable():
        conditions = get_json(cluster, "pod", "eight-gpus", "-n", namespace)["status"].get("conditions", [])
        return next((c for c in conditions if c["type"] == "PodScheduled" and c["status"] == "False"), None)

    condition = wait_for("eight-gpus to be marked unschedulable", unschedulable)
    assert condition["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in condition["message"]
    assert get_json(cluster, "pod", "eight-gpus", "-n", namespace)["status"]["phase"] == "Pending"


def test_cpu_pods_keep_off_gpu_nodes(cluster, namespace):
    cluster.kubectl("create", "deployment", "cpu", "--image=registry.example/web:1", "--replicas=6", "-n", namespace)

    def nodes():
        pods = get_json(cluster, "pods", "-n", namespace, "-l", "app=cpu")["items"]
        names = [p["spec"].get("nodeName") for p in pods]
        return names if len(names) == 6 and all(names) else None

    assert set(wait_for("6 scheduled pods", nodes)) <= {"cpu-0", "cpu-1"}


CEL_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "ranges.test.modelship.dev"},
    "spec": {
        "group": "test.modelship.dev",
        "names": {"kind": "Range", "plural": "ranges", "singular": "range"},
        "scope": "Namespaced",
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {"spec": {
                    "type": "object",
                    "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}},
                    "x-kubernetes-validations": [
                        {"rule": "self.min <= self.max", "message": "min must not exceed max"},
                    ],
                }},
            }},
        }],
    },
}


def test_cel_rule_rejects_bad_object_with_api_server_message(cluster, namespace):
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(CEL_CRD))
    wait_for("the CRD to be established", lambda: any(
        c["type"] == "Established" and c["status"] == "True"
        for c in get_json(cluster, "crd", "ranges.test.modelship.dev")["status"].get("conditions", [])))

    def apply(lo: int, hi: int):
        body = {"apiVersion": "test.modelship.dev/v1", "kind": "Range",
                "metadata": {"name": f"r{lo}-{hi}"}, "spec": {"min": lo, "max": hi}}
        return cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body), check=False)

    assert apply(1, 2).returncode == 0
    rejected = apply(5, 2)
    assert rejected.returncode != 0
    assert "spec: Invalid value" in rejected.stderr and "min must not exceed max" in rejected.stderr


def test_kubectl_and_helm_from_the_build_work(cluster, namespace, tmp_path: Path):
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["minor"] == "35"
    assert version["clientVersion"]["minor"] == "35"

    chart = tmp_path / "hello"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: hello\nversion: 0.1.0\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-greeting\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n")
    (chart / "values.yaml").write_text("greeting: hello\n")
    cluster.helm("install", "demo", str(chart), "-n", namespace, "--set", "greeting=hi")
    assert get_json(cluster, "configmap", "demo-greeting", "-n", namespace)["data"]["greeting"] == "hi"
    releases = json.loads(cluster.helm("list", "-n", namespace, "-o", "json").stdout)
    assert [r["name"] for r in releases] == ["demo"]
    cluster.helm("uninstall", "demo", "-n", namespace)
    assert cluster.kubectl("get", "configmap", "demo-greeting", "-n", namespace, check=False).returncode != 0


def test_service_accounts_get_tokens_that_rbac_limits(cluster, namespace):
    """The SA signing key and RBAC work: a fresh ServiceAccount's token is authenticated but unprivileged."""
    cluster.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    token = cluster.kubectl("create", "token", "reader", "-n", namespace).stdout.strip()
    who = cluster.kubectl("auth", "whoami", "--token", token, "-o", "json")
    assert json.loads(who.stdout)["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:reader"
    denied = cluster.kubectl("get", "secrets", "-n", namespace, "--token", token, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr


def test_kubeconform_from_the_build_validates_offline_against_a_local_schema(cluster, tmp_path: Path):
    """kubeconform needs no network when given schemas: the chart tests feed it the CRD's."""
    (tmp_path / "range.json").write_text(json.dumps({
        "type": "object", "required": ["spec"],
        "properties": {"spec": {"type": "object", "properties": {"min": {"type": "integer"}}}},
    }))
    good = tmp_path / "good.yaml"
    good.write_text("apiVersion: test/v1\nkind: Range\nmetadata: {name: a}\nspec: {min: 1}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: test/v1\nkind: Range\nmetadata: {name: b}\nspec: {min: one}\n")
    schema = f"-schema-location={tmp_path}/{{{{ .ResourceKind }}}}.json"

    def kubeconform(path: Path):
        return subprocess.run([str(cluster.bin_dir / "kubeconform"), schema, "-summary", str(path)],
                              capture_output=True, text=True, timeout=30)

    assert kubeconform(good).returncode == 0
    rejected = kubeconform(bad)
    assert rejected.returncode == 1 and "min" in rejected.stdout
