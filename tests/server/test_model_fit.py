"""Batching follows the model, and Ready means the model answers (issue 12, Build 1 and 2).

On the real server with real tritonclient: a config that states batching against a model whose state
has the batch on axis 1 (the corpus's VAD) is a load failure that names the tensor and its dims
(that it serves with batching off, on every protocol, is in test_corpus_serving); a model that
cannot answer its own warm-up is not ready, and the reason reaches the termination log the operator
reads. The pure parts (the rule, the fit-config step's decision) are tested on their own below.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

import corpus
from modelship_server import batchability, fit_config, samples

STATE = batchability.Tensor


def vad():  # noqa: ANN201
    """The corpus's Silero-VAD-shaped model: state [2, batch, 128], scalar int64 sr."""
    import onnx

    return onnx.load(str(corpus.MODELS["vad-state"].path()))


# --- the rule ------------------------------------------------------------------------------

@pytest.mark.parametrize("tensors, problem", [
    ([STATE("x", "input", (-1, 4)), STATE("y", "output", (-1, 2))], None),
    ([STATE("ids", "input", (-1, -1)), STATE("mask", "input", (-1, -1)), STATE("h", "output", (-1, -1, 8))], None),
    ([STATE("audio", "input", (-1, 64)), STATE("state", "input", (2, -1, 128))],
     "input 'state' has dims [2, -1, 128]: its first dimension is fixed at 2, not a variable batch dimension"),
    ([STATE("x", "input", (-1, 4)), STATE("sr", "input", ())],
     "input 'sr' is a scalar (no dimensions), so it has no batch dimension to stack requests on"),
    ([STATE("image", "input", (1, 1, 64, -1)), STATE("logits", "output", (-1, 1, 10))],
     "input 'image' has dims [1, 1, 64, -1]: its first dimension is fixed at 1, not a variable batch dimension"),
    ([STATE("x", "input", (-1, 4)), STATE("count", "output", (1,))],
     "output 'count' has dims [1]: its first dimension is fixed at 1, not a variable batch dimension"),
])
def test_batch_problem_names_the_first_tensor_that_breaks_the_rule(tensors, problem):
    assert batchability.batch_problem(tensors) == problem


def test_dims_of_reads_symbolic_and_unknown_sizes_as_variable():
    assert batchability.dims_of(["N", 3, None, -1, 0]) == (-1, 3, -1, -1, 0)


# --- the fit-config step's decision (pure) -------------------------------------------------

RENDERED = """
name: "vad"
platform: "onnxruntime_onnx"
max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 1000 }
"""
VAD_TENSORS = [STATE("audio", "input", (-1, 64)), STATE("state", "input", (2, -1, 128)), STATE("sr", "input", ()),
               STATE("prob", "output", (-1, 1)), STATE("stateN", "output", (2, -1, 128))]


