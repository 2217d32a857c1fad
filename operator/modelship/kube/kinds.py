"""Where each kind the operator reads or writes lives in the API: (apiVersion, kind) -> plural,
and the URL path of an object or a collection built from it."""

from __future__ import annotations

from modelship import contracts

PLURALS: dict[tuple[str, str], str] = {
    ("v1", "ConfigMap"): "configmaps",
    ("apps/v1", "Deployment"): "deployments",
    ("v1", "Service"): "services",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobjects",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproutes",
    ("gateway.networking.k8s.io/v1", "GRPCRoute"): "grpcroutes",
    ("batch/v1", "Job"): "jobs",
    ("v1", "Pod"): "pods",
    ("v1", "Event"): "events",
    (contracts.API_VERSION, contracts.KIND): contracts.PLURAL,
}


def object_path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    """/api/v1/namespaces/NS/PLURAL[/NAME], or /apis/GROUP/VERSION/... for a named group."""
    plural = PLURALS[(api_version, kind)]
    prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    path = f"{prefix}/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path
