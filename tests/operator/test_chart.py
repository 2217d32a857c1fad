"""The Helm chart: lint, least-privilege RBAC, restricted pod security, and a server-side dry run."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from kube_helpers import REPO

CHART = REPO / "charts" / "modelship"


def _rendered() -> list[dict[str, Any]]:
    import subprocess

    from modelship.devcluster.toolchain import binary_paths, cache_dir, tools_dir

    helm = binary_paths(tools_dir(), cache_dir())["helm"]
    if not helm.is_file():
        pytest.skip("helm is built with the local control plane (modelship dev-cluster up)")
    out = subprocess.run([str(helm), "template", "ms", str(CHART), "-n", "modelship-system", "--include-crds"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_the_chart_ships_the_one_crd() -> None:
    link = CHART / "crds" / "modelservices.modelship.dev.yaml"
    assert link.resolve() == (REPO / "crds" / "modelservices.modelship.dev.yaml").resolve()


def test_rbac_has_no_wildcards_and_never_reads_secrets() -> None:
    role = next(d for d in _rendered() if d["kind"] == "ClusterRole")
    for rule in role["rules"]:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], rule
        if "secrets" in rule["resources"]:
            raise AssertionError(f"the operator must not touch Secrets: {rule}")
    verbs = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert verbs[("modelship.dev", "modelservices")] == {"get", "list", "watch"}, "never writes the user's spec"
    assert verbs[("modelship.dev", "modelservices/status")] == {"get", "patch"}


def test_operator_pod_fits_the_restricted_pod_security_standard() -> None:
    deployment = next(d for d in _rendered() if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    from test_render import assert_restricted

    assert_restricted(pod)
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"


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
