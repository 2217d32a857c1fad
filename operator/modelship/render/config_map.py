"""The ConfigMap that carries the generated config.pbtxt to the fetch step, which copies it
next to the model. Its content hash is on the pod template, so a config change rolls pods."""

from __future__ import annotations

from typing import Any

from modelship.api.v1alpha1 import ModelService
from modelship.render import names


def render_config_map(msvc: ModelService, *, pbtxt: str) -> dict[str, Any]:
    name = msvc.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": names.model_config(name),
            "namespace": msvc.metadata.namespace,
            "labels": names.labels(name, msvc.spec.runtime),
        },
        "data": {"config.pbtxt": pbtxt},
    }
