"""Calibration and validation inputs: from a user's .npz file or generated from the model.

Quantization needs realistic activations and the accuracy gate needs inputs to compare on.
A user dataset is checked against the model up front so a misfit fails with a message that
names the input, instead of a shape error deep inside ONNX Runtime or the quantizer.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

Feed = dict[str, np.ndarray]


class DatasetError(ValueError):
    """The dataset does not fit the model; the message says which input and how."""


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, numpy dtype, shape with None for dynamic dimensions."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The graph inputs a caller must feed (initializers listed as inputs are not fed)."""
    initializers = {i.name for i in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                     for d in tensor.shape.dim)
        specs.append(InputSpec(value.name, np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)), dims))
    return specs


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def generate(specs: list[InputSpec], count: int, seed: int = 0) -> list[Feed]:
    """`count` random feeds, batch of one, dynamic dimensions set to 1, reproducible by seed."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed: Feed = {}
        for spec in specs:
            shape = tuple(1 if d is None else d for d in spec.shape)
            if spec.dtype.kind == "f":
                feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
            elif spec.dtype.kind in "iu":
                feed[spec.name] = rng.integers(0, 10, shape).astype(spec.dtype)
            elif spec.dtype.kind == "b":
                feed[spec.name] = rng.integers(0, 2, shape).astype(bool)
            else:
                raise DatasetError(f"input {spec.name!r} has dtype {spec.dtype}, which cannot be generated; "
                                   "pass --dataset FILE.npz with real inputs")
        feeds.append(feed)
    return feeds


def load_dataset(path: Path, specs: list[InputSpec]) -> list[Feed]:
    """Feeds from an .npz holding one array per input, samples stacked on the first axis.

    Sample i is `array[i:i+1]` for every input, so the batch axis stays in place.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise DatasetError(f"dataset {path} does not exist; pass an existing .npz file") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"dataset {path} is not a readable .npz file ({exc}); "
                           "write it with numpy.savez(path, **{input_name: array})") from None
    expected = {s.name for s in specs}
    missing = sorted(expected - arrays.keys())
    extra = sorted(arrays.keys() - expected)
    if missing:
        raise DatasetError(f"dataset {path} has no array for input(s) {missing}; the model expects "
                           f"{sorted(expected)} (found {sorted(arrays)})")
    if extra:
        raise DatasetError(f"dataset {path} has array(s) {extra} that are not model inputs; "
                           f"the model expects {sorted(expected)}")
    counts = set()
    for spec in specs:
        array = arrays[spec.name]
        if array.dtype != spec.dtype:
            raise DatasetError(f"dataset input {spec.name!r}: expected dtype {spec.dtype}, got {array.dtype}")
        if array.ndim != len(spec.shape) or any(
                want is not None and got != want for want, got in zip(spec.shape[1:], array.shape[1:])):
            raise DatasetError(f"dataset input {spec.name!r}: expected shape {_shape_text(spec.shape)} "
                               f"(samples on the first axis), got {list(array.shape)}")
        counts.add(array.shape[0])
    if len(counts) != 1 or 0 in counts:
        raise DatasetError(f"dataset {path}: every input needs the same, non-zero number of samples "
                           f"on the first axis, got {sorted(counts)}")
    total = counts.pop()
    return [{name: arrays[name][i:i + 1] for name in expected} for i in range(total)]
