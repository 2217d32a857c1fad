"""`helm template` of the operator chart over a matrix of values, every manifest validated by
kubeconform against schemas from the real kube-apiserver (kubeschemas.py), strictly: a field
the API does not define fails. No RBAC shape is assumed here (test_chart.py owns that)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

import kubeschemas

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "modelship"
# Kinds of CRDs the plane does not serve (prometheus-operator's); they are rendered, not validated.
NOT_SERVED = ("PrometheusRule",)

MATRIX: dict[str, dict[str, Any]] = {
    "defaults": {},
    "watch-two-namespaces": {"watchNamespaces": ["team-a", "team-b"]},
    "watch-one-namespace-no-metrics-service": {"watchNamespaces": ["team-a"], "metrics": {"service": {"enabled": False}}},
    "existing-service-account": {"serviceAccount": {"create": False, "name": "ops"}},
    "everything-on": {
        "prometheusAdapter": {"enabled": True}, "grafanaDashboard": {"enabled": True},
        "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus"}},
        "autoscaling": {"prometheusUrl": "http://prometheus.monitoring:9090"},
    },
    "scheduling-and-pod-metadata": {
        "imagePullSecrets": [{"name": "registry"}], "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
        "priorityClassName": "system-cluster-critical", "podAnnotations": {"example.com/scrape": "true"}, "podLabels": {"team": "ml"},
        "image": {"tag": "9.9.9", "pullPolicy": "Always"}, "serviceAccount": {"annotations": {"example.com/owner": "ml-platform"}},
    },
    "tuned": {"workers": 4, "resyncSeconds": 60, "logLevel": "debug", "nameOverride": "ms",
              "resources": {"requests": {"cpu": 1, "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
              "metrics": {"port": 9090}},
}


@pytest.fixture(scope="module")
def schemas(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every served group-version's kinds, as kubeconform schema files."""
    index = cluster.plane.api("GET", "/openapi/v3")["paths"]
    documents = [cluster.plane.api("GET", entry["serverRelativeURL"]) for path, entry in sorted(index.items())
                 if path == "api/v1" or path.startswith("apis/")]
    folder = tmp_path_factory.mktemp("schemas")
    written = kubeschemas.write_schemas(documents, folder)
    assert "deployment-apps-v1.json" in written and "service-v1.json" in written, sorted(written)[:20]
    return folder


def _kubeconform(cluster: Any, schemas: Path, manifests: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(cluster.bin_dir / "kubeconform"), "-strict", "-summary", "-output", "json",
                           f"-schema-location={schemas}/{kubeschemas.TEMPLATE}", "-skip", ",".join(NOT_SERVED), "-"],
                          input=manifests, capture_output=True, text=True, timeout=120)


def _template(cluster: Any, values: dict[str, Any], tmp_path: Path) -> str:
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    return cluster.helm("template", "ms", str(CHART), "-n", "modelship-system", "--include-crds",
                        "-f", str(tmp_path / "values.yaml")).stdout


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_every_manifest_the_chart_renders_is_valid(cluster: Any, schemas: Path, case: str, tmp_path: Path) -> None:
    rendered = _template(cluster, MATRIX[case], tmp_path)
    documents = [d for d in yaml.safe_load_all(rendered) if d]
    result = _kubeconform(cluster, schemas, rendered)
    report = json.loads(result.stdout)
    assert result.returncode == 0, json.dumps([r for r in report["resources"] if r["status"] != "statusValid"], indent=1)
    summary = report["summary"]
    assert summary["valid"] == len([d for d in documents if d["kind"] not in NOT_SERVED]), summary
    assert summary["invalid"] == summary["errors"] == 0, summary
    if case == "everything-on":
        assert {"PrometheusRule", "ConfigMap"} <= {d["kind"] for d in documents}


def test_a_misspelled_field_and_a_wrong_type_fail_validation(cluster: Any, schemas: Path, tmp_path: Path) -> None:
    """The validation can fail: the same render with one typo and one wrong type is rejected."""
    documents = [d for d in yaml.safe_load_all(_template(cluster, {}, tmp_path)) if d]
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containerz"] = deployment["spec"]["template"]["spec"]["containers"]
    deployment["spec"]["replicas"] = "two"
    result = _kubeconform(cluster, schemas, yaml.safe_dump_all(documents))
    assert result.returncode == 1
    invalid = [r for r in json.loads(result.stdout)["resources"] if r["status"] == "statusInvalid"]
    assert [r["kind"] for r in invalid] == ["Deployment"], invalid
    message = json.dumps(invalid)
    assert "containerz" in message and "replicas" in message, message
