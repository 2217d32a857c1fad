"""The canary's children: its own Deployment and ConfigMap, derived from the stable ones the same
spec renders, so the canary runs exactly what stable would run after promotion.

Traffic is split by replica ratio behind the one Service (its selector matches both tracks), which
works on every cluster without a mesh: the canary gets `canary_replicas` pods next to stable's
full count. The canary's pods carry the track label and its Deployment selects on it; stable's
selector is older and immutable, and its ReplicaSets select on their pod-template-hash, so neither
Deployment adopts the other's pods. The canary mounts its own ConfigMap: the shared one is read by
stable's pods and keeps the previous spec's config until promotion.
"""

from __future__ import annotations

import json
from typing import Any

from modelship.render import names


def canary_replicas(stable: int, weight: int) -> int:
    """Canary replicas so that canary / (stable + canary) comes nearest `weight` percent, at
    least one; stable keeps its full count, so the canary adds capacity, never takes it away."""
    if stable <= 0:
        return 1
    return max(1, round(stable * weight / (100 - weight)))


def canary_objects(stable_config_map: dict[str, Any], stable_deployment: dict[str, Any], *,
                   replicas: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(ConfigMap, Deployment) of the canary from the rendered stable ones (not yet finished:
    the caller adds the ownerReference and the desired-hash)."""
    msvc_name = stable_deployment["metadata"]["labels"][names.SERVICE_LABEL]
    config_map = json.loads(json.dumps(stable_config_map))
    deployment = json.loads(json.dumps(stable_deployment))
    for obj in (config_map, deployment):
        annotations = obj["metadata"].get("annotations") or {}
        annotations.pop(names.DESIRED_HASH_ANNOTATION, None)
        obj["metadata"].pop("ownerReferences", None)
        obj["metadata"]["labels"] = {**obj["metadata"].get("labels", {}), names.TRACK_LABEL: names.CANARY_TRACK}
    config_map["metadata"]["name"] = names.canary_model_config(msvc_name)
    deployment["metadata"]["name"] = names.canary_deployment(msvc_name)
    spec = deployment["spec"]
    spec["replicas"] = replicas
    spec["selector"] = {"matchLabels": {**names.selector(msvc_name), names.TRACK_LABEL: names.CANARY_TRACK}}
    template = spec["template"]
    template["metadata"]["labels"][names.TRACK_LABEL] = names.CANARY_TRACK
    for volume in template["spec"].get("volumes", []):
        if (volume.get("configMap") or {}).get("name") == names.model_config(msvc_name):
            volume["configMap"]["name"] = names.canary_model_config(msvc_name)
    return config_map, deployment


def mirror_args(msvc_name: str, namespace: str | None, *, sample_rate: float, url: str | None = None,
                tls: bool = False) -> list[str]:
    """The canary server's flags that mirror a share of its requests to the Service and count how
    its answers agree with stable's (output agreement, docs/rollout.md). The Service also reaches
    the canary's own pods: they refuse mirrored requests, which are then skipped, not compared.
    `tls`: spec.tls is on, so the Service speaks HTTPS (the server trusts its own Secret's certificate)."""
    host = names.service(msvc_name) + (f".{namespace}.svc" if namespace else "")
    scheme = "https" if tls else "http"
    return ["--mirror-to", url or f"{scheme}://{host}:{names.HTTP_PORT}", "--mirror-sample-rate", f"{sample_rate:g}"]


def add_server_args(deployment: dict[str, Any], args: list[str]) -> None:
    """Append `args` to the modelship-server container's command."""
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        if container.get("name") == "server":
            container["command"] = [*container["command"], *args]
