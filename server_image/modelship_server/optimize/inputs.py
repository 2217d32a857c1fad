"""Calibration and validation inputs: from a user's .npz file or generated from the model.

Quantization needs realistic activations and the accuracy gate needs inputs to compare on.
A user dataset is checked against the model up front so a misfit fails with a message that
names the input, instead of a shape error deep inside ONNX Runtime or the quantizer.

An .npz holds one array per input, in one of two layouts, told apart by rank:
- batch-first: the model's rank, samples on the batch axis; sample i is `array[i:i+1]`;
- stacked feeds: one axis more than the model's rank; sample i is `array[i]`, a complete
  feed, which is how a scalar input or a state with the batch on axis 1 is written.
Generated inputs follow the declared shapes and values (`modelship_server.feeds`).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import helper

from modelship_server import feeds
from modelship_server.feeds import Feed, InputHint, InputSpec, shape_text

__all__ = ["DatasetError", "Feed", "InputSpec", "generate", "input_specs", "load_dataset"]


class DatasetError(ValueError):
    """The dataset does not fit the model; the message says which input and how."""


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


def generate(specs: list[InputSpec], count: int, seed: int = 0,
             hints: Sequence[InputHint] = ()) -> list[Feed]:
    """`count` random feeds in the declared shapes and values (feeds.generate); strings
    cannot be generated."""
    for spec in specs:
        if spec.dtype.kind in "OSU":
            raise DatasetError(f"input {spec.name!r} has dtype {spec.dtype}, which cannot be generated; "
                               "pass --dataset FILE.npz with real inputs")
    return feeds.generate(specs, hints, count, seed=seed)


HOW_TO_WRITE = ("write every input the same way: batch-first, np.savez(path, **{name: array}) with the samples "
                "on the model's batch axis, or one complete feed per sample, np.savez(path, **{name: "
                "np.stack([feed[name] for feed in feeds])})")


def load_dataset(path: Path, specs: list[InputSpec]) -> list[Feed]:
    """Feeds from an .npz holding one array per input, batch-first or stacked feeds (see the
    module docstring); every input must be written the same way."""
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
    for spec in specs:
        if spec.dtype.kind == "O" and arrays[spec.name].dtype.kind in "US":  # strings: savez cannot store objects
            arrays[spec.name] = arrays[spec.name].astype(object)
        if arrays[spec.name].dtype != spec.dtype:
            raise DatasetError(f"dataset input {spec.name!r}: expected dtype {spec.dtype}, "
                               f"got {arrays[spec.name].dtype}")
    stacked = layout(path, specs, arrays)
    counts = set()
    for spec in specs:
        array = arrays[spec.name]
        sample = array.shape[1:] if stacked else (1,) + array.shape[1:]
        if any(want is not None and got != want for want, got in zip(spec.shape, sample)):
            form = ("one complete feed per sample on a new first axis" if stacked
                    else "samples on the first axis")
            raise DatasetError(f"dataset input {spec.name!r}: expected samples of shape {shape_text(spec.shape)} "
                               f"({form}), got {list(array.shape)}, i.e. samples of {list(sample)}")
        counts.add(array.shape[0])
    if len(counts) != 1 or 0 in counts:
        raise DatasetError(f"dataset {path}: every input needs the same, non-zero number of samples "
                           f"on the first axis, got {sorted(counts)}")
    total = counts.pop()
    if stacked:
        return [{name: arrays[name][i, ...] for name in expected} for i in range(total)]  # 0-d stays an array
    return [{name: arrays[name][i:i + 1] for name in expected} for i in range(total)]


def layout(path: Path, specs: list[InputSpec], arrays: dict[str, np.ndarray]) -> bool:
    """Pure: True when the arrays are stacked feeds, False when batch-first; DatasetError
    when the ranks do not say, or say different things for different inputs."""
    stacked, batch_first, wrong = [], [], []
    for spec in specs:
        rank, ndim = len(spec.shape), arrays[spec.name].ndim
        if ndim == rank + 1:
            stacked.append(spec.name)
        elif ndim == rank and rank > 0:
            batch_first.append(spec.name)
        else:
            wrong.append(f"{spec.name!r} has {ndim} axes for the model's {shape_text(spec.shape)}, expected "
                         f"{rank + 1} (stacked feeds)" + (f" or {rank} (batch-first)" if rank else ""))
    if wrong:
        raise DatasetError(f"dataset {path}: input {'; '.join(wrong)}; {HOW_TO_WRITE}")
    if stacked and batch_first:
        raise DatasetError(f"dataset {path} mixes layouts: {stacked} are stacked feeds (one axis more than the "
                           f"model's input) but {batch_first} are batch-first (the model's rank); {HOW_TO_WRITE}")
    if batch_first:
        fixed = [f"{s.name!r} {shape_text(s.shape)}" for s in specs if s.shape and s.shape[0] not in (None, 1)]
        if fixed:
            raise DatasetError(f"dataset {path}: batch-first samples need a batch axis first, but input "
                               f"{', '.join(fixed)} fixes its first axis; write one complete feed per sample: "
                               "np.savez(path, **{name: np.stack([feed[name] for feed in feeds])})")
    return bool(stacked)
