"""The Helm chart: lint, least-privilege RBAC, restricted pod security, and a server-side dry run."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
import yaml

from kube_helpers import REPO

CHART = REPO / "charts" / "modelship"


def _rendered(*args: str) -> list[dict[str, Any]]:
    import subprocess

    from modelship.devcluster.toolchain import binary_paths, cache_dir, tools_dir

    helm = binary_paths(tools_dir(), cache_dir())["helm"]
    if not helm.is_file():
        pytest.skip("helm is built with the local control plane (modelship dev-cluster up)")
    out = subprocess.run([str(helm), "template", "ms", str(CHART), "-n", "modelship-system", "--include-crds", *args],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_the_chart_ships_the_one_crd() -> None:
    link = CHART / "crds" / "modelservices.modelship.dev.yaml"
    assert link.resolve() == (REPO / "crds" / "modelservices.modelship.dev.yaml").resolve()


def _verbs(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    return {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}


@pytest.mark.parametrize("values", [(), ("--set", "watchNamespaces={team-a,team-b}")], ids=["cluster", "namespaced"])
def test_rbac_has_no_wildcards_and_never_reads_secrets(values: tuple[str, ...]) -> None:
    roles = [d for d in _rendered(*values) if d["kind"] in ("ClusterRole", "Role")]
    assert roles
    for role in roles:
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], rule
            if "secrets" in rule["resources"]:
                raise AssertionError(f"the operator must not touch Secrets: {rule}")
    for role in roles:
        verbs = _verbs(role)
        if ("coordination.k8s.io", "leases") in verbs:
            assert verbs == {("coordination.k8s.io", "leases"): {"get", "create", "update"}}, "the Lease, nothing else"
            continue
        assert verbs[("modelship.dev", "modelservices")] == {"get", "list", "watch"}, "never writes the user's spec"
        assert verbs[("modelship.dev", "modelservices/status")] == {"get", "patch"}


def test_watching_namespaces_grants_nothing_cluster_wide() -> None:
    everywhere = _rendered()
    cluster_role = next(d for d in everywhere if d["kind"] == "ClusterRole")
    namespaced = _rendered("--set", "watchNamespaces={team-a,team-b}")
    assert not [d for d in namespaced if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    roles = {d["metadata"]["namespace"]: d for d in namespaced if d["kind"] == "Role" and "leader" not in d["metadata"]["name"]}
    bindings = {d["metadata"]["namespace"]: d for d in namespaced if d["kind"] == "RoleBinding"
                and "leader" not in d["metadata"]["name"]}
    assert set(roles) == set(bindings) == {"team-a", "team-b"}
    for namespace, role in roles.items():
        assert role["rules"] == cluster_role["rules"], "the same rules, only narrower in scope"
        binding = bindings[namespace]
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": role["metadata"]["name"]}
        assert binding["subjects"][0]["namespace"] == "modelship-system"
    args = next(d for d in namespaced if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args


@pytest.mark.parametrize("values", [(), ("--set", "watchNamespaces={team-a}")], ids=["cluster", "namespaced"])
def test_the_lease_role_lives_in_the_release_namespace(values: tuple[str, ...]) -> None:
    manifests = _rendered(*values)
    role = next(d for d in manifests if d["kind"] == "Role" and d["metadata"]["name"].endswith("-leader-election"))
    binding = next(d for d in manifests if d["kind"] == "RoleBinding"
                   and d["metadata"]["name"].endswith("-leader-election"))
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "modelship-system"
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_two_replicas_elect_a_leader_and_a_pdb_keeps_one_through_drains() -> None:
    manifests = _rendered()
    deployment = next(d for d in manifests if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = deployment["spec"]["template"]["spec"]
    assert "--leader-election-namespace=modelship-system" in pod["containers"][0]["args"]
    assert pod["affinity"]["podAntiAffinity"]
    pdb = next(d for d in manifests if d["kind"] == "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    single = _rendered("--set", "replicas=1")
    assert not [d for d in single if d["kind"] == "PodDisruptionBudget"], "a PDB of one would block every drain"


def test_operator_pod_fits_the_restricted_pod_security_standard() -> None:
    deployment = next(d for d in _rendered() if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    from test_render import assert_restricted

    assert_restricted(pod)


def test_values_schema_is_valid_json_and_covers_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) == set(schema["properties"])


@pytest.mark.cluster
def test_helm_lint_strict_and_server_side_dry_run(cluster: Any, crd: None) -> None:
    cluster.helm("lint", "--strict", str(CHART))
    bad = cluster.helm("template", "ms", str(CHART), "--set", "workers=0", check=False)
    assert bad.returncode != 0 and "workers" in bad.stderr
    cluster.kubectl("create", "namespace", "modelship-system", check=False)
    manifests = _rendered()
    result = cluster.kubectl("apply", "--dry-run=server", "--server-side", "-f", "-",
                             input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}))
    assert result.stdout.count("(server dry run)") == len(manifests)


@pytest.mark.cluster
def test_an_operator_with_the_namespaced_rbac_serves_its_namespace_and_nothing_else(
        cluster: Any, crd: None, namespace: str, tmp_path: pathlib.Path) -> None:
    """watchNamespaces=[ns]: the chart's Roles are enough to reconcile there (the operator runs
    with that ServiceAccount's token), and the account can do nothing in another namespace."""
    from accounts import service_account_kubeconfig
    from kube_helpers import OperatorProcess, apply, get, is_ready, wait_for
    from test_api_faults import manifest

    release_ns = f"{namespace}-op"
    cluster.kubectl("create", "namespace", release_ns)
    try:
        rendered = cluster.helm("template", "nsop", str(CHART), "-n", release_ns, "--set",
                                f"watchNamespaces={{{namespace}}}").stdout
        kinds = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
        rbac = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in kinds]
        assert {d["kind"] for d in rbac} == {"ServiceAccount", "Role", "RoleBinding"}
        for doc in rbac:
            doc["metadata"].setdefault("namespace", release_ns)
        cluster.kubectl("apply", "--server-side", "-f", "-",
                        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": rbac}))
        account = next(d for d in rbac if d["kind"] == "ServiceAccount")["metadata"]["name"]
        user = f"system:serviceaccount:{release_ns}:{account}"
        can = lambda *a: cluster.kubectl("auth", "can-i", *a, "--as", user, check=False).stdout.strip()  # noqa: E731
        assert can("patch", "deployments", "-n", namespace) == "yes"
        assert can("update", "leases", "-n", release_ns) == "yes"
        assert can("patch", "deployments", "-n", "default") == "no"
        assert can("list", "modelservices.modelship.dev", "--all-namespaces") == "no"
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump(service_account_kubeconfig(cluster, release_ns, account)))
        op = OperatorProcess(path, tmp_path / "operator.log", args=(
            "--namespace", namespace, "--leader-election-namespace", release_ns))
        try:
            op.start()
            apply(cluster, manifest("scoped"), namespace)
            wait_for(lambda: is_ready(get(cluster, "msvc", "scoped", "-n", namespace)), timeout=90,
                     what="the ModelService Ready under the namespaced RBAC")
        finally:
            op.stop()
            print(op.log()[-3000:])
        assert "Forbidden" not in op.log()
    finally:
        cluster.kubectl("delete", "namespace", release_ns, "--wait=false", check=False)
