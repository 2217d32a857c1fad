"""Render: pure functions from a ModelService to the objects the operator wants to exist.

No I/O and no clock: the same spec gives the same objects, byte for byte, which makes
`modelship render -f` a faithful preview for GitOps review and lets the operator decide
whether to apply by comparing hashes instead of calling the API.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from modelship.api.v1alpha1 import ModelService
from modelship.kube.objects import owner_reference
from modelship.render import names
from modelship.render.artifact import ModelArtifact, original
from modelship.render.autoscaler import render_hpa, render_scaled_object
from modelship.render.canary import add_server_args, canary_objects, mirror_args
from modelship.render.config_map import render_config_map
from modelship.render.deployment import render_deployment
from modelship.render.disruption import render_pod_disruption_budget
from modelship.render.model_config import content_hash, render_pbtxt
from modelship.render.network import render_network_policy
from modelship.render.route import (
    GATEWAY_API_VERSION,
    GRPC_ROUTE,
    HTTP_ROUTE,
    render_grpc_route,
    render_http_route,
    render_track_services,
)
from modelship.render.service import render_service

# The kinds every ModelService renders or lists as absent, in the order they are applied
# (config before the pods that read it). apiVersion, kind; plurals in `kube.kinds`.
CORE_KINDS: tuple[tuple[str, str], ...] = (
    ("v1", "ConfigMap"),
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("policy/v1", "PodDisruptionBudget"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
)
# The autoscaler an engine other than builtin needs (at most one). Kept apart from the core
# kinds: they are not watched (the KEDA CRD may not exist), and listed in `absent_autoscalers`.
AUTOSCALER_KINDS: tuple[tuple[str, str], ...] = (
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("keda.sh/v1alpha1", "ScaledObject"),
)

# The canary's HTTPRoute and GRPCRoute (spec.rollout.canary.gatewayRef): like the autoscalers not
# watched (the Gateway API, or its GRPCRoute, may not be installed), applied with the canary's
# weights by the reconciler.
ROUTE_KINDS: tuple[tuple[str, str], ...] = ((GATEWAY_API_VERSION, HTTP_ROUTE), (GATEWAY_API_VERSION, GRPC_ROUTE))


@dataclasses.dataclass(frozen=True)
class ChildRef:
    api_version: str
    kind: str
    name: str


@dataclasses.dataclass(frozen=True)
class Rendered:
    """What should exist (`objects`) and what this ModelService may own but should not
    (`absent`, e.g. the NetworkPolicy after it was switched off)."""

    objects: list[dict[str, Any]]
    absent: list[ChildRef]
    artifact: ModelArtifact
    absent_autoscalers: list[ChildRef] = dataclasses.field(default_factory=list)
    measured_capacity: float | None = None  # requests/s per replica the HPA/KEDA target came from


def render_children(msvc: ModelService, *, artifact: ModelArtifact | None = None,
                    measured_capacity: float | None = None) -> Rendered:
    """All children of `msvc`, each with labels, a controller ownerReference (when the
    ModelService has a uid) and a desired-hash annotation. `measured_capacity`: the optimize
    Job's requests/s per replica, the HPA/KEDA target's base when the spec sets none."""
    artifact = artifact or original(msvc.spec)
    pbtxt = render_pbtxt(msvc.spec, artifact.batching, artifact.intra_op_threads, artifact.tensorrt)
    objects: list[dict[str, Any] | None] = [
        render_config_map(msvc, pbtxt=pbtxt),
        render_deployment(msvc, artifact=artifact, config_hash=content_hash(pbtxt)),
        render_service(msvc),
        render_pod_disruption_budget(msvc),
        render_network_policy(msvc),
    ]
    absent = [
        ChildRef(api_version, kind, msvc.metadata.name)
        for (api_version, kind), obj in zip(CORE_KINDS, objects)
        if obj is None
    ]
    track_services = render_track_services(msvc)
    if not track_services:  # no gatewayRef: the per-track Services go if an earlier spec had them
        absent += [ChildRef("v1", "Service", names.stable_service(msvc.metadata.name)),
                   ChildRef("v1", "Service", names.canary_service(msvc.metadata.name))]
    objects += track_services
    autoscalers = [render_hpa(msvc, measured_capacity=measured_capacity),
                   render_scaled_object(msvc, measured_capacity=measured_capacity)]
    absent_autoscalers = [ChildRef(api_version, kind, names.deployment(msvc.metadata.name))
                          for (api_version, kind), obj in zip(AUTOSCALER_KINDS, autoscalers) if obj is None]
    finished = [_finish(obj, msvc) for obj in [*objects, *autoscalers] if obj is not None]
    return Rendered(objects=finished, absent=absent, artifact=artifact, absent_autoscalers=absent_autoscalers,
                    measured_capacity=measured_capacity)


def render_canary(msvc: ModelService, rendered: Rendered, *, replicas: int) -> list[dict[str, Any]]:
    """The canary's ConfigMap and Deployment (`replicas` pods) for the spec `rendered` holds."""
    by_kind = {o["kind"]: o for o in rendered.objects}
    config_map, deployment = canary_objects(by_kind["ConfigMap"], by_kind["Deployment"], replicas=replicas)
    analysis = msvc.spec.rollout.canary_settings.analysis
    if analysis.min_output_agreement is not None and msvc.spec.runtime != "triton":
        add_server_args(deployment, mirror_args(msvc.metadata.name, msvc.metadata.namespace,
                                                sample_rate=analysis.mirror_sample_rate, url=analysis.mirror_to,
                                                tls=msvc.spec.tls is not None))
    return [_finish(config_map, msvc), _finish(deployment, msvc)]


def render_route(msvc: ModelService, backends: list[tuple[str, int]]) -> dict[str, Any]:
    """The canary's HTTPRoute with these (Service, weight) backends, owned by the ModelService."""
    return _finish(render_http_route(msvc, backends), msvc)


def render_grpc(msvc: ModelService, backends: list[tuple[str, int]]) -> dict[str, Any]:
    """The canary's GRPCRoute with the same (Service, weight) backends, owned by the ModelService."""
    return _finish(render_grpc_route(msvc, backends), msvc)


def template_revision(obj: dict[str, Any] | None) -> str | None:
    """The pod template's revision a rendered or live Deployment carries (None: unknown)."""
    if obj is None:
        return None
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(names.TEMPLATE_HASH_ANNOTATION)


def desired_hash(obj: dict[str, Any]) -> str:
    """A hash of the object as rendered, without the hash annotation itself."""
    stripped = json.loads(json.dumps(obj))
    annotations = stripped["metadata"].get("annotations")
    if annotations is not None:
        annotations.pop(names.DESIRED_HASH_ANNOTATION, None)
        if not annotations:
            del stripped["metadata"]["annotations"]
    canonical = json.dumps(stripped, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def _finish(obj: dict[str, Any], msvc: ModelService) -> dict[str, Any]:
    obj = json.loads(json.dumps(obj))  # no shared sub-dicts between children
    metadata = obj["metadata"]
    if msvc.metadata.uid:
        metadata["ownerReferences"] = [owner_reference(msvc.metadata.name, msvc.metadata.uid)]
    metadata.setdefault("annotations", {})[names.DESIRED_HASH_ANNOTATION] = desired_hash(obj)
    return obj
