"""Which model the pods serve: the spec's original, or the variant the optimize Job chose.

There is no artifact store. A variant is rebuilt in each serving pod from the verified
original by an `apply-variant` init step (`modelship optimize --apply-recipe ...`), which
checks the rebuilt file's sha256 against the one the Job measured; the Job ran on the same
hardware class as serving, which is why the digest reproduces. So an artifact is the
original's source plus the arguments that turn it into the variant.

An artifact also carries the batching the Job measured for it (`MeasuredBatching`), which
config.pbtxt uses where the spec leaves batching unset.

A variant calibrated on spec.optimization.dataset (static int8, a partly-fp32 int8) is rebuilt
from the same calibration inputs: its apply_args read `--dataset <path the Job used>`, and the
artifact then carries that dataset (`DatasetFile`) for the pods to fetch and verify at that
path. Variants that need no calibration rebuild without it, and their pods do not fetch it.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from modelship.api.v1alpha1 import ModelServiceSpec
from modelship.render.pod import DATASET_MOUNT

ORIGINAL = "original"
DATASET_FLAG = "--dataset"


@dataclasses.dataclass(frozen=True)
class DatasetFile:
    """The dataset a variant's rebuild reads: fetched from `uri`, verified against `sha256`,
    placed at `path` (the path the optimize Job read it from, which its apply_args name)."""

    uri: str
    sha256: str
    path: str


def dataset_path(apply_args: Sequence[str]) -> str | None:
    """The path `--dataset PATH` (or `--dataset=PATH`) in `apply_args` names, or None."""
    for index, arg in enumerate(apply_args):
        if arg == DATASET_FLAG and index + 1 < len(apply_args):
            return apply_args[index + 1]
        if arg.startswith(DATASET_FLAG + "="):
            return arg.split("=", 1)[1]
    return None


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
    dataset: DatasetFile | None = None  # set: the rebuild reads it, so the pods fetch it first
    # The variant is a TensorRT one that passed the gate: serve with TensorRT on, as it was timed.
    tensorrt: GatedTensorRT | None = None


@dataclasses.dataclass(frozen=True)
class GatedTensorRT:
    """The TensorRT settings of a chosen variant (contract SummaryTensorRT)."""

    precision: str  # "fp32" or "fp16"
    profile: tuple[tuple[str, str], ...] = ()  # (ORT option, shapes text), e.g. trt_profile_min_shapes


def original(spec: ModelServiceSpec, *, batching: MeasuredBatching | None = None) -> ModelArtifact:
    return ModelArtifact(uri=spec.model.uri, sha256=spec.model.sha256.lower(), variant=ORIGINAL, batching=batching)


def variant(spec: ModelServiceSpec, name: str, apply_args: list[str] | tuple[str, ...],
            *, batching: MeasuredBatching | None = None, intra_op_threads: int | None = None,
            tensorrt: GatedTensorRT | None = None) -> ModelArtifact:
    """The optimize Job's chosen variant, rebuilt from the spec's original in every pod (with
    spec.optimization.dataset when its apply_args read one). ValueError, naming what is
    wrong, when the pods could not rebuild it."""
    if not apply_args:
        raise ValueError(f"variant {name} has no apply arguments: the pods could not rebuild it")
    return ModelArtifact(uri=spec.model.uri, sha256=spec.model.sha256.lower(), variant=name,
                         apply_args=tuple(apply_args), batching=batching, intra_op_threads=intra_op_threads,
                         dataset=_dataset_for(spec, name, apply_args), tensorrt=tensorrt)


def _dataset_for(spec: ModelServiceSpec, name: str, apply_args: Sequence[str]) -> DatasetFile | None:
    path = dataset_path(apply_args)
    if path is None:
        return None
    dataset = spec.optimization.dataset
    if dataset is None:
        raise ValueError(f"variant {name} is rebuilt from a dataset ({DATASET_FLAG} {path} in its apply_args), "
                         "but spec.optimization.dataset is not set: the pods have no dataset to fetch")
    if not path.startswith(DATASET_MOUNT + "/") or ".." in path.split("/"):
        raise ValueError(f"variant {name} reads its dataset at {path}, but pods place it under {DATASET_MOUNT}/; "
                         "delete the optimize Job to optimize again")
    return DatasetFile(uri=dataset.uri, sha256=dataset.sha256.lower(), path=path)
