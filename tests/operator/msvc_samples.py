"""ModelService bodies for tests: the examples users copy, and small variations."""

from __future__ import annotations

import copy
import pathlib
from typing import Any

import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
SHA = "0123456789abcdef" * 4


def example(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "examples" / name).read_text())


def body(name: str = "svc", *, spec: dict[str, Any] | None = None, uid: str | None = "uid-1",
         generation: int = 1, namespace: str = "ns") -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "generation": generation}
    if uid:
        metadata["uid"] = uid
    return {
        "apiVersion": "modelship.dev/v1alpha1",
        "kind": "ModelService",
        "metadata": metadata,
        "spec": copy.deepcopy(spec) if spec else {"model": {"uri": "https://h.example/m.onnx", "sha256": SHA}},
    }
