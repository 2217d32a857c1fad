"""TensorRT is served only where gated: the optimize Job's TensorRT variant passed the accuracy
gate and was chosen, or the spec forces it and status says it is ungated (docs/gpu.md)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from modelship.api.v1alpha1 import ModelService
from modelship.contracts import TENSORRT_CACHE_PATH, TENSORRT_CACHE_VOLUME
from modelship.render import render_children
from modelship.render.artifact import GatedTensorRT
from modelship.render.deployment import TENSORRT_STARTUP_FAILURES
from modelship.render.model_config import tensorrt_choice
from modelship.status import optimization as o
from msvc_samples import SHA, body

VARIANT_SHA = "cd" * 32
PROFILE = {"trt_profile_min_shapes": "x:1x3x32x32", "trt_profile_opt_shapes": "x:1x3x32x32",
           "trt_profile_max_shapes": "x:8x3x32x32"}
GATED = GatedTensorRT("fp16", tuple(sorted(PROFILE.items())))


def spec_body(*, gpu: int = 1, runtime: str = "onnxruntime", optimization: bool = True,
              **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"uri": "https://h/m.onnx", "sha256": SHA}, "runtime": runtime,
                            "resources": {"gpu": {"count": gpu}} if gpu else {},
                            "optimization": {"enabled": optimization}, **extra}
    return body(spec=spec)


@pytest.mark.parametrize(
    ("extra", "gpu", "gated", "precision", "state"),
    [
        ({}, 0, GATED, None, "off"),  # no GPU: never
        ({}, 1, None, None, "off"),  # nothing gated: off, not on by default
        ({}, 1, GATED, "fp16", "gated"),
        ({"onnxruntime": {"tensorrt": False}}, 1, GATED, None, "off"),  # the user's off wins
        ({"onnxruntime": {"tensorrt": True}}, 1, None, "fp16", "ungated"),
        ({"onnxruntime": {"tensorrt": True, "tensorrtPrecision": "fp32"}}, 1, None, "fp32", "ungated"),
        ({"onnxruntime": {"tensorrt": True, "tensorrtPrecision": "fp32"}}, 1, GATED, "fp32", "ungated"),  # other precision
        ({"onnxruntime": {"tensorrt": True}}, 1, GATED, "fp16", "gated"),  # forced and judged alike
        ({"runtime": "triton", "triton": {"tensorrt": True}}, 1, None, "fp16", "ungated"),
        ({"runtime": "triton"}, 1, None, None, "off"),
    ],
)
def test_tensorrt_choice(extra: dict[str, Any], gpu: int, gated: GatedTensorRT | None, precision: str | None,
                         state: str) -> None:
    extra = dict(extra)
    runtime = extra.pop("runtime", "onnxruntime")
    msvc = ModelService.from_body(spec_body(gpu=gpu, runtime=runtime, **extra))
    choice = tensorrt_choice(msvc.spec, gated)
    assert (choice.precision, choice.state) == (precision, state), choice.message
    if state == "ungated":
        assert "never checked" in choice.message


def _children(msvc: ModelService, artifact: Any = None) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in render_children(msvc, artifact=artifact).objects}


def test_gated_variant_renders_accelerator_profile_cache_volume_and_longer_startup() -> None:
    msvc = ModelService.from_body(spec_body())
    decision = o.decide(msvc, "job", o.JobResult("succeeded", summary=o.parse_summary(json.dumps(_summary()))))
    assert decision.artifact is not None and decision.artifact.tensorrt == GATED
    assert decision.status is not None and decision.status["tensorrt"].startswith("gated: TensorRT fp16")
    objs = _children(msvc, decision.artifact)
    config = text_format.Parse(objs["ConfigMap"]["data"]["config.pbtxt"], pb.ModelConfig())
    (accel,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accel.name == "tensorrt" and accel.parameters["precision_mode"] == "FP16"
    assert accel.parameters["trt_engine_cache_path"] == TENSORRT_CACHE_PATH
    assert {k: accel.parameters[k] for k in PROFILE} == PROFILE
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert {"name": TENSORRT_CACHE_VOLUME, "mountPath": TENSORRT_CACHE_PATH} in server["volumeMounts"]
    assert any(v["name"] == TENSORRT_CACHE_VOLUME and "emptyDir" in v for v in pod["volumes"])
    assert server["startupProbe"]["failureThreshold"] == TENSORRT_STARTUP_FAILURES


def test_without_tensorrt_no_accelerator_no_cache_volume_and_the_usual_startup() -> None:
    msvc = ModelService.from_body(spec_body())
    decision = o.decide(msvc, "job", o.JobResult("succeeded", summary=o.parse_summary(json.dumps(
        _summary(chosen="fp16-cuda", tensorrt=None)))))
    assert decision.status is not None and decision.status["tensorrt"].startswith("off: ")
    objs = _children(msvc, decision.artifact)
    config = text_format.Parse(objs["ConfigMap"]["data"]["config.pbtxt"], pb.ModelConfig())
    assert not config.optimization.execution_accelerators.gpu_execution_accelerator
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    assert all(v["name"] != TENSORRT_CACHE_VOLUME for v in pod["volumes"])
    assert pod["containers"][0]["startupProbe"]["failureThreshold"] < TENSORRT_STARTUP_FAILURES


def test_forced_without_optimization_says_ungated_in_status() -> None:
    msvc = ModelService.from_body(spec_body(optimization=False, onnxruntime={"tensorrt": True}))
    decision = o.disabled(msvc)
    assert decision.status == {"tensorrt": "ungated: TensorRT fp16: forced by the spec (tensorrt: true); its "
                                           "accuracy was never checked by the optimize Job's gate"}
    assert o.disabled(ModelService.from_body(spec_body(gpu=0, optimization=False))).status is None


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ({"precision": "int8"}, "precision one of fp32, fp16"),
        ("fp16", "precision one of fp32, fp16"),
        ({"precision": "fp16", "profile": {"min": "x:1"}}, "trt_profile_*"),
        ({"precision": "fp16", "profile": {"trt_profile_min_shapes": 3}}, "trt_profile_*"),
    ],
)
def test_a_malformed_tensorrt_entry_is_refused_with_why(value: Any, words: str) -> None:
    with pytest.raises(o.SummaryError, match=r"tensorrt") as caught:
        o.parse_summary(json.dumps(_summary(tensorrt=value)))
    assert words in str(caught.value)


def _summary(chosen: str = "tensorrt-fp16", tensorrt: Any = "default") -> dict[str, Any]:
    return {
        "schema": "modelship.dev/optimize-report/v1", "outcome": "optimized", "chosen": chosen,
        "sha256": VARIANT_SHA, "speedup": 2.4, "spread": 0.02,
        "apply_args": ["--apply-recipe", json.dumps({"name": chosen}), "--expect-sha256", VARIANT_SHA],
        "gate": "cosine mean>=0.99 worst>=0.98", "inputs": "generated (32 inputs, seed 0)",
        "candidates": [["baseline", "kept", 1.0, 1.0, "reference"], [chosen, "chosen", 2.4, 0.9999, "fastest"]],
        "tensorrt": {"precision": "fp16", "profile": PROFILE} if tensorrt == "default" else tensorrt,
    }
