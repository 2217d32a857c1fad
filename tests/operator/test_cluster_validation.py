"""kube-apiserver refuses each invalid spec of the table, with a message naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from invalid_specs import INVALID, VALID, manifest

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize(("spec", "field", "words"), [pytest.param(s, f, w, id=i) for i, s, f, w in INVALID])
def test_the_api_server_refuses_and_names_the_field(cluster: Any, crd: None, spec: dict[str, Any], field: str,
                                                    words: str) -> None:
    result = cluster.kubectl("apply", "--dry-run=server", "-n", "default", "-f", "-",
                             input=json.dumps(manifest("invalid", spec)), check=False)
    assert result.returncode != 0, "the API server accepted an invalid spec"
    assert field in result.stderr, result.stderr
    assert words in result.stderr, result.stderr


@pytest.mark.parametrize("name", ["a" * 53, "1starts-with-digit"])
def test_names_that_cannot_name_a_service_are_refused(cluster: Any, crd: None, name: str) -> None:
    result = cluster.kubectl("apply", "--dry-run=server", "-n", "default", "-f", "-",
                             input=json.dumps(manifest(name, VALID)), check=False)
    assert result.returncode != 0
    assert "metadata.name" in result.stderr, result.stderr


def test_the_valid_base_is_accepted_and_defaulted_like_pydantic(cluster: Any, crd: None) -> None:
    from modelship.api.v1alpha1 import ModelService

    result = cluster.kubectl("apply", "--dry-run=server", "-n", "default", "-o", "json", "-f", "-",
                             input=json.dumps(manifest("valid", VALID)))
    stored = json.loads(result.stdout)
    assert stored["spec"] == ModelService.from_body(manifest("valid", VALID)).spec.wire()


def test_declared_inputs_are_accepted_as_pydantic_reads_them(cluster: Any, crd: None) -> None:
    from modelship.api.v1alpha1 import ModelService

    spec = {**VALID, "model": {**VALID["model"], "inputs": [
        {"name": "x", "shape": [1, 3, 48, 320], "minShape": [1, 3, 48, 32], "maxShape": [1, 3, 48, 1600]},
        {"name": "state", "shape": [2, 1, 128]}, {"name": "sr", "value": 16000},
        {"name": "ids", "shape": [1, 128], "range": [0, 30522]}, {"name": "scalar", "shape": []}]}}
    result = cluster.kubectl("apply", "--dry-run=server", "-n", "default", "-o", "json", "-f", "-",
                             input=json.dumps(manifest("inputs", spec)))
    stored = json.loads(result.stdout)
    assert stored["spec"] == ModelService.from_body(manifest("inputs", spec)).spec.wire()


@pytest.mark.parametrize("uri", ["https://user:hunter2@models.example.com", "ftp://models.example.com/m.onnx?sig=hunter2"])
def test_a_refused_uri_is_not_echoed_when_it_may_carry_a_secret(cluster: Any, crd: None, uri: str) -> None:
    """A userinfo password or a presigned query must not reach `kubectl` output or audit logs
    through the CRD's own error message."""
    spec = {**VALID, "model": {**VALID["model"], "uri": uri}}
    result = cluster.kubectl("apply", "--dry-run=server", "-n", "default", "-f", "-",
                             input=json.dumps(manifest("secret-uri", spec)), check=False)
    assert result.returncode != 0, "the API server accepted an invalid spec"
    assert "spec.model.uri" in result.stderr and "not shown here" in result.stderr, result.stderr
    assert "hunter2" not in result.stderr, result.stderr
