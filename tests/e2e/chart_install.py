"""The operator installed from its Helm chart as a user would, onto the node agent's nodes,
watching one namespace: the e2e suites' shared setup (and teardown, pass or fail)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

from modelship.devcluster.agent.node import AGENT_TOLERATION

REPO = Path(__file__).resolve().parents[2]
AGENT_NODES = {"node.modelship.dev/agent": "local"}
AGENT_TOLERATIONS = [AGENT_TOLERATION]  # the agent's nodes are tainted NoSchedule


@contextlib.contextmanager
def operator_from_chart(cluster: Any, *, release: str, namespace: str, operator_namespace: str,
                        delete_timeout: str = "60s") -> Iterator[None]:
    """The CRD, the watched namespace and the chart (two replicas, namespaced RBAC); on exit the
    ModelServices are deleted first, so the operator is still there to see them go."""
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    cluster.wait_established("modelservices.modelship.dev")
    cluster.kubectl("create", "namespace", namespace, check=False)
    cluster.helm("upgrade", "--install", release, str(REPO / "charts" / "modelship"),
                 "--namespace", operator_namespace, "--create-namespace",
                 "--set-json", f"watchNamespaces={json.dumps([namespace])}",
                 "--set-json", f"nodeSelector={json.dumps(AGENT_NODES)}",
                 "--set-json", f"tolerations={json.dumps(AGENT_TOLERATIONS)}",
                 "--set", "resyncSeconds=30", "--wait", "--timeout", "180s", timeout=240)
    try:
        yield
    finally:
        cluster.kubectl("delete", "msvc", "--all", "-n", namespace, "--wait=true", f"--timeout={delete_timeout}",
                        check=False)
        cluster.helm("uninstall", release, "--namespace", operator_namespace, "--wait", check=False)
        cluster.kubectl("delete", "namespace", namespace, operator_namespace, "--wait=false", check=False)
