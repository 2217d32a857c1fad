"""Which model file the pods serve: the spec's model, or the variant the optimize Job chose.

This is the seam for the optimize issue: it produces a `ModelArtifact` for the chosen
variant, and render serves it instead of the original. Until then every service serves
`original(spec)`.
"""

from __future__ import annotations

import dataclasses

from modelship.api.v1alpha1 import ModelServiceSpec


@dataclasses.dataclass(frozen=True)
class ModelArtifact:
    uri: str
    sha256: str
    variant: str  # shown in status.variant and `kubectl get msvc`


def original(spec: ModelServiceSpec) -> ModelArtifact:
    return ModelArtifact(uri=spec.model.uri, sha256=spec.model.sha256.lower(), variant="original")
