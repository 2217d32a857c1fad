"""spec.auth and spec.tls on the local cluster, for real: the operator renders them, the agent's
pods run the real `modelship-server` with the Secrets mounted and a projected token of the
reviewer ServiceAccount, HTTPS probes pass, and real tritonclient calls answer 401 / 200 through
TokenReview by the real kube-apiserver (docs/security.md).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from kube_helpers import OperatorProcess, apply, condition, get, wait_for
from modelship.devcluster.agent.node import AGENT_TOLERATION
from modelship_server import samples

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))
from certs import Authority  # noqa: E402 - tests/server/certs.py, shared with the server tests

pytestmark = pytest.mark.cluster

AGENT_NODES = {"node.modelship.dev/agent": "local"}
KEY = "e2e-key-4c1f0a"
AUDIENCE = "modelship.dev/e2e"


def _publish(cluster: Any, namespace: str) -> tuple[str, str]:
    path = cluster.plane.models_dir / namespace / "mlp.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(samples.mlp(), str(path))
    return cluster.plane.model_store_url + f"{namespace}/mlp.onnx", hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest(name: str, uri: str, sha256: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService", "metadata": {"name": name},
        "spec": {
            "model": {"uri": uri, "sha256": sha256, "name": "mlp"},
            "replicas": 1,
            "resources": {"cpu": "250m", "memory": "1Gi"},
            "scheduling": {"nodeSelector": AGENT_NODES, "tolerations": [AGENT_TOLERATION]},
            "rollout": {"preStopDelaySeconds": 1, "terminationGracePeriodSeconds": 10},
            **spec,
        },
    }


def _ready(cluster: Any, namespace: str, name: str, status: str, reason: str | None = None) -> dict[str, Any] | None:
    msvc = get(cluster, "msvc", "-n", namespace, name)
    ready = condition(msvc, "Ready")
    if ready and ready["status"] == status and (reason is None or ready["reason"] == reason):
        return msvc
    return None


def _pod_ip(cluster: Any, namespace: str, name: str) -> str:
    pods = get(cluster, "pods", "-n", namespace, "-l", f"modelship.dev/modelservice={name}")["items"]
    ips = [p["status"].get("podIP") for p in pods if p["status"].get("podIP")]
    assert ips, pods
    return ips[0]


def test_auth_and_tls_on_real_pods(cluster: Any, operator: OperatorProcess, namespace: str, tmp_path: Path) -> None:
    ca = Authority()
    secret = ca.write_secret(tmp_path / "tls", common_name="localhost")
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    cluster.kubectl("-n", namespace, "create", "secret", "generic", "fraud-tls", "--type=kubernetes.io/tls",
                    f"--from-file=tls.crt={secret / 'tls.crt'}", f"--from-file=tls.key={secret / 'tls.key'}",
                    f"--from-file=ca.crt={secret / 'ca.crt'}")
    cluster.kubectl("-n", namespace, "create", "secret", "generic", "fraud-keys", f"--from-literal=ci={KEY}")
    for account in ("modelship-serving", "caller", "stranger"):
        cluster.kubectl("-n", namespace, "create", "serviceaccount", account)
    binding = f"{namespace}-modelship-serving"
    cluster.kubectl("create", "clusterrolebinding", binding, "--clusterrole=system:auth-delegator",
                    f"--serviceaccount={namespace}:modelship-serving")
    try:
        uri, sha = _publish(cluster, namespace)
        apply(cluster, _manifest("fraud", uri, sha, auth={
            "enabled": True, "apiKeys": {"secretRef": {"name": "fraud-keys"}},
            "serviceAccounts": {"audiences": [AUDIENCE], "allowed": [f"{namespace}/caller"]},
        }, tls={"secretRef": {"name": "fraud-tls"}}), namespace)
        # Ready needs the HTTPS readiness probe to pass
        wait_for(lambda: _ready(cluster, namespace, "fraud", "True"), timeout=240, what="Ready=True with TLS")
        ip = _pod_ip(cluster, namespace, "fraud")
        x = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)

        h = httpclient.InferenceServerClient(f"{ip}:8000", ssl=True, insecure=True,  # the cert names localhost
                                             ssl_options={"ca_certs": str(tmp_path / "ca.pem")})
        try:
            i = httpclient.InferInput("INPUT0", [1, 64], "FP32")
            i.set_data_from_numpy(x)
            with pytest.raises(InferenceServerException) as err:
                h.infer("mlp", [i])
            assert "401" in str(err.value.status()) or "Authorization: Bearer" in str(err.value)
            out = h.infer("mlp", [i], headers={"Authorization": f"Bearer {KEY}"}).as_numpy("OUTPUT0")
            assert out.shape == (1, 10)
        finally:
            h.close()

        def token(account: str) -> str:
            return cluster.kubectl("-n", namespace, "create", "token", account, f"--audience={AUDIENCE}").stdout.strip()

        g = grpcclient.InferenceServerClient(f"{ip}:8001", ssl=True, root_certificates=str(tmp_path / "ca.pem"),
                                             channel_args=[("grpc.ssl_target_name_override", "localhost")])
        try:
            gi = grpcclient.InferInput("INPUT0", [1, 64], "FP32")
            gi.set_data_from_numpy(x)
            got = g.infer("mlp", [gi], headers={"authorization": f"Bearer {token('caller')}"}).as_numpy("OUTPUT0")
            np.testing.assert_allclose(got, out, rtol=1e-5)
            with pytest.raises(InferenceServerException) as err:
                g.infer("mlp", [gi], headers={"authorization": f"Bearer {token('stranger')}"})
            assert err.value.status() == "StatusCode.PERMISSION_DENIED"
            with pytest.raises(InferenceServerException) as err:
                g.infer("mlp", [gi], headers={"authorization": f"Bearer {token('caller').replace('.', '.x', 1)}"})
            assert err.value.status() == "StatusCode.UNAUTHENTICATED"
        finally:
            g.close()

        # a TLS Secret that does not exist: the server says so and the status carries its reason
        apply(cluster, _manifest("nosecret", uri, sha, tls={"secretRef": {"name": "absent"}}), namespace)
        msvc = wait_for(lambda: _ready(cluster, namespace, "nosecret", "False", "TLSCertificateInvalid"), timeout=180,
                        what="Ready=False/TLSCertificateInvalid")
        message = condition(msvc, "Ready")["message"]
        assert "cannot use the TLS Secret of spec.tls.secretRef" in message and "tls.crt does not exist" in message

        # a reviewer ServiceAccount that does not exist: no pod can be created, the status says why
        apply(cluster, _manifest("noreviewer", uri, sha, auth={
            "enabled": True, "serviceAccounts": {"reviewerServiceAccount": "absent-reviewer"}}), namespace)
        msvc = wait_for(lambda: _ready(cluster, namespace, "noreviewer", "False", "PodCreationFailed"), timeout=180,
                        what="Ready=False/PodCreationFailed")
        assert 'serviceaccount "absent-reviewer" not found' in condition(msvc, "Ready")["message"]
    finally:
        cluster.kubectl("delete", "clusterrolebinding", binding, check=False)
        print(json.dumps(get(cluster, "msvc", "-n", namespace)["items"], indent=1)[-3000:])
