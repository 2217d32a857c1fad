"""Fixed, derivable names and labels of a ModelService's children.

Names derive from the ModelService's name alone, so a re-run (or a restarted operator)
finds and adopts what an earlier run created instead of creating a second copy. The
selector label never changes: a Deployment's selector is immutable.
"""

from __future__ import annotations

SERVICE_LABEL = "modelship.dev/modelservice"
MANAGED_BY = {"app.kubernetes.io/managed-by": "modelship"}
DESIRED_HASH_ANNOTATION = "modelship.dev/desired-hash"
CONFIG_HASH_ANNOTATION = "modelship.dev/model-config-hash"

HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002


def deployment(msvc_name: str) -> str:
    return msvc_name


def service(msvc_name: str) -> str:
    return msvc_name


def pod_disruption_budget(msvc_name: str) -> str:
    return msvc_name


def network_policy(msvc_name: str) -> str:
    return msvc_name


def model_config(msvc_name: str) -> str:
    return f"{msvc_name}-model-config"


def selector(msvc_name: str) -> dict[str, str]:
    """The pods' selector; immutable for the life of the Deployment."""
    return {SERVICE_LABEL: msvc_name}


def labels(msvc_name: str, runtime: str) -> dict[str, str]:
    """Labels on every child and pod: the selector plus the recommended app.kubernetes.io set."""
    return {
        **selector(msvc_name),
        "app.kubernetes.io/name": "triton" if runtime == "triton" else "modelship-server",
        "app.kubernetes.io/instance": msvc_name,
        "app.kubernetes.io/component": "predictor",
        **MANAGED_BY,
    }


def endpoints(msvc_name: str, namespace: str) -> dict[str, str]:
    """In-cluster URLs of the Service (the `.svc` suffix works whatever the cluster domain)."""
    host = f"{service(msvc_name)}.{namespace}.svc"
    return {"http": f"http://{host}:{HTTP_PORT}", "grpc": f"{host}:{GRPC_PORT}"}
