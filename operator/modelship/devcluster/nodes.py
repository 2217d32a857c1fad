"""The fake nodes of the local cluster, as pure manifests that kwok then keeps alive.

The shapes mimic a small real fleet: CPU-only workers, GPU nodes labelled the way NVIDIA's GPU
feature discovery labels them (`nvidia.com/gpu.product`, `.count`, `.memory`), and an A100 split
by MIG ("mixed" strategy, so it advertises `nvidia.com/mig-<profile>` instead of
`nvidia.com/gpu`). GPU nodes carry the `nvidia.com/gpu` NoSchedule taint that managed clouds put
on them; the API server's ExtendedResourceToleration admission plugin adds the matching
toleration to pods that request the resource, as on GKE and AKS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# kwok manages only nodes with this annotation, leaving room for other node agents.
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"
GPU_TAINT_KEY = "nvidia.com/gpu"


@dataclass(frozen=True)
class NodeShape:
    """What a node offers: CPU, memory, and optionally GPUs of one product or MIG slices."""

    name: str
    cpu: str = "8"
    memory: str = "32Gi"
    pods: int = 110
    gpus: int = 0
    gpu_product: str | None = None
    gpu_memory_mib: int | None = None
    mig: dict[str, int] = field(default_factory=dict)  # profile (e.g. "1g.10gb") -> count

    @property
    def has_accelerator(self) -> bool:
        return self.gpus > 0 or bool(self.mig)


DEFAULT_NODES: tuple[NodeShape, ...] = (
    NodeShape("cpu-0"),
    NodeShape("cpu-1"),
    NodeShape("gpu-l4-0", cpu="16", memory="64Gi", gpus=1, gpu_product="NVIDIA-L4", gpu_memory_mib=23034),
    NodeShape(
        "gpu-a100-0", cpu="32", memory="256Gi", gpus=2,
        gpu_product="NVIDIA-A100-SXM4-80GB", gpu_memory_mib=81920,
    ),
    NodeShape(
        "gpu-a100-mig-0", cpu="32", memory="256Gi",
        gpu_product="NVIDIA-A100-SXM4-80GB", gpu_memory_mib=81920,
        mig={"1g.10gb": 7},
    ),
)


def node_manifest(shape: NodeShape) -> dict[str, Any]:
    """The Node object, status included: kwok reports exactly the capacity written here."""
    labels = {
        "kubernetes.io/hostname": shape.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        "node.kubernetes.io/instance-type": "gpu" if shape.has_accelerator else "cpu",
    }
    capacity: dict[str, str] = {"cpu": shape.cpu, "memory": shape.memory, "pods": str(shape.pods)}
    taints = []
    if shape.has_accelerator:
        labels["nvidia.com/gpu.present"] = "true"
        if shape.gpu_product:
            labels["nvidia.com/gpu.product"] = shape.gpu_product
        if shape.gpu_memory_mib:
            labels["nvidia.com/gpu.memory"] = str(shape.gpu_memory_mib)
        taints.append({"key": GPU_TAINT_KEY, "value": "present", "effect": "NoSchedule"})
    if shape.gpus:
        labels["nvidia.com/gpu.count"] = str(shape.gpus)
        capacity["nvidia.com/gpu"] = str(shape.gpus)
    if shape.mig:
        labels["nvidia.com/mig.strategy"] = "mixed"
        labels["nvidia.com/mig.capable"] = "true"
        for profile, count in shape.mig.items():
            capacity[f"nvidia.com/mig-{profile}"] = str(count)
            labels[f"nvidia.com/mig-{profile}.count"] = str(count)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": shape.name,
            "labels": labels,
            "annotations": {KWOK_ANNOTATION: KWOK_ANNOTATION_VALUE, "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": taints} if taints else {},
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "fake",
                "kubeProxyVersion": "fake",
            },
        },
    }
