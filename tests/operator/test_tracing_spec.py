"""spec.tracing rendered into the serving container, checked against what each runtime reads.

The onnxruntime flags are parsed by the server's own `--trace-config` parser (the contract
between the two sides, so a renamed key fails here, not in a pod); Triton's are compared with
the syntax its documentation gives (`--trace-config [opentelemetry,]key=value`).
"""

from __future__ import annotations

from typing import Any

from modelship.api.v1alpha1 import ModelService
from modelship.render import render_children
from modelship_server.tracing import exporter_endpoint, parse_trace_config
from msvc_samples import example


def _server(b: dict[str, Any]) -> dict[str, Any]:
    objs = {o["kind"]: o for o in render_children(ModelService.from_body(b)).objects}
    return objs["Deployment"]["spec"]["template"]["spec"]["containers"][0]


def test_tracing_off_renders_nothing() -> None:
    server = _server(example("cpu-onnxruntime.yaml"))
    assert not any("trace" in a for a in server["command"])
    assert "env" not in server


def test_onnxruntime_flags_are_what_the_server_parses() -> None:
    b = example("cpu-onnxruntime.yaml")
    b["metadata"]["namespace"] = "ml"
    b["spec"]["tracing"] = {"enabled": True, "endpoint": "otel-collector.observability:4317", "samplingRatio": 0.05}
    server = _server(b)
    cmd = server["command"]
    flags = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--trace-config"]
    env = {e["name"]: e for e in server["env"]}
    resource = env["OTEL_RESOURCE_ATTRIBUTES"]["value"].replace("$(POD_NAME)", "resnet50-cpu-abc")
    settings = parse_trace_config(flags, {"OTEL_RESOURCE_ATTRIBUTES": resource})
    assert settings.enabled and settings.ratio == 0.05 and settings.protocol == "grpc"
    assert exporter_endpoint(settings) == "http://otel-collector.observability:4317"
    assert dict(settings.resource) == {"service.name": "resnet50-cpu", "k8s.namespace.name": "ml",
                                       "k8s.pod.name": "resnet50-cpu-abc"}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    names = [e["name"] for e in server["env"]]
    assert names.index("POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES"), "$(POD_NAME) expands only if defined first"


def test_onnxruntime_http_protobuf_and_default_endpoint() -> None:
    b = example("cpu-onnxruntime.yaml")
    b["spec"]["tracing"] = {"enabled": True, "protocol": "http/protobuf"}
    cmd = _server(b)["command"]
    flags = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--trace-config"]
    settings = parse_trace_config(flags, {})
    assert settings.protocol == "http/protobuf" and settings.endpoint == "" and settings.ratio == 0.1


def test_triton_gets_its_own_trace_config_flags() -> None:
    b = example("gpu-triton.yaml")
    b["spec"]["tracing"] = {"enabled": True, "endpoint": "http://collector:4318", "samplingRatio": 0.01,
                            "protocol": "http/protobuf"}
    server = _server(b)
    tc = [a.removeprefix("--trace-config=") for a in server["command"] if a.startswith("--trace-config=")]
    name, ns = b["metadata"]["name"], b["metadata"].get("namespace", "default")
    assert tc == [
        "mode=opentelemetry", "count=-1", "level=TIMESTAMPS", "rate=100",
        "opentelemetry,url=http://collector:4318/v1/traces",
        f"opentelemetry,resource=service.name={name}", f"opentelemetry,resource=k8s.namespace.name={ns}",
        "opentelemetry,resource=k8s.pod.name=$(POD_NAME)",
    ]
    assert server["env"][0]["name"] == "POD_NAME"


def test_triton_ratio_zero_turns_its_tracing_off() -> None:
    b = example("gpu-triton.yaml")
    b["spec"]["tracing"] = {"enabled": True, "samplingRatio": 0, "protocol": "http/protobuf"}
    tc = [a for a in _server(b)["command"] if a.startswith("--trace-config=")]
    assert "--trace-config=level=OFF" in tc and not any("rate=" in a for a in tc)
