"""Fixtures of the operator's cluster tests: the CRD, the chart's RBAC, and the operator.

The operator runs as a real subprocess with a token of the chart's ServiceAccount, never
with admin credentials, so every cluster test also proves the chart's RBAC is enough.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import random
import uuid
from typing import Any, Iterator

import pytest
import yaml

from accounts import plane_ca
from faultproxy import FaultProxy
from kube_helpers import REPO, OperatorProcess

RELEASE_NAMESPACE = "modelship-system"


@pytest.fixture(scope="session")
def crd(cluster: Any) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    cluster.wait_established("modelservices.modelship.dev")


@pytest.fixture(scope="session")
def chart_manifests(cluster: Any) -> list[dict[str, Any]]:
    rendered = cluster.helm("template", "ms", str(REPO / "charts" / "modelship"), "-n", RELEASE_NAMESPACE).stdout
    return [d for d in yaml.safe_load_all(rendered) if d]


@pytest.fixture(scope="session")
def operator_kubeconfig(cluster: Any, crd: None, chart_manifests: list[dict[str, Any]],
                        tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A kubeconfig holding a token of the chart's ServiceAccount, bound by the chart's ClusterRole
    (and its leader-election Role in the release namespace)."""
    cluster.kubectl("create", "namespace", RELEASE_NAMESPACE, check=False)
    kinds = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    rbac = [d for d in chart_manifests if d["kind"] in kinds]
    assert {d["kind"] for d in rbac} == kinds
    cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": rbac}))
    account = next(d for d in rbac if d["kind"] == "ServiceAccount")["metadata"]["name"]
    token = cluster.kubectl("-n", RELEASE_NAMESPACE, "create", "token", account, "--duration=4h").stdout.strip()
    admin = yaml.safe_load(pathlib.Path(cluster.kubeconfig).read_text())
    ca_cluster = admin["clusters"][0]["cluster"]
    ca = ca_cluster.get("certificate-authority-data") or base64.b64encode(
        pathlib.Path(ca_cluster["certificate-authority"]).read_bytes()).decode()
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "plane", "cluster": {"server": cluster.server, "certificate-authority-data": ca}}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "plane", "user": account}}],
        "current-context": "operator",
    }
    path = tmp_path_factory.mktemp("operator") / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def operator(operator_kubeconfig: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    process = OperatorProcess(operator_kubeconfig, tmp_path_factory.mktemp("operator-log") / "operator.log")
    process.start()
    try:
        yield process
    finally:
        process.stop()
        print(process.log()[-4000:])


@pytest.fixture
def namespace(cluster: Any) -> Iterator[str]:
    """A fresh namespace that enforces the "restricted" Pod Security Standard."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted",
                    "pod-security.kubernetes.io/enforce-version=latest")
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def proxy(cluster: Any) -> Iterator[FaultProxy]:
    """A fault proxy in front of the real API server, its fault draws seeded (printed, so a failure
    can be replayed with MODELSHIP_TEST_SEED)."""
    seed = int(os.environ.get("MODELSHIP_TEST_SEED", random.randrange(1 << 30)))
    print(f"fault proxy seed {seed} (MODELSHIP_TEST_SEED reproduces the fault draws)")
    fault_proxy = FaultProxy(cluster.server, plane_ca(cluster), seed=seed)
    fault_proxy.start()
    try:
        yield fault_proxy
    finally:
        fault_proxy.stop()
