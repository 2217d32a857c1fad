"""Triton's model_warmup written from the declared inputs by the `triton-warmup` init step;
modelship-server reads the same fields as Triton, so serving the result proves its files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from modelship_server import samples, triton_warmup
from modelship.contracts import INPUTS_CONFIG_PARAMETER as CONFIG_PARAMETER

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "optimize"))
import models  # noqa: E402

VAD = [{"name": "audio", "shape": [1, 64]}, {"name": "state", "shape": [2, 1, 16]}, {"name": "sr", "value": 16000}]


def _config(max_batch_size: int, declared: list[dict]) -> str:
    return (f"max_batch_size: {max_batch_size}\n"
            f"parameters {{ key: \"{CONFIG_PARAMETER}\" value {{ string_value: {json.dumps(json.dumps(declared))} }} }}\n")


def test_the_sample_has_the_models_types_and_the_declared_shapes_and_values(tmp_path):
    folder = samples.write_model(tmp_path, "vad", models.stateful(), _config(0, VAD))
    assert triton_warmup.main(["--model-dir", str(folder)]) == 0
    config = text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())
    [sample] = config.model_warmup
    assert sample.batch_size == 1 and sample.count == 1
    inputs = {name: sample.inputs[name] for name in sample.inputs}
    assert list(inputs["audio"].dims) == [1, 64] and inputs["audio"].random_data
    assert inputs["state"].data_type == mc.TYPE_FP32 and list(inputs["state"].dims) == [2, 1, 16]
    assert inputs["sr"].data_type == mc.TYPE_INT64 and list(inputs["sr"].dims) == []
    raw = (folder / "warmup" / inputs["sr"].input_data_file).read_bytes()
    assert np.frombuffer(raw, np.int64).tolist() == [16000]
    assert triton_warmup.main(["--model-dir", str(folder)]) == 0  # a second run leaves it as it is
    assert len(text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig()).model_warmup) == 1


def test_batching_models_get_dims_without_the_batch_axis(tmp_path):
    folder = samples.write_model(tmp_path, "image", models.free_image(),
                                 _config(4, [{"name": "x", "shape": [1, 3, 24, 80]}]))
    assert triton_warmup.main(["--model-dir", str(folder)]) == 0
    config = text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())
    assert list(config.model_warmup[0].inputs["x"].dims) == [3, 24, 80]


def test_a_declaration_the_model_contradicts_is_one_line(tmp_path, capsys):
    folder = samples.write_model(tmp_path, "image", models.free_image(),
                                 _config(4, [{"name": "x", "shape": [1, 1, 24, 80]}]))
    assert triton_warmup.main(["--model-dir", str(folder)]) == 2
    assert capsys.readouterr().err.strip() == (
        "triton-warmup: error: spec.model.inputs[x].shape: dimension 1 is fixed to 3 by the model [?, 3, ?, ?], "
        "got 1 in [1, 1, 24, 80]")


@pytest.fixture
def completed_repo(tmp_path):
    repo = tmp_path / "repo"
    for name, model, config in (("vad", models.stateful(), _config(0, VAD)),
                                ("image", models.free_image(), _config(4, [{"name": "x", "shape": [1, 3, 24, 80]}]))):
        folder = samples.write_model(repo, name, model, config)
        assert triton_warmup.main(["--model-dir", str(folder)]) == 0
    return repo


def test_a_server_warms_up_on_the_written_samples(completed_repo, start_server):
    """A sample Triton's way (config.model_warmup, files under warmup/) must run, or the model
    does not load: so a Ready server proves the files hold what the model takes."""
    server = start_server(completed_repo)
    assert server.status("/v2/models/vad/ready") == 200 and server.status("/v2/models/image/ready") == 200
    assert "warm-up inference failed" not in server.log()


def test_a_feed_becomes_a_sample_of_exactly_its_values():
    """The capacity sweep's server warms up on the very request the sweep sends."""
    feed = {"x": np.arange(6, dtype=np.float32).reshape(1, 2, 3), "sr": np.array(8000), "t": np.array([[b"a"]], object)}
    sample, files = triton_warmup.sample_for(feed, max_batch_size=0)
    assert list(sample.inputs["x"].dims) == [1, 2, 3] and list(sample.inputs["sr"].dims) == []
    assert np.frombuffer(files[sample.inputs["x"].input_data_file], np.float32).tolist() == list(range(6))
    assert np.frombuffer(files[sample.inputs["sr"].input_data_file], np.int64).tolist() == [8000]
    assert sample.inputs["t"].zero_data and sample.inputs["t"].data_type == mc.TYPE_STRING
    batched, _ = triton_warmup.sample_for({"x": feed["x"]}, max_batch_size=8)
    assert list(batched.inputs["x"].dims) == [2, 3]  # the batch axis is the sample's batch_size
