"""Triton's `model_warmup`, written from the declared inputs once the model is in place.

Triton warms a model up only with the samples its config.pbtxt lists, and each sample needs
every input's data type, which the operator cannot know without reading the model. So a Triton
pod with `spec.model.inputs` runs this as an init step after the model (and its config) are
fetched: it reads the model's inputs from the ONNX file and the declaration from the config's
`modelship_inputs` parameter, and appends one warm-up sample in the declared shapes, with
`input_data_file`s under `<model>/warmup/` for declared values and ranges (random data for
floats, zeros otherwise, as Triton generates them). modelship-server reads the same fields.

    python -m modelship_server.triton_warmup --model-dir /models/resnet
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from modelship.contracts import INPUTS_CONFIG_PARAMETER as CONFIG_PARAMETER

from . import datatypes
from .feeds import InputHint, InputSpec, InputsError, check_hints, feed_shape, generate, parse_hints

SAMPLE_NAME = "modelship declared inputs"
WARMUP_FOLDER = "warmup"  # Triton's: input_data_file is relative to <model>/warmup/


def _file_name(name: str) -> str:
    """A file name for an input's data: its name with anything unsafe replaced."""
    return "input_" + re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def warmup_sample(specs: list[InputSpec], hints: list[InputHint], max_batch_size: int,
                  seed: int = 0) -> tuple[mc.ModelWarmup, dict[str, bytes]]:
    """Pure: one warm-up sample at batch 1 in the declared shapes, and the data files it names."""
    sample = mc.ModelWarmup(name=SAMPLE_NAME, batch_size=1, count=1)
    by_name = {h.name: h for h in hints}
    [feed] = generate(specs, hints, 1, seed=seed, batch=1 if max_batch_size > 0 else None)
    files: dict[str, bytes] = {}
    for spec in specs:
        hint = by_name.get(spec.name)
        datatype = datatypes.from_numpy(spec.dtype)
        shape = feed_shape(spec, hint, batch=1 if max_batch_size > 0 else None)
        entry = sample.inputs[spec.name]
        entry.data_type = mc.DataType.Value(datatypes.to_config(datatype))
        entry.dims.extend(shape[1:] if max_batch_size > 0 else shape)
        if datatype != "BYTES" and hint is not None and (hint.value is not None or hint.range is not None):
            entry.input_data_file = _file_name(spec.name)
            files[entry.input_data_file] = np.ascontiguousarray(feed[spec.name]).tobytes()
        elif spec.dtype.kind == "f":
            entry.random_data = True
        else:
            entry.zero_data = True
    return sample, files


def sample_for(feed: dict[str, np.ndarray], max_batch_size: int,
               name: str = SAMPLE_NAME) -> tuple[mc.ModelWarmup, dict[str, bytes]]:
    """Pure: a warm-up sample that is exactly `feed` (one request; batch 1 on axis 0 when
    max_batch_size > 0), every numeric input as a data file; strings as zero data (empty),
    since Triton's raw string files are length-prefixed."""
    sample = mc.ModelWarmup(name=name, batch_size=1, count=1)
    files: dict[str, bytes] = {}
    for input_name, array in feed.items():
        array = np.asarray(array)
        datatype = datatypes.from_numpy(array.dtype)
        entry = sample.inputs[input_name]
        entry.data_type = mc.DataType.Value(datatypes.to_config(datatype))
        entry.dims.extend(array.shape[1:] if max_batch_size > 0 else array.shape)
        if datatype == "BYTES":
            entry.zero_data = True
        else:
            entry.input_data_file = _file_name(input_name)
            files[entry.input_data_file] = np.ascontiguousarray(array).tobytes()
    return sample, files


def complete(model_dir: Path) -> str:
    """Append the sample to `<model_dir>/config.pbtxt` (unless it has model_warmup already)
    and write its files; what was done, in one line. InputsError when the declaration and the
    model disagree."""
    import onnx
    from google.protobuf import text_format

    from .optimize.inputs import input_specs

    config_path = model_dir / "config.pbtxt"
    config = text_format.Parse(config_path.read_text(), mc.ModelConfig())
    if config.model_warmup:
        return f"{config_path} has model_warmup already; left as it is"
    text = config.parameters[CONFIG_PARAMETER].string_value if CONFIG_PARAMETER in config.parameters else ""
    hints = parse_hints(text, where=f"config parameter {CONFIG_PARAMETER}")
    if not hints:
        return f"{config_path} declares no inputs; Triton warms up without samples"
    versions = sorted((p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    if not versions:
        raise InputsError(f"{model_dir} holds no version folder with a model")
    model_file = versions[-1] / (config.default_model_filename or "model.onnx")
    specs = input_specs(onnx.load(str(model_file), load_external_data=False))
    check_hints(specs, hints)
    sample, files = warmup_sample(specs, hints, config.max_batch_size)
    (model_dir / WARMUP_FOLDER).mkdir(exist_ok=True)
    for name, data in files.items():
        (model_dir / WARMUP_FOLDER / name).write_bytes(data)
    config.model_warmup.append(sample)
    config_path.write_text(text_format.MessageToString(config))
    return f"{config_path}: model_warmup for inputs {[s.name for s in specs]}, {len(files)} data file(s)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelship_server.triton_warmup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, type=Path,
                        help="the model's folder in the repository (config.pbtxt, <version>/model.onnx)")
    args = parser.parse_args(argv)
    try:
        print(f"triton-warmup: {complete(args.model_dir)}")
    except (InputsError, OSError) as exc:
        print(f"triton-warmup: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
