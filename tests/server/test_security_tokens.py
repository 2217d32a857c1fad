"""ServiceAccount tokens checked by TokenReview (and SubjectAccessReview) against the real
kube-apiserver of the test plane, with the real server process on loopback.

The server reviews with its own ServiceAccount (`reviewer`), bound to the built-in
ClusterRole system:auth-delegator, as the operator renders it in a pod (docs/security.md).
Callers' tokens come from the TokenRequest API (`kubectl create token`).
"""

from __future__ import annotations

import base64
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
import yaml
from .test_security import raw, wait_for

from modelship_server import samples
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.cluster
AUDIENCE = "modelship.dev/test"


def plane_ca(cluster) -> bytes:
    entry = yaml.safe_load(Path(cluster.kubeconfig).read_text())["clusters"][0]["cluster"]
    if entry.get("certificate-authority-data"):
        return base64.b64decode(entry["certificate-authority-data"])
    return Path(entry["certificate-authority"]).read_bytes()


@pytest.fixture(scope="module")
def accounts(cluster):
    """A namespace with the reviewer and three callers; deleted afterwards."""
    ns = f"auth-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    for sa in ("reviewer", "caller", "reader", "stranger", "doomed"):
        cluster.kubectl("-n", ns, "create", "serviceaccount", sa)
    cluster.kubectl("create", "clusterrolebinding", f"{ns}-reviewer", "--clusterrole=system:auth-delegator",
                    f"--serviceaccount={ns}:reviewer")
    # SubjectAccessReview: `reader` may `infer` the ModelService ns/fraud, `caller` may not
    # (a manifest: `kubectl create role` checks verbs and resources against what the plane serves)
    cluster.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "infer-fraud"},
        "rules": [{"apiGroups": ["modelship.dev"], "resources": ["modelservices"], "verbs": ["infer"],
                   "resourceNames": ["fraud"]}]}))
    cluster.kubectl("-n", ns, "create", "rolebinding", "infer-fraud", "--role=infer-fraud",
                    f"--serviceaccount={ns}:reader")
    try:
        yield ns, plane_ca(cluster)
    finally:
        cluster.kubectl("delete", "clusterrolebinding", f"{ns}-reviewer", check=False)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def token(cluster, ns, sa, audience=AUDIENCE):
    return cluster.kubectl("-n", ns, "create", "token", sa, f"--audience={audience}", "--duration=1h").stdout.strip()


@pytest.fixture(scope="module")
def reviewer_args(cluster, accounts, tmp_path_factory):
    ns, ca = accounts
    folder = tmp_path_factory.mktemp("reviewer")
    # the API server's default audience, as the pod's own mounted token has
    (folder / "token").write_text(cluster.kubectl("-n", ns, "create", "token", "reviewer", "--duration=2h").stdout.strip())
    (folder / "ca.crt").write_bytes(ca)
    return ["--auth-token-review", "true", "--auth-kube-api", cluster.server,
            "--auth-kube-token-file", str(folder / "token"), "--auth-kube-ca-file", str(folder / "ca.crt")]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    samples.write_model(root, "fraud", samples.mlp())
    return root


def code(server, tok=None, header=None):
    headers = {"Authorization": header or f"Bearer {tok}"} if (tok or header) else {}
    status, body, _ = raw(server.http_port, "GET", "/v2/models/fraud", headers)
    return status, (json.loads(body).get("error", "") if body else "")


def test_allowed_service_account(cluster, accounts, reviewer_args, repo, module_server_factory):
    ns, _ = accounts
    server = module_server_factory(repo, *reviewer_args, "--auth-audiences", AUDIENCE,
                                   "--auth-allowed-service-accounts", f"{ns}/caller,{ns}/doomed",
                                   "--auth-cache-ttl", "1")
    caller = token(cluster, ns, "caller")
    assert code(server, caller) == (200, "")
    assert code(server)[0] == 401
    status, why = code(server, token(cluster, ns, "caller", audience="someone-else"))
    assert status == 401 and "not accepted" in why
    status, why = code(server, "not-a-jwt")
    assert status == 401 and "not a ServiceAccount token" in why
    status, why = code(server, "aaaa.bbbb.cccc")
    assert status == 401 and "not accepted by the Kubernetes API" in why
    status, why = code(server, token(cluster, ns, "stranger"))
    assert status == 403 and f"system:serviceaccount:{ns}:stranger" in why

    # gRPC: the same verdicts, as status codes
    g = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        assert g.get_model_metadata("fraud", headers={"authorization": f"Bearer {caller}"}).name == "fraud"
        with pytest.raises(InferenceServerException) as err:
            g.get_model_metadata("fraud", headers={"authorization": f"Bearer {token(cluster, ns, 'stranger')}"})
        assert err.value.status() == "StatusCode.PERMISSION_DENIED"
        with pytest.raises(InferenceServerException) as err:
            g.get_model_metadata("fraud")
        assert err.value.status() == "StatusCode.UNAUTHENTICATED"
    finally:
        g.close()

    # a revoked token: its ServiceAccount is deleted; once the cached verdict expires, 401
    doomed = token(cluster, ns, "doomed")
    assert code(server, doomed)[0] == 200
    cluster.kubectl("-n", ns, "delete", "serviceaccount", "doomed")
    wait_for("the deleted account's token refused", lambda: code(server, doomed)[0] == 401, timeout=30)

    # the cache: repeated calls with one token are hits, and nothing logs a token
    for _ in range(5):
        assert code(server, caller)[0] == 200
    metrics = server.metrics()
    hits = [line for line in metrics.splitlines() if line.startswith('modelship_auth_cache_lookups_total{result="hit"}')]
    assert hits and float(hits[0].split()[-1]) >= 4
    log = server.log()
    assert caller not in log and doomed not in log
    assert caller.split(".")[2] not in log


def test_concurrent_requests_with_a_new_token_cost_one_review(cluster, accounts, reviewer_args, repo,
                                                              module_server_factory):
    """Twenty requests at once with a fresh token: each either waits for the one review running or
    hits its cached verdict, so the miss counter moves by exactly one."""
    ns, _ = accounts
    server = module_server_factory(repo, *reviewer_args, "--auth-audiences", AUDIENCE)
    fresh = token(cluster, ns, "caller")

    def misses():
        for line in server.metrics().splitlines():
            if line.startswith('modelship_auth_cache_lookups_total{result="miss"}'):
                return float(line.split()[-1])
        return 0.0

    before = misses()
    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(lambda _: code(server, fresh)[0], range(20)))
    assert codes == [200] * 20
    assert misses() == before + 1


def test_subject_access_review(cluster, accounts, reviewer_args, repo, module_server_factory):
    ns, _ = accounts
    server = module_server_factory(repo, *reviewer_args, "--auth-audiences", AUDIENCE,
                                   "--auth-access-review", f"{ns}/fraud")
    assert code(server, token(cluster, ns, "reader")) == (200, "")
    status, why = code(server, token(cluster, ns, "caller"))
    assert status == 403 and f"may not infer modelservices/fraud in namespace {ns}" in why


def test_unreachable_api_is_503_not_cached(accounts, reviewer_args, repo, module_server_factory, cluster):
    ns, _ = accounts
    args = list(reviewer_args)
    args[args.index("--auth-kube-api") + 1] = "https://127.0.0.1:1"
    server = module_server_factory(repo, *args)
    status, why = code(server, token(cluster, ns, "caller"))
    assert status == 503 and "cannot reach the Kubernetes API" in why
    assert 'modelship_auth_cache_entries 0.0' in server.metrics()  # a failure to ask is not a verdict
