"""`spec.tracing` as the serving container's flags and environment (pure).

Both runtimes take Triton's `--trace-config` syntax, so the flags are near twins; what
differs, and why:
- modelship's server samples parent-based: `ratio=` is the share of root requests, and a
  caller's sampled `traceparent` is always followed. Triton samples every N-th request
  (`rate=N`, N = 1/samplingRatio rounded); a ratio of 0 turns Triton's tracing off
  (`level=OFF`), since it has no parent-based mode to fall back on.
- Triton exports OTLP over HTTP only (the spec's validation refuses grpc for it), to a URL
  with a path; an endpoint without one gets /v1/traces, as the OTLP exporters do.
- The pod's name and namespace go into the resource attributes, through the downward API,
  so spans from different replicas can be told apart.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from modelship.api.v1alpha1 import ModelService


def _http_url(endpoint: str) -> str:
    url = endpoint if "://" in endpoint else "http://" + endpoint
    if urlsplit(url).path in ("", "/"):
        url = url.rstrip("/") + "/v1/traces"
    return url


def tracing_flags(msvc: ModelService) -> tuple[list[str], list[dict[str, Any]]]:
    """(extra command-line flags, extra env entries) for the server container; empty when tracing is off."""
    tracing = msvc.spec.tracing
    if not tracing.enabled:
        return [], []
    name, namespace = msvc.metadata.name, msvc.metadata.namespace
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    resource = f"service.name={name},k8s.namespace.name={namespace},k8s.pod.name=$(POD_NAME)"
    if msvc.spec.runtime == "triton":
        flags = ["--trace-config=mode=opentelemetry", "--trace-config=count=-1"]
        if tracing.sampling_ratio > 0:
            flags += ["--trace-config=level=TIMESTAMPS", f"--trace-config=rate={max(1, round(1 / tracing.sampling_ratio))}"]
        else:
            flags.append("--trace-config=level=OFF")
        if tracing.endpoint:
            flags.append(f"--trace-config=opentelemetry,url={_http_url(tracing.endpoint)}")
        flags += [f"--trace-config=opentelemetry,resource={kv}" for kv in resource.split(",")]
        return flags, env
    flags = ["--trace-config", "mode=opentelemetry",
             "--trace-config", f"ratio={tracing.sampling_ratio:g}",
             "--trace-config", f"opentelemetry,protocol={tracing.protocol}"]
    if tracing.endpoint:
        flags += ["--trace-config", f"opentelemetry,url={tracing.endpoint}"]
    env.append({"name": "OTEL_RESOURCE_ATTRIBUTES", "value": resource})
    return flags, env
