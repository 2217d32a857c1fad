"""`modelship render -f`: YAML out for good input; field-naming errors and exit 2 for bad."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import yaml

from msvc_samples import EXAMPLES


def _render(path: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelship.cli", "render", "-f", path],
                          input=stdin, capture_output=True, text=True, timeout=60)


def test_every_example_renders() -> None:
    for example in EXAMPLES:
        result = _render(str(example))
        assert result.returncode == 0, result.stderr
        docs = list(yaml.safe_load_all(result.stdout))
        kinds = [d["kind"] for d in docs if d["kind"] != "Job"]
        assert kinds[:4] == ["ConfigMap", "Deployment", "Service", "PodDisruptionBudget"], example


def test_an_optimized_service_shows_its_optimize_job_first(tmp_path: pathlib.Path) -> None:
    spec = yaml.safe_load(EXAMPLES[0].read_text())
    spec["spec"]["optimization"] = {"enabled": True, "budgetSeconds": 300}
    path = tmp_path / "optimized.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = _render(str(path))
    assert result.returncode == 0, result.stderr
    job = next(yaml.safe_load_all(result.stdout))
    assert job["kind"] == "Job" and job["metadata"]["name"].startswith(spec["metadata"]["name"] + "-optimize-")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["modelship", "optimize"] and "--budget-seconds=300" in " ".join(container["args"])


def test_a_dataset_shows_in_the_optimize_job(tmp_path: pathlib.Path) -> None:
    spec = yaml.safe_load(EXAMPLES[0].read_text())
    spec["spec"]["optimization"] = {"enabled": True,
                                    "dataset": {"uri": "https://data.example/val.npz", "sha256": "d5" * 32}}
    path = tmp_path / "dataset.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = _render(str(path))
    assert result.returncode == 0, result.stderr
    pod = next(yaml.safe_load_all(result.stdout))["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-model", "fetch-dataset"]
    assert "--dataset=/dataset/dataset.npz" in pod["containers"][0]["args"]


def test_bad_spec_names_each_field_without_a_traceback(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: modelship.dev/v1alpha1\nkind: ModelService\nmetadata: {name: m}\nspec:\n"
        "  model: {uri: 'https://h/m.onnx', sha256: abc}\n  replicas: two\n  runtime: tensorflow\n"
        "  autoscaling: {minReplicas: 5, maxReplicas: 2}\n  bogus: 1\n"
    )
    result = _render(str(bad))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "spec.model.sha256 must be 64 hexadecimal characters" in result.stderr
    assert "spec.replicas: Input should be a valid integer" in result.stderr and "'two'" in result.stderr
    assert "spec.runtime: Input should be 'onnxruntime' or 'triton' (got 'tensorflow')" in result.stderr
    assert "spec.autoscaling.minReplicas (5) must not exceed spec.autoscaling.maxReplicas (2)" in result.stderr
    assert "spec.bogus: Extra inputs are not permitted" in result.stderr
    assert result.stdout == ""


def test_not_yaml_missing_file_and_wrong_kind_exit_2(tmp_path: pathlib.Path) -> None:
    assert _render(str(tmp_path / "nope.yaml")).returncode == 2
    result = _render("-", stdin="a: [b\n")
    assert result.returncode == 2 and "not valid YAML" in result.stderr
    result = _render("-", stdin="apiVersion: v1\nkind: Pod\n")
    assert result.returncode == 2 and "expected kind ModelService, got 'Pod'" in result.stderr


def test_a_canary_with_a_gateway_ref_shows_its_route_and_track_services(tmp_path: pathlib.Path) -> None:
    spec = yaml.safe_load(EXAMPLES[0].read_text())
    spec["spec"]["rollout"] = {"strategy": "Canary", "canary": {"gatewayRef": {"name": "edge"}}}
    path = tmp_path / "routed.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = _render(str(path))
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(result.stdout))
    name = spec["metadata"]["name"]
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    assert services == {name, f"{name}-stable", f"{name}-canary"}
    route = next(d for d in docs if d["kind"] == "HTTPRoute")
    assert [(r["name"], r["weight"]) for r in route["spec"]["rules"][0]["backendRefs"]] == [
        (f"{name}-stable", 100), (f"{name}-canary", 0)]
    grpc = next(d for d in docs if d["kind"] == "GRPCRoute")
    assert [(r["name"], r["weight"], r["port"]) for r in grpc["spec"]["rules"][0]["backendRefs"]] == [
        (f"{name}-stable", 100, 8001), (f"{name}-canary", 0, 8001)]
