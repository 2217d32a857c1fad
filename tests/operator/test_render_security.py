"""spec.auth and spec.tls rendered into the serving pod (render/security.py): flags, Secret
volumes, the reviewer's projected token, probe scheme; and the spec's validation of them."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from modelship.api.v1alpha1 import ModelService
from modelship.render import render_children
from modelship.status.diagnosis import diagnose, replica_failure
from msvc_samples import SHA, body
from pods import pod, waiting
from test_render import assert_restricted


def _server(spec_extra: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = {"model": {"uri": "https://h/m.onnx", "sha256": SHA}, **spec_extra}
    objs = {o["kind"]: o for o in render_children(ModelService.from_body(body("fraud", spec=spec))).objects}
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    return pod, next(c for c in pod["containers"] if c["name"] == "server")


def test_off_by_default_renders_nothing_new() -> None:
    pod, server = _server({})
    assert "serviceAccountName" not in pod and pod["automountServiceAccountToken"] is False
    assert not any(a.startswith(("--auth", "--tls")) for a in server["command"])
    assert "scheme" not in server["readinessProbe"]["httpGet"]


def test_api_keys_and_service_accounts() -> None:
    pod, server = _server({"auth": {"enabled": True, "apiKeys": {"secretRef": {"name": "fraud-keys"}},
                                    "serviceAccounts": {"audiences": ["modelship.dev/fraud"],
                                                        "allowed": ["apps/checkout", "apps/batch"],
                                                        "subjectAccessReview": True}}})
    cmd = server["command"]
    assert cmd[cmd.index("--auth-api-keys") + 1] == "/etc/modelship/api-keys"
    assert cmd[cmd.index("--auth-audiences") + 1] == "modelship.dev/fraud"
    assert cmd[cmd.index("--auth-allowed-service-accounts") + 1] == "apps/checkout,apps/batch"
    assert cmd[cmd.index("--auth-access-review") + 1] == "ns/fraud"
    assert pod["serviceAccountName"] == "modelship-serving"
    assert pod["automountServiceAccountToken"] is False  # only the server container gets a token
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["api-keys"]["secret"]["secretName"] == "fraud-keys"
    sources = volumes["reviewer-token"]["projected"]["sources"]
    assert sources[0]["serviceAccountToken"]["path"] == "token"
    mounts = {m["name"]: m["mountPath"] for m in server["volumeMounts"]}
    assert mounts["reviewer-token"] == "/var/run/secrets/kubernetes.io/serviceaccount"
    inits = pod["initContainers"]
    assert all("reviewer-token" not in {m["name"] for m in c.get("volumeMounts", [])} for c in inits)
    assert_restricted(pod)


def test_tls_and_mtls_use_https_probes() -> None:
    pod, server = _server({"tls": {"secretRef": {"name": "fraud-tls"}, "clientAuth": True}})
    cmd = server["command"]
    assert cmd[cmd.index("--tls-dir") + 1] == "/etc/modelship/tls"
    assert cmd[cmd.index("--tls-client-auth") + 1] == "true"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert server[probe]["httpGet"]["scheme"] == "HTTPS"
    assert {v["name"]: v for v in pod["volumes"]}["tls"]["secret"]["secretName"] == "fraud-tls"
    assert_restricted(pod)


@pytest.mark.parametrize("extra, message", [
    ({"auth": {"enabled": True}}, "spec.auth.enabled needs spec.auth.serviceAccounts or spec.auth.apiKeys"),
    ({"runtime": "triton", "tls": {"secretRef": {"name": "x"}}}, "applies only to runtime onnxruntime"),
    ({"auth": {"enabled": True, "serviceAccounts": {"allowed": ["no-namespace"]}}}, "allowed"),
])
def test_bad_specs_name_the_field(extra: dict[str, Any], message: str) -> None:
    spec = {"model": {"uri": "https://h/m.onnx", "sha256": SHA}, **extra}
    with pytest.raises(ValidationError) as err:
        ModelService.from_body(body("fraud", spec=spec))
    assert message in str(err.value)


@pytest.mark.parametrize(("line", "reason", "words"), [
    ("TLSCertificateInvalid: the certificate /etc/modelship/tls/tls.crt does not match the private key in "
     "/etc/modelship/tls/tls.key", "TLSCertificateInvalid", "cannot use the TLS Secret of spec.tls.secretRef"),
    ("TLSCertificateInvalid: TLS file /etc/modelship/tls/tls.crt does not exist", "TLSCertificateInvalid",
     "tls.crt does not exist"),
    ("AuthConfigInvalid: --auth-api-keys /etc/modelship/api-keys: no API keys found", "AuthConfigInvalid",
     "cannot start authentication as spec.auth asks"),
])
def test_the_servers_refusal_reaches_status(line: str, reason: str, words: str) -> None:
    """The server's termination line for a bad or missing Secret (tests/server/test_security.py
    checks the server writes it) becomes the ModelService's problem."""
    problem = diagnose([pod(containers=[waiting("server", "CrashLoopBackOff", "back-off 10s", restarts=2,
                                                last={"exitCode": 2, "message": line})])])
    assert problem is not None and problem.reason == reason
    assert words in problem.message


def test_a_missing_reviewer_account_is_named_in_status() -> None:
    """No pod exists to diagnose: the Deployment's ReplicaFailure condition (the ReplicaSet's
    FailedCreate, as kube-controller-manager copies it) is the problem."""
    deployment = {"status": {"conditions": [{
        "type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
        "message": 'pods "fraud-6d9f-" is forbidden: error looking up service account ml/modelship-serving: '
                   'serviceaccount "modelship-serving" not found'}]}}
    problem = replica_failure(deployment)
    assert problem is not None and problem.reason == "PodCreationFailed"
    assert 'serviceaccount "modelship-serving" not found' in problem.message
    assert "reviewerServiceAccount" in problem.message
    assert replica_failure({"status": {"conditions": [{"type": "Available", "status": "True"}]}}) is None
    assert replica_failure(None) is None
