"""GPU serving decisions that need no GPU: device visibility as the device plugin sets it
(indices, GPU and MIG UUIDs), one session per instance on its instance group's device, the
provider options, and the I/O-bound runner (run on a real CPU session here, where ORT binds
host memory through the same calls it uses for the device)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from modelship_server import gpu, samples

MIG_A = "MIG-2a4c7b0e-95d1-5bfb-8f6a-1b9b2c3d4e5f"
MIG_B = "MIG-8e1f0a2b-3c4d-5e6f-7a8b-9c0d1e2f3a4b"


@pytest.mark.parametrize(
    ("env", "ids", "problem"),
    [
        ({}, None, None),
        ({"CUDA_VISIBLE_DEVICES": "0"}, ("0",), None),
        ({"CUDA_VISIBLE_DEVICES": "2,3"}, ("2", "3"), None),
        ({"CUDA_VISIBLE_DEVICES": "GPU-5f3c1d2e-aaaa-bbbb-cccc-0123456789ab"},
         ("GPU-5f3c1d2e-aaaa-bbbb-cccc-0123456789ab",), None),
        ({"CUDA_VISIBLE_DEVICES": f"{MIG_A},{MIG_B}"}, (MIG_A, MIG_B), None),
        ({"CUDA_VISIBLE_DEVICES": ""}, (), "hides every GPU"),
        ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, (), "hides every GPU"),
        ({"CUDA_VISIBLE_DEVICES": "0,x,1"}, ("0",), "entry 'x'"),
    ],
)
def test_visible_devices(env, ids, problem):
    seen = gpu.visible_devices(env)
    assert seen.ids == ids
    assert (seen.problem is None) if problem is None else (problem in (seen.problem or ""))


def test_mig_slices_are_recognised():
    assert gpu.visible_devices({"CUDA_VISIBLE_DEVICES": f"{MIG_A}"}).mig
    assert not gpu.visible_devices({"CUDA_VISIBLE_DEVICES": "0"}).mig


def config(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


@pytest.mark.parametrize(
    ("text", "visible", "devices"),
    [
        ("", None, [0]),  # no group: one instance, device 0 (ignored on CPU)
        ("instance_group [ { kind: KIND_CPU count: 2 } ]", "0", [None, None]),
        ("instance_group [ { kind: KIND_GPU count: 2 } ]", None, [0, 0]),
        ("instance_group [ { kind: KIND_GPU count: 1 } ]", "4,5", [0, 1]),  # Triton: count on each visible GPU
        ("instance_group [ { kind: KIND_GPU count: 2 gpus: [1] } ]", "4,5", [1, 1]),
        ("instance_group [ { kind: KIND_GPU count: 1 gpus: [0, 1] }, { kind: KIND_CPU count: 1 } ]", f"{MIG_A},{MIG_B}",
         [0, 1, None]),
    ],
)
def test_session_devices_follow_instance_groups(text, visible, devices):
    env = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    assert gpu.session_devices(config(text), gpu.visible_devices(env)) == devices


def test_a_gpu_the_container_cannot_see_is_refused_with_the_group_and_the_count():
    with pytest.raises(ValueError, match=r"instance_group 'g' asks for gpus \[1\], but the container sees 1 GPU"):
        gpu.session_devices(config('instance_group [ { name: "g" kind: KIND_GPU gpus: [1] } ]'),
                            gpu.visible_devices({"CUDA_VISIBLE_DEVICES": MIG_A}))


def test_provider_options_per_device():
    assert gpu.cuda_options(None) == {"arena_extend_strategy": "kSameAsRequested", "cudnn_conv_algo_search": "HEURISTIC"}
    assert gpu.cuda_options(3)["device_id"] == "3"
    providers = [("TensorrtExecutionProvider", {"trt_fp16_enable": "True", "device_id": "0"}),
                 ("CUDAExecutionProvider", {"device_id": "0"}), "CPUExecutionProvider"]
    moved = gpu.on_device(providers, 2)
    assert moved == [("TensorrtExecutionProvider", {"trt_fp16_enable": "True", "device_id": "2"}),
                     ("CUDAExecutionProvider", {"device_id": "2"}), "CPUExecutionProvider"]
    assert providers[1] == ("CUDAExecutionProvider", {"device_id": "0"}), "the template is not changed"
    assert gpu.on_device(["CPUExecutionProvider"], 1) == ["CPUExecutionProvider"]


def test_bound_runner_gives_what_run_gives(tmp_path):
    model = samples.mlp()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    run = gpu.bound_runner(session, names, None)
    got = run({"INPUT0": x[:, ::1]})
    expected = session.run(names, {"INPUT0": x})
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    # a non-contiguous view is bound as a contiguous copy, not misread
    wide = np.random.default_rng(1).standard_normal((4, 128)).astype(np.float32)
    np.testing.assert_array_equal(run({"INPUT0": wide[:, ::2]})[0], session.run(names, {"INPUT0": wide[:, ::2].copy()})[0])
