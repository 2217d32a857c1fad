"""Which model the pods serve: the spec's original, or the variant the optimize Job chose.

There is no artifact store. A variant is rebuilt in each serving pod from the verified
original by an `apply-variant` init step (`modelship optimize --apply-recipe ...`), which
checks the rebuilt file's sha256 against the one the Job measured; the Job ran on the same
hardware class as serving, which is why the digest reproduces. So an artifact is the
original's source plus the arguments that turn it into the variant.

An artifact also carries the batching the Job measured for it (`MeasuredBatching`), which
config.pbtxt uses where the spec leaves batching unset.
"""

from __future__ import annotations

import dataclasses

from modelship.api.v1alpha1 import ModelServiceSpec

ORIGINAL = "original"


@dataclasses.dataclass(frozen=True)
class MeasuredBatching:
    """The batching of the optimize Job's capacity model (C1 `capacity`)."""

    max_batch_size: int  # 0: the model has no batch dimension
    max_queue_delay_microseconds: int
    dynamic: bool = True  # False: requests run as they come, never stacked by the server


@dataclasses.dataclass(frozen=True)
class ModelArtifact:
    uri: str
    sha256: str  # of the file at `uri`, which the fetch step verifies
    variant: str  # shown in status.variant and `kubectl get msvc`
    apply_args: tuple[str, ...] = ()  # non-empty: rebuild the variant in the pod (C2)
    batching: MeasuredBatching | None = None
    # The session threads the variant was timed with (e.g. one thread per request); served
    # with the same unless spec.onnxruntime.intraOpThreads says otherwise.
    intra_op_threads: int | None = None


def original(spec: ModelServiceSpec, *, batching: MeasuredBatching | None = None) -> ModelArtifact:
    return ModelArtifact(uri=spec.model.uri, sha256=spec.model.sha256.lower(), variant=ORIGINAL, batching=batching)


def variant(spec: ModelServiceSpec, name: str, apply_args: list[str] | tuple[str, ...],
            *, batching: MeasuredBatching | None = None, intra_op_threads: int | None = None) -> ModelArtifact:
    """The optimize Job's chosen variant, rebuilt from the spec's original in every pod."""
    if not apply_args:
        raise ValueError(f"variant {name} has no apply arguments: the pods could not rebuild it")
    return ModelArtifact(uri=spec.model.uri, sha256=spec.model.sha256.lower(), variant=name,
                         apply_args=tuple(apply_args), batching=batching, intra_op_threads=intra_op_threads)
