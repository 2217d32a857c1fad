"""The config.pbtxt a Triton pod ends with, for every corpus model, checked against Triton's
own schema and Triton's warm-up rules, since Triton itself cannot run here (no Docker).

The pod's steps run for real: the operator renders config.pbtxt from a ModelService with
`runtime: triton` and the model's declared inputs (`render_pbtxt`), `fit-config` fits its
batching to the file, and `triton-warmup` appends the sample. The final text is parsed with
protobuf's text_format into tritonclient's ModelConfig (model_config.proto), so a misspelt
field or enum value fails, and each sample is held to what Triton checks when it loads one
(model_config.proto's ModelWarmup comments; core's warm-up data builder): every model input,
the model's data type, fully known dims without the batch axis when batching, batch_size 1,
one data source per input, and a data file of exactly the tensor's byte size. Last, ONNX
Runtime runs the very tensors the sample describes, as Triton's warm-up request would.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

import corpus
from modelship.api.v1alpha1 import ModelService
from modelship.render.model_config import render_pbtxt
from modelship_server import fit_config, triton_warmup

# ONNX element type -> Triton's config enum and numpy type, written out here (not taken from
# modelship_server.datatypes) so the check does not share the code it checks.
ONNX_TO_TRITON: dict[int, tuple[int, Any]] = {
    onnx.TensorProto.FLOAT: (mc.TYPE_FP32, np.float32), onnx.TensorProto.FLOAT16: (mc.TYPE_FP16, np.float16),
    onnx.TensorProto.DOUBLE: (mc.TYPE_FP64, np.float64), onnx.TensorProto.INT8: (mc.TYPE_INT8, np.int8),
    onnx.TensorProto.INT16: (mc.TYPE_INT16, np.int16), onnx.TensorProto.INT32: (mc.TYPE_INT32, np.int32),
    onnx.TensorProto.INT64: (mc.TYPE_INT64, np.int64), onnx.TensorProto.UINT8: (mc.TYPE_UINT8, np.uint8),
    onnx.TensorProto.BOOL: (mc.TYPE_BOOL, np.bool_), onnx.TensorProto.STRING: (mc.TYPE_STRING, object),
}


def _declared(model: corpus.CorpusModel) -> list[dict[str, Any]]:
    """spec.model.inputs as a user would write it: the corpus hints, or, for a model that needs
    none, the shapes of one of its own samples (so every model gets a warm-up sample)."""
    hints = model.hints or {name: {"shape": list(a.shape)} for name, a in model.sample(batch=1).items()}
    return [{"name": name, **hint} for name, hint in hints.items()]


def _pod_config(model: corpus.CorpusModel, repo: Path) -> tuple[Path, mc.ModelConfig]:
    """Run the Triton pod's config steps on `model`; the model folder and the final config."""
    msvc = ModelService.from_body({
        "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService",
        "metadata": {"name": "svc", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": {"runtime": "triton",
                 "model": {"uri": "https://h.example/m.onnx", "sha256": "0" * 64, "inputs": _declared(model)}},
    })
    folder = repo / msvc.spec.model.name
    (folder / "1").mkdir(parents=True)
    shutil.copyfile(model.path(), folder / "1" / "model.onnx")
    (folder / "config.pbtxt").write_text(render_pbtxt(msvc.spec))
    fitted = fit_config.run(folder / "config.pbtxt", folder / "1" / "model.onnx", fit_config.AUTO)
    assert fitted.exit_code == 0 and not fitted.line.startswith(fit_config.FIT_SKIPPED), fitted.line
    print(triton_warmup.complete(folder))
    # Strict parse: an unknown field or enum name is a ParseError, as in Triton's loader.
    return folder, text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())


def _model_inputs(path: Path) -> dict[str, tuple[int, list[int | None]]]:
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return {i.name: (i.type.tensor_type.elem_type,
                     [d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim])
            for i in graph.input if i.name not in initializers}


@pytest.mark.parametrize("name", sorted(corpus.MODELS))
def test_the_written_config_is_a_model_config_triton_accepts(name, tmp_path):
    model = corpus.MODELS[name]
    folder, config = _pod_config(model, tmp_path)
    inputs = _model_inputs(folder / "1" / "model.onnx")
    batching = config.max_batch_size > 0
    assert batching == model.batchable, f"fit-config left max_batch_size {config.max_batch_size}"
    assert config.platform == "onnxruntime_onnx" and config.default_model_filename == "model.onnx"

    [sample] = config.model_warmup
    assert sample.count == 1 and sample.batch_size == 1  # <= max_batch_size; 1 when not batching
    assert set(sample.inputs) == set(inputs), "a warm-up sample must give every model input"
    feed: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(0)
    for input_name, (elem_type, model_dims) in inputs.items():
        entry = sample.inputs[input_name]
        config_type, np_type = ONNX_TO_TRITON[elem_type]
        assert entry.data_type == config_type, f"{input_name}: {mc.DataType.Name(entry.data_type)}"
        dims = list(entry.dims)
        shape = [sample.batch_size, *dims] if batching else dims
        assert len(shape) == len(model_dims) and all(d >= 0 for d in dims), f"{input_name}: dims {dims}"
        assert all(m is None or m == s for m, s in zip(model_dims, shape)), f"{input_name}: {shape} vs {model_dims}"
        source = entry.WhichOneof("input_data_type")
        assert source in ("zero_data", "random_data", "input_data_file"), f"{input_name}: no data source"
        if source == "input_data_file":
            assert np_type is not object, "string files need length prefixes; the writer uses zero_data"
            raw = (folder / triton_warmup.WARMUP_FOLDER / entry.input_data_file).read_bytes()
            assert len(raw) == int(np.prod(shape)) * np.dtype(np_type).itemsize, f"{input_name}: {len(raw)} bytes"
            feed[input_name] = np.frombuffer(raw, np_type).reshape(shape)
        elif source == "random_data":
            assert np.dtype(np_type).kind == "f", f"{input_name}: random data for {np_type}"
            feed[input_name] = rng.random(shape).astype(np_type)
        else:
            feed[input_name] = np.full(shape, b"", object) if np_type is object else np.zeros(shape, np_type)
    session = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert all(np.all(np.isfinite(o)) for o in session.run(None, feed) if np.asarray(o).dtype.kind == "f")


def test_a_misspelt_field_fails_the_parse(tmp_path):
    """The strict parse above can fail: the same text with one field name wrong is refused."""
    _, config = _pod_config(corpus.MODELS["vad-state"], tmp_path)
    text = text_format.MessageToString(config)
    assert "input_data_file" in text
    with pytest.raises(text_format.ParseError, match="input_data_fle"):
        text_format.Parse(text.replace("input_data_file", "input_data_fle", 1), mc.ModelConfig())
