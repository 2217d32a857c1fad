"""Declared inputs on the serving side: warm-up runs the shapes and values of the config's
`modelship_inputs` parameter (what spec.model.inputs renders), a declaration that
contradicts the model fails the load naming the input, and `modelship bench` sends the
declared or the dataset's shapes instead of asking for --shape."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from modelship_server import bench, samples
from modelship_server.errors import ModelLoadError
from modelship.contracts import INPUTS_CONFIG_PARAMETER as CONFIG_PARAMETER
from modelship_server.registry import ServedModel, warmup_feeds
from modelship_server.repository import BatchingPolicy, TensorSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "optimize"))
import models  # noqa: E402  (tests/optimize/models.py: the free-image and stateful models)

VAD_INPUTS = [{"name": "audio", "shape": [1, 64]}, {"name": "state", "shape": [2, 1, 16]},
              {"name": "sr", "value": 16000}]


def _served(inputs: list[TensorSpec], max_batch_size: int, declared: object = None) -> ServedModel:
    model = ServedModel("m", "1", Path("/nonexistent/1/model.onnx"))
    model.config = mc.ModelConfig(name="m", max_batch_size=max_batch_size)
    if declared is not None:
        model.config.parameters[CONFIG_PARAMETER].string_value = json.dumps(declared)
    model.inputs = inputs
    model.policy = BatchingPolicy(max_batch_size=max_batch_size, dynamic=max_batch_size > 0)
    return model


def test_warmup_feeds_follow_the_declaration():
    stateful = [TensorSpec("audio", "FP32", (-1, -1)), TensorSpec("state", "FP32", (2, -1, 16)),
                TensorSpec("sr", "INT64", ())]
    feeds = warmup_feeds(_served(stateful, 0, VAD_INPUTS))
    assert len(feeds) == 1
    assert {k: v.shape for k, v in feeds[0].items()} == {"audio": (1, 64), "state": (2, 1, 16), "sr": ()}
    assert int(feeds[0]["sr"]) == 16000
    image = [TensorSpec("x", "FP32", (3, -1, -1))]  # batching: dims exclude the batch axis
    declared = [{"name": "x", "shape": [1, 3, 24, 80], "maxShape": [2, 3, 48, 400]}]
    shapes = [f["x"].shape for f in warmup_feeds(_served(image, 8, declared))]
    assert shapes == [(1, 3, 24, 80), (8, 3, 24, 80), (2, 3, 48, 400)]  # batch 1, max_batch_size, maxShape
    assert [f["x"].shape for f in warmup_feeds(_served(image, 8))] == [(1, 3, 1, 1), (8, 3, 1, 1)]  # as before


@pytest.mark.parametrize("declared, words", [
    ([{"name": "x", "shape": [1, 4, 24, 80]}],
     "spec.model.inputs[x].shape: dimension 1 is fixed to 3 by the model [?, 3, ?, ?], got 4 in [1, 4, 24, 80]"),
    ([{"name": "y", "shape": [1]}], "names input 'y', which the model does not have"),
    ("not a list", "must be a JSON list"),
])
def test_a_declaration_the_model_contradicts_fails_the_load(declared, words):
    with pytest.raises(ModelLoadError) as err:
        warmup_feeds(_served([TensorSpec("x", "FP32", (3, -1, -1))], 8, declared))
    assert words in str(err.value) and str(err.value).startswith("model m: ")


def _config(max_batch_size: int, declared: list[dict]) -> str:
    return (f"max_batch_size: {max_batch_size}\n"
            f"parameters {{ key: \"{CONFIG_PARAMETER}\" value {{ string_value: {json.dumps(json.dumps(declared))} }} }}\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory, module_server_factory):
    repo = tmp_path_factory.mktemp("repo")
    samples.write_model(repo, "image", models.free_image(), _config(4, [{"name": "x", "shape": [1, 3, 24, 80]}]))
    samples.write_model(repo, "vad", models.stateful(), _config(0, VAD_INPUTS))
    return module_server_factory(repo)


def test_served_models_warm_up_on_the_declared_inputs(server):
    log = server.log()
    assert "warm-up inference failed" not in log, log
    for name in ("image", "vad"):
        with urllib.request.urlopen(f"http://{server.http_url}/v2/models/{name}/ready", timeout=5) as r:
            assert r.status == 200


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bench_sends_the_declared_shapes(server, protocol, tmp_path):
    url = server.grpc_url if protocol == "grpc" else server.http_url
    out = tmp_path / "r.json"
    rc = bench.main(["-m", "image", "-i", protocol, "-u", url, "--inputs", json.dumps([{"name": "x", "shape": [1, 3, 24, 80]}]),
                     "--measurement-interval", "300", "--warmup-interval", "50", "-b", "2", "-q",
                     "--output-format", "json", "-f", str(out)])
    assert rc == 0
    [row] = json.loads(out.read_text())
    assert row["requests"] > 0 and row["errors"] == 0


def test_bench_sends_a_datasets_first_samples(server, tmp_path):
    data = tmp_path / "vad.npz"
    feeds = [{"audio": np.ones((1, 64), np.float32), "state": np.zeros((2, 1, 16), np.float32),
              "sr": np.array(16000)}] * 3
    np.savez(data, **{k: np.stack([f[k] for f in feeds]) for k in feeds[0]})
    out = tmp_path / "r.json"
    rc = bench.main(["-m", "vad", "-u", server.grpc_url, "--dataset", str(data), "--measurement-interval", "300",
                     "--warmup-interval", "50", "-q", "--output-format", "json", "-f", str(out)])
    assert rc == 0
    [row] = json.loads(out.read_text())
    assert row["requests"] > 0 and row["errors"] == 0


def test_bench_without_shapes_names_both_ways_to_give_them(server, capsys):
    assert bench.main(["-m", "image", "-u", server.grpc_url, "-q"]) == 2
    err = capsys.readouterr().err
    assert "input x has variable dims [?, 3, ?, ?]" in err and "--shape x:3,4,4" in err and "--inputs" in err
    assert bench.main(["-m", "image", "-u", server.grpc_url, "--inputs", "[{]", "-q"]) == 2
    assert "bench: --inputs is not JSON" in capsys.readouterr().err
    assert bench.main(["-m", "image", "-u", server.grpc_url, "-q", "--inputs",
                       json.dumps([{"name": "x", "shape": [3, 24, 80]}])]) == 2
    assert "input x: expected 4 dimensions like the model's [?, 3, ?, ?], got [3, 24, 80]" in capsys.readouterr().err
