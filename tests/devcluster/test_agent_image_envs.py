"""The node agent runs each pod from the environment of the image it names (imageenv): the
serving image's venv for modelship-server, the operator image's for modelship; a package the
image lacks is missing in the pod, as it would be on a cluster."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from waiting import wait_for

from modelship.devcluster import imageenv
from modelship.devcluster.agent.node import AGENT_TOLERATION

pytestmark = pytest.mark.cluster

# What the container reports: its interpreter's venv, and whether it can import each package.
PROBE = ("import importlib.util, json, sys; open('/dev/termination-log', 'w').write(json.dumps("
         "{'prefix': sys.prefix, 'has': {m: importlib.util.find_spec(m) is not None "
         "for m in ('onnxruntime', 'kopf', 'pytest', 'modelship_server')}}))")


def _run(cluster: Any, namespace: str, name: str, image: str) -> dict[str, Any]:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"nodeSelector": {"node.modelship.dev/agent": "local"}, "tolerations": [AGENT_TOLERATION],
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": image, "command": ["python", "-c", PROBE]}]}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(pod))

    def finished() -> dict[str, Any] | None:
        p = json.loads(cluster.kubectl("get", "pod", name, "-n", namespace, "-o", "json").stdout)
        return p if p["status"].get("phase") in ("Succeeded", "Failed") else None

    p = wait_for(f"pod {name} to finish", finished, 120)
    status = p["status"]["containerStatuses"][0]
    assert p["status"]["phase"] == "Succeeded", status
    return {"imageID": status["imageID"], **json.loads(status["state"]["terminated"]["message"])}


def test_each_image_runs_from_its_own_environment(cluster: Any, namespace: str) -> None:
    server = _run(cluster, namespace, "server", "ghcr.io/modelship/modelship-server:0.1.0")
    operator = _run(cluster, namespace, "operator", "ghcr.io/modelship/modelship-operator:0.1.0")
    assert server["prefix"] == str(imageenv.ensure(imageenv.SERVER)), server
    assert operator["prefix"] == str(imageenv.ensure(imageenv.OPERATOR)), operator
    assert server["imageID"] == f"local://{server['prefix']}"
    assert server["has"] == {"onnxruntime": True, "kopf": False, "pytest": False, "modelship_server": True}
    assert operator["has"] == {"onnxruntime": False, "kopf": True, "pytest": False, "modelship_server": True}
