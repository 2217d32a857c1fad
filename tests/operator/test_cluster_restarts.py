"""Kill the operator (SIGKILL) at random points while ModelServices are created and updated;
after a restart there is exactly one of each child and the status converges."""

from __future__ import annotations

import os
import random
import time
from typing import Any

import pytest

from kube_helpers import OperatorProcess, apply, children, get, is_ready, wait_for
from msvc_samples import SHA

pytestmark = pytest.mark.cluster

COUNT = 6


def _manifest(i: int, batch: int) -> dict[str, Any]:
    return {
        "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService", "metadata": {"name": f"svc-{i}"},
        "spec": {"model": {"uri": f"https://models.example.com/m{i}.onnx", "sha256": SHA}, "replicas": 2,
                 "batching": {"maxBatchSize": batch}, "networkPolicy": {"enabled": i % 2 == 0}},
    }


def test_random_kills_during_create_and_update_converge(cluster: Any, operator_kubeconfig: Any, namespace: str,
                                                        tmp_path: Any) -> None:
    seed = int(os.environ.get("MODELSHIP_TEST_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"seed {seed} (MODELSHIP_TEST_SEED reproduces it)")
    op = OperatorProcess(operator_kubeconfig, tmp_path / "operator.log")
    try:
        op.start()
        for i in range(COUNT):  # create, with kills in between
            apply(cluster, _manifest(i, 8), namespace)
            if rng.random() < 0.5:
                time.sleep(rng.uniform(0.0, 1.5))
                op.kill()
                op.start()
        time.sleep(rng.uniform(0.5, 2.0))
        op.kill()
        op.start()
        time.sleep(rng.uniform(1.0, 3.0))
        for i in range(COUNT):  # update every one: a rollout each, with kills in between
            apply(cluster, _manifest(i, 16), namespace)
            if rng.random() < 0.5:
                time.sleep(rng.uniform(0.0, 1.5))
                op.kill()
                op.start()
        op.kill()
        op.start()

        def converged() -> bool:
            items = get(cluster, "msvc", "-n", namespace)["items"]
            return len(items) == COUNT and all(is_ready(m) and m["metadata"]["generation"] == 2 for m in items)

        wait_for(converged, timeout=120, what="every ModelService Ready at generation 2")
        for i in range(COUNT):
            owned = children(cluster, namespace, f"svc-{i}")
            counts = {kind: len(items) for kind, items in owned.items()}
            assert counts == {"deployments": 1, "services": 1, "configmaps": 1, "poddisruptionbudgets": 1,
                              "networkpolicies": 1 if i % 2 == 0 else 0}, (i, counts)
            deployment = owned["deployments"][0]
            assert deployment["status"].get("readyReplicas") == 2
            assert "max_batch_size: 16" in owned["configmaps"][0]["data"]["config.pbtxt"]
            pods = get(cluster, "pods", "-n", namespace, "-l", f"modelship.dev/modelservice=svc-{i}")["items"]
            live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
            assert len(live) == 2, [p["metadata"]["name"] for p in pods]
        assert op.starts >= 3
    finally:
        op.stop()
        print(op.log()[-3000:])

    cluster.kubectl("delete", "msvc", "--all", "-n", namespace, "--wait=true", "--timeout=60s")
    wait_for(lambda: all(not items for i in range(COUNT) for items in children(cluster, namespace, f"svc-{i}").values()),
             timeout=90, what="no child left after deleting every ModelService")
