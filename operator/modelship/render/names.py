"""Fixed, derivable names and labels of a ModelService's children.

Names derive from the ModelService's name alone, so a re-run (or a restarted operator)
finds and adopts what an earlier run created instead of creating a second copy. The
selector label never changes: a Deployment's selector is immutable.
"""

from __future__ import annotations

# The labels and ports are contracts with the cache, the server image and users' selectors;
# named here too because every render reads them as names.X.
from modelship.contracts import GRPC_PORT as GRPC_PORT
from modelship.contracts import HTTP_PORT as HTTP_PORT
from modelship.contracts import METRICS_PORT as METRICS_PORT
from modelship.contracts import OPTIMIZE_LABEL as OPTIMIZE_LABEL
from modelship.contracts import SERVICE_LABEL as SERVICE_LABEL

VARIANT_ANNOTATION = "modelship.dev/variant"  # on the Deployment: the variant its pods serve
MANAGED_BY = {"app.kubernetes.io/managed-by": "modelship"}
DESIRED_HASH_ANNOTATION = "modelship.dev/desired-hash"
CONFIG_HASH_ANNOTATION = "modelship.dev/model-config-hash"
# On the Deployments: a hash of the rendered pod template, the canary's notion of a revision.
TEMPLATE_HASH_ANNOTATION = "modelship.dev/template-hash"
# On the canary's pods and in its selector (stable's pods carry none, so stable's template, and
# so its pods, do not change when a ModelService switches to the Canary strategy).
TRACK_LABEL = "modelship.dev/track"
CANARY_TRACK = "canary"
# On stable's pods only where an HTTPRoute needs a Service of stable's pods alone (a
# gatewayRef is set): a Service selects by equality, it cannot say "no track label".
STABLE_TRACK = "stable"


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


def canary_deployment(msvc_name: str) -> str:
    return f"{msvc_name}-canary"


def canary_model_config(msvc_name: str) -> str:
    return f"{msvc_name}-canary-model-config"


def stable_service(msvc_name: str) -> str:
    """The Service of stable's pods alone, a backend of the canary's HTTPRoute."""
    return f"{msvc_name}-stable"


def canary_service(msvc_name: str) -> str:
    """The Service of the canary's pods alone, the other backend of the HTTPRoute."""
    return f"{msvc_name}-canary"


def http_route(msvc_name: str) -> str:
    return msvc_name


def grpc_route(msvc_name: str) -> str:
    """Another kind than the HTTPRoute, so the same name: `kubectl get grpcroute <name>`."""
    return msvc_name


def optimize_job(msvc_name: str, digest: str) -> str:
    """`<msvc>-optimize-<digest>`, cut to 63 characters: a Job's name is also a label value
    on its pods. The digest covers the ModelService's name, so two long names sharing a
    prefix still get distinct Jobs."""
    suffix = f"-optimize-{digest}"
    return f"{msvc_name[:63 - len(suffix)].rstrip('-')}{suffix}"


def optimize_labels(msvc_name: str) -> dict[str, str]:
    """Labels of an optimize Job and its pods (no SERVICE_LABEL, see OPTIMIZE_LABEL)."""
    return {
        OPTIMIZE_LABEL: msvc_name,
        "app.kubernetes.io/name": "modelship-optimize",
        "app.kubernetes.io/instance": msvc_name,
        "app.kubernetes.io/component": "optimizer",
        **MANAGED_BY,
    }


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