def _config(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def test_auto_turns_batching_off_for_a_model_that_cannot_batch_and_says_why():
    decided = fit_config.fit(_config(RENDERED), VAD_TENSORS, mode=fit_config.AUTO)
    assert decided.exit_code == 0
    assert decided.config is not None
    assert decided.config.max_batch_size == 0 and not decided.config.HasField("dynamic_batching")
    assert decided.config.name == "vad"  # the rest is kept
    assert decided.line == ("ModelNotBatchable: input 'state' has dims [2, -1, 128]: its first dimension is fixed at 2, "
                            "not a variable batch dimension; max_batch_size 8 -> 0, requests run one at a time")


def test_required_refuses_a_model_that_cannot_batch_with_the_field_to_change():
    decided = fit_config.fit(_config(RENDERED), VAD_TENSORS, mode=fit_config.REQUIRED)
    assert decided.exit_code == fit_config.EXIT_REFUSED and decided.config is None
    assert decided.line.startswith("BatchingNotSupported: spec.batching asks the server to batch up to 8 requests, "
                                   "but the model cannot batch: input 'state' has dims [2, -1, 128]")
    assert "spec.batching.enabled: false" in decided.line


@pytest.mark.parametrize("mode", [fit_config.AUTO, fit_config.REQUIRED])
def test_a_batchable_model_keeps_its_config(mode):
    tensors = [STATE("x", "input", (-1, 4)), STATE("y", "output", (-1, 2))]
    decided = fit_config.fit(_config(RENDERED), tensors, mode=mode)
    assert decided == fit_config.Fit(None, "BatchingFits: max_batch_size 8: every input and output has a variable "
                                           "first dimension", 0)


def test_batching_already_off_is_kept_and_the_model_reason_still_reported():
    decided = fit_config.fit(_config('name: "vad"\nmax_batch_size: 0\n'), VAD_TENSORS, mode=fit_config.AUTO)
    assert decided.config is None and decided.exit_code == 0
    assert decided.line.startswith("ModelNotBatchable: input 'state' has dims [2, -1, 128]")


def test_only_served_outputs_count():
    config = _config(RENDERED + 'output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]\n')
    tensors = [STATE("x", "input", (-1, 4)), STATE("y", "output", (-1, 2)), STATE("debug", "output", (3,))]
    assert fit_config.fit(config, tensors, mode=fit_config.REQUIRED).config is None
    assert fit_config.fit(config, tensors, mode=fit_config.REQUIRED).exit_code == 0


def test_the_step_rewrites_config_pbtxt_from_the_real_model_and_the_server_then_serves_it(tmp_path):
    folder = samples.write_model(tmp_path, "vad", vad(), RENDERED)
    log = tmp_path / "termination-log"
    r = subprocess.run([sys.executable, "-m", "modelship_server.fit_config", f"--config={folder}/config.pbtxt",
                        f"--model={folder}/1/model.onnx", "--batching=auto", f"--termination-log={log}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert log.read_text().startswith("ModelNotBatchable: input 'state' has dims [2, -1, 128]")
    fitted = _config((folder / "config.pbtxt").read_text())
    assert fitted.max_batch_size == 0 and not fitted.HasField("dynamic_batching")
    r = subprocess.run([sys.executable, "-m", "modelship_server.fit_config", f"--config={folder}/config.pbtxt",
                        f"--model={folder}/1/model.onnx", "--batching=required", f"--termination-log={log}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, "batching is off now: nothing to refuse"


def test_the_step_refuses_an_explicit_batching_and_leaves_the_config(tmp_path):
    folder = samples.write_model(tmp_path, "vad", vad(), RENDERED)
    log = tmp_path / "termination-log"
    r = subprocess.run([sys.executable, "-m", "modelship_server.fit_config", f"--config={folder}/config.pbtxt",
                        f"--model={folder}/1/model.onnx", "--batching=required", f"--termination-log={log}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 3
    assert log.read_text().startswith("BatchingNotSupported: spec.batching asks the server to batch up to 8")
    assert "Traceback" not in r.stderr
    assert (folder / "config.pbtxt").read_text() == RENDERED


# --- the real server -----------------------------------------------------------------------

def test_a_config_that_batches_a_model_that_cannot_is_a_load_failure_with_the_reason(tmp_path, start_server):
    samples.write_model(tmp_path, "vad", vad(), "max_batch_size: 8\ndynamic_batching { }\n")
    samples.write_model(tmp_path, "mlp", samples.mlp())
    server = start_server(tmp_path, "--exit-on-error", "false", wait=False)
    index = _settled_index(server, ["mlp", "vad"])
    assert index["mlp"][0] == "READY"
    assert server.status("/v2/models/vad/ready") != 200
    assert server.status("/v2/health/ready") == 503
    state, reason = index["vad"]
    assert state == "UNAVAILABLE"
    assert reason == ("model 'vad': config.pbtxt sets max_batch_size 8, but the model cannot batch: input 'state' has "
                      "dims [2, -1, 128]: its first dimension is fixed at 2, not a variable batch dimension. Set "
                      "max_batch_size: 0 (and remove dynamic_batching) to serve it one request at a time")


def _settled_index(server, names):
    """The repository index once every model in `names` has left LOADING (ready or failed)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            g = grpcclient.InferenceServerClient(server.grpc_url)
            try:
                index = {m.name: (m.state, m.reason) for m in g.get_model_repository_index().models}
            finally:
                g.close()
            if all(index.get(n, ("LOADING",))[0] not in ("LOADING", "") for n in names):
                return index
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        assert server.proc.poll() is None and time.monotonic() < deadline, server.log()
        time.sleep(0.05)


def _exit_on_error(repo, tmp_path):
    log = tmp_path / "termination-log"
    r = subprocess.run([sys.executable, "-m", "modelship_server", "--model-repository", str(repo),
                        "--allow-http", "false", "--allow-grpc", "false", "--allow-metrics", "false",
                        f"--termination-log={log}"], capture_output=True, text=True, timeout=90)
    return r, log.read_text() if log.exists() else ""


def test_a_contradicting_config_exits_with_the_reason_in_the_termination_log(tmp_path):
    repo = tmp_path / "repo"
    samples.write_model(repo, "vad", vad(), "max_batch_size: 4\n")
    r, line = _exit_on_error(repo, tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert line.startswith("BatchingNotSupported: model 'vad': config.pbtxt sets max_batch_size 4, but the model "
                           "cannot batch: input 'state' has dims [2, -1, 128]"), line


def test_a_model_that_cannot_answer_its_warm_up_is_not_ready(tmp_path, start_server):
    samples.write_model(tmp_path, "broken", samples.never_answers())
    samples.write_model(tmp_path, "mlp", samples.mlp())
    server = start_server(tmp_path, "--exit-on-error", "false", wait=False)
    index = _settled_index(server, ["mlp", "broken"])
    assert index["mlp"][0] == "READY"
    assert server.status("/v2/models/broken/ready") != 200
    assert server.status("/v2/health/ready") == 503  # the pod's readiness probe
    g = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        assert g.is_model_ready("broken") is False
    finally:
        g.close()
    state, reason = index["broken"]
    assert state == "UNAVAILABLE"
    assert reason.startswith("model 'broken' version 1: warm-up inference failed on generated inputs (x [")
    assert "indices element out of data bounds" in reason


def test_a_warm_up_failure_exits_with_its_reason_in_the_termination_log(tmp_path):
    repo = tmp_path / "repo"
    samples.write_model(repo, "broken", samples.never_answers())
    r, line = _exit_on_error(repo, tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert line.startswith("WarmupFailed: model 'broken' version 1: warm-up inference failed on generated inputs"), line
    assert "indices element out of data bounds" in line
    assert "\n" not in line.rstrip("\n")


def _batch_of_one_only():  # noqa: ANN201
    """Dims that claim a variable batch, a graph that only runs a batch of 1 (an export with a
    hard-coded batch): x [N, 4] -> y = x + Unsqueeze(Squeeze(x, axis 0)) [N, 4]."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Squeeze", ["x", "axis0"], ["row"]),
         helper.make_node("Unsqueeze", ["row", "axis0"], ["row2"]),
         helper.make_node("Add", ["x", "row2"], ["y"])], "batch_of_one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(np.array([0], np.int64), "axis0")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_a_model_that_answers_one_but_not_a_full_batch_is_not_ready_and_says_so(tmp_path, start_server):
    samples.write_model(tmp_path, "one", _batch_of_one_only())
    samples.write_model(tmp_path, "mlp", samples.mlp())
    server = start_server(tmp_path, "--exit-on-error", "false", "--default-max-batch-size", "4", wait=False)
    state, reason = _settled_index(server, ["mlp", "one"])["one"]
    assert state == "UNAVAILABLE"
    assert reason.startswith("model 'one' version 1: warm-up inference failed on generated inputs (x [4, 4]): ")
    assert reason.endswith("it answered a batch of 1, so it may not batch as its dims claim: turn batching off "
                           "(max_batch_size: 0, or spec.batching.enabled: false)")
