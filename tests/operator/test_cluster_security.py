"""spec.auth and spec.tls on the local cluster, for real: the operator renders them, the agent's
pods run the real `modelship-server` with the Secrets mounted and a projected token of the
reviewer ServiceAccount, HTTPS probes pass, and real tritonclient calls answer 401 / 200 through
TokenReview by the real kube-apiserver (docs/security.md). Then the Secrets are rotated while the
pod runs: the agent refreshes the mounted folders and the server picks up the new key and
certificate without a restart and without refusing a valid key.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import ssl
import sys
import time
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


def _infer_status(ip: str, context: ssl.SSLContext, key: str) -> tuple[int, bytes]:
    """One KServe v2 HTTP inference on a new HTTPS connection: (status, the server certificate's DER)."""
    body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]})
    connection = http.client.HTTPSConnection(ip, 8000, context=context, timeout=30)
    try:
        connection.request("POST", "/v2/models/mlp/infer", body=body,
                           headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        assert connection.sock is not None
        return response.status, connection.sock.getpeercert(binary_form=True) or b""
    finally:
        connection.close()


def _client_context(ca_pem: bytes) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca_pem.decode())
    context.check_hostname = False  # the certificate names localhost; the pod is reached by its address
    return context


def _der(pem: bytes) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.decode())


def test_api_key_and_certificate_rotation_on_a_running_pod(cluster: Any, operator: OperatorProcess, namespace: str,
                                                           tmp_path: Path) -> None:
    """Issue 18: a Secret update reaches the running pod (the agent's `..data` swap) and the
    server's watcher; the old key is refused only once the new one is accepted."""
    key_a, key_b = "rotate-key-a-51d2", "rotate-key-b-9e07"
    first, second = Authority("rotation CA one"), Authority("rotation CA two")
    tls_one = first.write_secret(tmp_path / "one", common_name="localhost")
    tls_two = second.write_secret(tmp_path / "two", common_name="localhost")
    cluster.kubectl("-n", namespace, "create", "secret", "generic", "rotate-tls", "--type=kubernetes.io/tls",
                    f"--from-file=tls.crt={tls_one / 'tls.crt'}", f"--from-file=tls.key={tls_one / 'tls.key'}")
    cluster.kubectl("-n", namespace, "create", "secret", "generic", "rotate-keys", f"--from-literal=ci={key_a}")
    uri, sha = _publish(cluster, namespace)
    apply(cluster, _manifest("rotate", uri, sha, auth={"enabled": True, "apiKeys": {"secretRef": {"name": "rotate-keys"}}},
                             tls={"secretRef": {"name": "rotate-tls"}}), namespace)
    wait_for(lambda: _ready(cluster, namespace, "rotate", "True"), timeout=240, what="Ready=True with TLS and keys")
    ip = _pod_ip(cluster, namespace, "rotate")
    pod = get(cluster, "pods", "-n", namespace, "-l", "modelship.dev/modelservice=rotate")["items"][0]["metadata"]
    old_ctx = _client_context(first.pem)
    status, cert = _infer_status(ip, old_ctx, key_a)
    assert (status, cert) == (200, _der((tls_one / "tls.crt").read_bytes()))
    assert _infer_status(ip, old_ctx, key_b)[0] == 401

    # API key rotation: A keeps working until B works, then A is refused; nothing else is ever answered
    b64 = base64.b64encode(key_b.encode()).decode()
    cluster.kubectl("-n", namespace, "patch", "secret", "rotate-keys", "--type=merge", "-p",
                    json.dumps({"data": {"ci": b64}}))
    seen: list[tuple[float, str, int]] = []
    started = time.monotonic()
    b_accepted = a_refused = False
    while not (b_accepted and a_refused):
        assert time.monotonic() - started < 120, f"rotation not seen within 120 s: {seen[-6:]}"
        for name, key in (("A", key_a), ("B", key_b)):
            status = _infer_status(ip, old_ctx, key)[0]
            seen.append((round(time.monotonic() - started, 2), name, status))
            assert status in (200, 401), seen[-6:]
            if name == "A" and status == 401:
                assert b_accepted or _infer_status(ip, old_ctx, key_b)[0] == 200, \
                    f"key A refused before key B was accepted: {seen[-6:]}"
                a_refused = b_accepted = True
            if name == "A" and status == 200:
                assert not a_refused, f"key A accepted again after its refusal: {seen[-6:]}"
            if name == "B" and status == 200:
                b_accepted = True
            if name == "B" and status == 401:
                assert not b_accepted, f"key B refused after it was accepted: {seen[-6:]}"
        time.sleep(0.2)
    print(f"key rotation seen after {seen[-1][0]} s in {len(seen)} requests")

    # certificate rotation: a new connection gets the new certificate, the pod was not restarted
    cluster.kubectl("-n", namespace, "patch", "secret", "rotate-tls", "--type=merge", "-p", json.dumps({"data": {
        "tls.crt": base64.b64encode((tls_two / "tls.crt").read_bytes()).decode(),
        "tls.key": base64.b64encode((tls_two / "tls.key").read_bytes()).decode()}}))
    new_ctx = _client_context(second.pem)

    def rotated() -> bool:
        try:
            status, cert = _infer_status(ip, new_ctx, key_b)
        except ssl.SSLCertVerificationError:  # still the first certificate
            return False
        assert status == 200
        return cert == _der((tls_two / "tls.crt").read_bytes())

    wait_for(rotated, timeout=120, what="the new certificate on a new connection")
    after = get(cluster, "pods", "-n", namespace, "-l", "modelship.dev/modelservice=rotate")["items"]
    assert [p["metadata"]["uid"] for p in after] == [pod["uid"]]
    assert after[0]["status"]["containerStatuses"][0]["restartCount"] == 0
