"""spec.model.inputs, rendered and reported: the optimize Job gets them as --inputs, the
serving pods in config.pbtxt (the same JSON), and a Job that stops over its inputs has a
reason of its own in `Optimized` while the original serves. Pure, so table tests."""

from __future__ import annotations

from typing import Any

import pytest

from modelship.api.v1alpha1 import ModelService
from modelship.render import render_children
from modelship.render.model_config import INPUTS_PARAMETER, render_pbtxt
from modelship.render.optimize_job import digest, render_optimize_job
from modelship.status import optimization as o
from msvc_samples import SHA, body

INPUTS = [{"name": "audio", "shape": [1, 512]}, {"name": "state", "shape": [2, 1, 128]},
          {"name": "sr", "value": 16000}, {"name": "ids", "range": [0, 30521]},
          {"name": "x", "shape": [1, 3, 48, 160], "minShape": [1, 3, 48, 32], "maxShape": [4, 3, 48, 800]}]
WIRE = ('[{"name":"audio","shape":[1,512]},{"name":"state","shape":[2,1,128]},{"name":"sr","value":16000},'
        '{"name":"ids","range":[0,30521]},{"maxShape":[4,3,48,800],"minShape":[1,3,48,32],"name":"x",'
        '"shape":[1,3,48,160]}]')
JOB = "svc-optimize-0123456789"


def _msvc(inputs: list[dict[str, Any]] | None = INPUTS, **optimization: Any) -> ModelService:
    model: dict[str, Any] = {"uri": "https://h.example/m.onnx", "sha256": SHA}
    if inputs is not None:
        model["inputs"] = inputs
    return ModelService.from_body(body("svc", spec={"model": model, "optimization": {"enabled": True, **optimization}}))


def test_the_declaration_is_one_json_for_every_step() -> None:
    msvc = _msvc()
    assert msvc.spec.model.inputs_json() == WIRE
    args = render_optimize_job(msvc)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--inputs={WIRE}" in args
    assert f'parameters {{\n  key: "{INPUTS_PARAMETER}"\n  value {{\n    string_value: ' in render_pbtxt(msvc.spec)
    config_maps = [o for o in render_children(msvc).objects if o["kind"] == "ConfigMap"]
    assert config_maps and INPUTS_PARAMETER in config_maps[0]["data"]["config.pbtxt"]


def test_the_server_reads_what_the_operator_writes() -> None:
    """The JSON the operator renders parses to the same declaration in modelship_server.feeds."""
    feeds = pytest.importorskip("modelship_server.feeds")
    hints = feeds.parse_hints(_msvc().spec.model.inputs_json())
    assert [h.name for h in hints] == ["audio", "state", "sr", "ids", "x"]
    assert hints[2].value == 16000 and hints[3].range == (0, 30521) and hints[4].max_shape == (4, 3, 48, 800)
    assert feeds.HINTS_NEEDED_PREFIX == o.HINTS_NEEDED_PREFIX


def test_without_a_declaration_nothing_changes() -> None:
    msvc = _msvc(inputs=None)
    assert msvc.spec.model.inputs_json() is None
    assert not any(a.startswith("--inputs") for a in
                   render_optimize_job(msvc)["spec"]["template"]["spec"]["containers"][0]["args"])
    assert INPUTS_PARAMETER not in render_pbtxt(msvc.spec)


def test_a_new_declaration_is_a_new_job() -> None:
    assert digest(_msvc()) != digest(_msvc(inputs=INPUTS[:1])) != digest(_msvc(inputs=None))


UNDECLARED = ("error: inputs need declaring: input 'sr' is a scalar (int64): a generated value would be arbitrary; "
              "declare it (spec.model.inputs: name sr, value V, e.g. a sample rate) or give spec.optimization.dataset")
CONTRADICTS = ("error: spec.model.inputs[state].shape: dimension 0 is fixed to 2 by the model [2, ?, 128], "
               "got 3 in [3, 1, 128]")
REFUSED = ("error: the original model does not run on its inputs (x [1, 3, 1, 1]): [ONNXRuntimeError] : 2 : "
           "INVALID_ARGUMENT : Invalid input shape; declare the inputs' shapes and values (--inputs)")


@pytest.mark.parametrize(("detail", "reason", "words"), [
    (UNDECLARED, "InputsUndeclared", "input 'sr' is a scalar (int64)"),
    (CONTRADICTS, "InputsInvalid", "dimension 0 is fixed to 2 by the model [2, ?, 128], got 3"),
    (REFUSED, "InputsInvalid", "does not run on its inputs (x [1, 3, 1, 1])"),
])
def test_a_job_stopped_over_its_inputs_has_a_reason_of_its_own_and_the_original_serves(
        detail: str, reason: str, words: str) -> None:
    d = o.decide(_msvc(), JOB, o.JobResult("failed", detail=detail))
    assert (d.condition.status, d.condition.reason) == ("False", reason)
    assert words in d.condition.message and "spec.model.inputs" in d.condition.message
    assert d.condition.message.startswith(f"optimize Job {JOB} stopped before its search: ")
    assert d.artifact is not None and d.artifact.variant == "original"
    assert d.status == {"job": JOB, "outcome": "failed"}


def test_other_failures_keep_their_reason() -> None:
    d = o.decide(_msvc(), JOB, o.JobResult("failed", detail="error: model file is not a loadable ONNX model"))
    assert d.condition.reason == "Failed"


def _init_steps(msvc: ModelService) -> list[dict[str, Any]]:
    objs = {o["kind"]: o for o in render_children(msvc).objects}
    return objs["Deployment"]["spec"]["template"]["spec"]["initContainers"]


def test_triton_pods_write_their_model_warmup_from_the_declaration() -> None:
    """Triton warms up only with config samples, which need each input's data type: an init
    step reads it from the fetched model (modelship_server/triton_warmup.py)."""
    spec = {"model": {"uri": "https://h.example/m.onnx", "sha256": SHA, "name": "vad", "inputs": INPUTS},
            "runtime": "triton"}
    steps = _init_steps(ModelService.from_body(body("svc", spec=spec)))
    # first the model, last the warm-up: every step that rewrites config.pbtxt or the model runs before
    assert steps[0]["name"] == "fetch-model" and steps[-1]["name"] == "triton-warmup"
    warmup = steps[-1]
    assert warmup["command"] == ["python", "-m", "modelship_server.triton_warmup"]
    assert warmup["args"] == ["--model-dir=/models/vad"]
    assert warmup["securityContext"]["readOnlyRootFilesystem"] is True
    assert "triton-warmup" not in [s["name"] for s in _init_steps(_msvc())]  # modelship-server reads the parameter
    del spec["model"]["inputs"]
    assert "triton-warmup" not in [s["name"] for s in _init_steps(ModelService.from_body(body("svc", spec=spec)))]
