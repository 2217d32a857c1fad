"""benchmarks/gpu_check.py without a GPU: argument handling, the time budget, results written
as they go, the targets and the table, GPU detection, the bundle's pieces, and the check
exiting cleanly where there is no GPU (this machine's onnxruntime has no CUDA provider)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
assert _spec is not None and _spec.loader is not None
gc = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gc
_spec.loader.exec_module(gc)


@pytest.mark.parametrize(
    ("budget", "expected"),
    [
        # plenty: every step its planned share, in order
        (1000.0, {"providers": 15.0, "serve": 135.0, "optimize-transformer": 245.0, "optimize-cnn": 305.0,
                  "throughput": 430.0}),
        # short: scaled to the budget less the reserve, the last deadline exactly at it
        (225.0, {"providers": 7.5, "serve": 67.5, "optimize-transformer": 122.5, "optimize-cnn": 152.5,
                 "throughput": 215.0}),
        (5.0, {name: 0.0 for name, _ in gc.STEPS}),  # less than the reserve: nothing may start
    ],
)
def test_plan_deadlines(budget, expected):
    got = gc.plan_deadlines(0.0, budget)
    assert list(got) == [name for name, _ in gc.STEPS]
    assert got == pytest.approx(expected)


def test_step_window():
    assert gc.step_window(10.0, 100.0) == 90.0
    assert gc.step_window(96.0, 100.0) is None  # under the 5 s minimum: do not start
    assert gc.step_window(120.0, 100.0) is None


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_run_step_records_ok_failed_and_skipped_and_writes_after_each(tmp_path):
    results = gc.Results(tmp_path, {"started": "t", "dry_run": True})
    clock = Clock()

    def ok(deadline):
        clock.now += 3.0
        return {"value": 1}

    def broken(deadline):
        raise ValueError("first line\nsecond line")

    said = []
    assert gc.run_step(results, "a", 100.0, ok, clock, said.append)["status"] == "ok"
    assert json.loads(results.path.read_text())["steps"]["a"] == {"status": "ok", "seconds": 3.0, "value": 1}
    entry = gc.run_step(results, "b", 100.0, broken, clock, said.append)
    assert entry["status"] == "failed" and entry["error"] == "ValueError: first line"
    clock.now = 99.0
    entry = gc.run_step(results, "c", 100.0, ok, clock, said.append)
    assert entry["status"] == "skipped" and "out of time" in entry["reason"]
    written = json.loads(results.path.read_text())
    assert list(written["steps"]) == ["a", "b", "c"] and written["schema"] == gc.SCHEMA
    assert not list(tmp_path.glob("*.partial")), "written atomically"
    assert any("skipped" in line for line in said)


def _doc(**steps):
    return {"started": "t", "device": "d", "steps": steps}


@pytest.mark.parametrize(
    ("doc", "met"),
    [
        (_doc(), [None, None, None]),
        (_doc(**{"optimize-transformer": {"candidates": [
            {"name": "baseline", "speedup": 1.0, "gate_passed": None},
            {"name": "tensorrt-fp16", "speedup": 2.6, "gate_passed": True},
            {"name": "fp16-cuda", "speedup": 3.0, "gate_passed": False}]}}), [True, None, None]),
        (_doc(**{"optimize-transformer": {"candidates": [
            {"name": "fp16-cuda", "speedup": 1.7, "gate_passed": True}]}}), [False, None, None]),
        (_doc(throughput={"models": {"m": {
            "gpu": {"1": {"server_vs_raw": 0.5, "server_p50_ms": 1.4, "raw_p50_ms": 1.0},
                    "8": {"server_vs_raw": 0.9}, "32": {"server_vs_raw": 0.85}},
            "added_latency_ms": {"gpu": 0.4, "cpu": 0.3}}}}), [None, True, True]),
        (_doc(throughput={"models": {"m": {
            "gpu": {"8": {"server_vs_raw": 0.7}}, "added_latency_ms": {"gpu": 1.2, "cpu": 0.3}}}}), [None, False, False]),
    ],
)
def test_targets(doc, met):
    assert [t["met"] for t in gc.evaluate_targets(doc)] == met


def test_table_has_every_section_and_says_a_dry_run_is_not_gpu_figures():
    doc = _doc(providers={"status": "ok", "seconds": 1.0}, serve={"status": "ok", "seconds": 9.0, "models": {
        "m": {"providers": ["CUDAExecutionProvider"], "max_abs_diff": 1e-6, "min_cosine": 0.999999, "pass": True}}},
        throughput={"status": "ok", "models": {"m": {"gpu": {"8": {"raw_items_per_s": 100.0, "server_items_per_s": 90.0,
                                                                  "server_vs_raw": 0.9}}, "cpu": {}}}})
    doc["dry_run"] = True
    table = gc.render_table(doc)
    assert "CPU dry run" in table
    assert "| m | CUDAExecutionProvider | 1.00e-06 | 0.999999 | True |" in table
    assert "| m | gpu | 8 | 100.0 |" in table and "90%" in table
    assert "| server on CUDA: batched throughput >= 80% of raw ONNX Runtime CUDA at the same batch | m b8 90% | yes |" in table


@pytest.mark.parametrize(
    ("providers", "files", "present", "words"),
    [
        (["CUDAExecutionProvider", "CPUExecutionProvider"], True, True, "CUDAExecutionProvider"),
        (["CUDAExecutionProvider", "CPUExecutionProvider"], False, False, "no NVIDIA device"),
        (["CPUExecutionProvider"], True, False, "no CUDAExecutionProvider"),
    ],
)
def test_gpu_present(providers, files, present, words):
    got, why = gc.gpu_present(providers, files)
    assert got is present and words in why


def test_compare():
    out = {"y": np.array([[1.0, 2.0, 3.0]], np.float32), "label": np.array([2], np.int64)}
    assert gc.compare(out, {"y": out["y"] + 1e-6, "label": out["label"]}, 0.9999)["pass"]
    assert not gc.compare(out, {"y": -out["y"], "label": out["label"]}, 0.9999)["pass"]
    assert not gc.compare(out, {"y": out["y"], "label": np.array([1])}, 0.9999)["pass"]
    shape = gc.compare(out, {"y": out["y"][0], "label": out["label"]}, 0.9999)
    assert not shape["pass"] and "shape" in shape["error"]


def test_bundle_pieces(tmp_path):
    pins = gc.lock_pins(ROOT / "requirements" / "server-gpu.txt")
    carry = gc.wheels_to_carry(pins)
    assert any(c.startswith("onnxruntime-gpu==") for c in carry)
    assert any(c.startswith("tritonclient==") for c in carry)
    assert not any(c.startswith(("numpy==", "onnx==", "sympy==")) for c in carry), "the device has these"
    assert any(c.startswith("protobuf==") for c in carry), "tritonclient's generated code needs the lock's protobuf"
    blob = bytes(range(256)) * 1000
    (tmp_path / "blob").write_bytes(blob)
    parts = gc.split_file(tmp_path / "blob", tmp_path / "parts", 100_000)
    assert [p.parent.name for p in parts] == ["p00", "p01", "p02"]
    assert b"".join(p.read_bytes() for p in parts) == blob
    recipe = gc.render_recipe(tmp_path / "bundle", parts, 10 << 20)
    # the last (small) part rides with the final call: 2 part calls, then the check
    assert recipe.count("run(command=") == 3 and "gpu_check_device.sh" in recipe
    assert recipe.splitlines()[-4].endswith(f'carry=["{tmp_path}/bundle/small", "{tmp_path}/parts/p02"], timeout_s=560)')
    assert gc.render_recipe(tmp_path / "bundle", parts, 57 << 20).count("run(command=") == 4, "too big to fold: its own call"


def test_arguments_are_checked_with_a_clear_message(capsys):
    with pytest.raises(SystemExit) as caught:
        gc.main(["run", "--budget-seconds", "-3"])
    assert caught.value.code == 2 and "expected a positive number of seconds, got '-3'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gc.main(["run", "--steps", "warp-drive"])
    assert "invalid choice: 'warp-drive'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        gc.main(["--help"])
    assert caught.value.code == 0 and "prepare" in capsys.readouterr().out


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this machine has CUDA: the check would run")
def test_without_a_gpu_the_check_says_so_and_exits_cleanly(tmp_path, capsys):
    assert gc.main(["run", "--out", str(tmp_path)]) == 0
    assert "no GPU here" in capsys.readouterr().out
    written = json.loads((tmp_path / "gpu-check.json").read_text())
    assert written["gpu"] is False and written["steps"] == {} and "CUDAExecutionProvider" in written["gpu_reason"]
