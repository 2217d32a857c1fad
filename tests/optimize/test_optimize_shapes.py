"""`modelship optimize` on models users bring: a free image size, a state with the batch on
axis 1 and a scalar sample rate. Declared inputs or a dataset drive every step (search,
gate, capacity sweep); without them the run stops at once, naming each input and its need."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

import models
from modelship_server.feeds import HINTS_NEEDED_PREFIX

FAST = ["--timing-rounds", "2", "--timing-calls", "2", "--samples", "6", "--budget-seconds", "120"]
VAD_INPUTS = json.dumps([{"name": "audio", "shape": [1, 64]}, {"name": "state", "shape": [2, 1, 16]},
                         {"name": "sr", "value": 16000}])


def optimize(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelship.cli", "optimize", *args],
                          capture_output=True, text=True, timeout=240)


@pytest.fixture
def image_model(tmp_path):
    path = tmp_path / "image.onnx"
    onnx.save(models.free_image(), str(path))
    return path


@pytest.fixture
def vad_model(tmp_path):
    path = tmp_path / "vad.onnx"
    onnx.save(models.stateful(), str(path))
    return path


def _sweeps_answered(report: dict) -> list[int]:
    """Requests that completed at each level of each capacity sweep; errors must be none."""
    levels = [lv for sweep in report["capacity"]["sweeps"] for lv in sweep["levels"]]
    assert levels and all(lv["errors"] == 0 for lv in levels), levels
    return [lv["requests_per_second"] for lv in levels]


def test_a_free_image_size_without_a_declaration_stops_early_naming_the_input(tmp_path, image_model):
    log = tmp_path / "termination-log"
    result = optimize("--model", str(image_model), "--output", str(tmp_path / "out"),
                      "--termination-log", str(log), *FAST)
    assert result.returncode == 2, result.stderr
    assert "[optimize" not in result.stderr  # no search was started
    line = log.read_text()
    assert line.startswith(f"error: {HINTS_NEEDED_PREFIX} input 'x' has dynamic dims [?, 3, ?, ?] beyond the "
                           "batch axis (axis 2, 3)"), line
    assert "shape [1, 3, N, N]" in line


def test_declared_shapes_drive_search_and_capacity(tmp_path, image_model):
    """The capacity step used to stop with `give them with --shape`: now it sends the declared shape."""
    out = tmp_path / "out"
    inputs = json.dumps([{"name": "x", "shape": [1, 3, 24, 80]}])
    result = optimize("--model", str(image_model), "--output", str(out), "--inputs", inputs,
                      "--capacity-seconds", "3", "--max-batch-size", "4", *FAST)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["input_source"] == "generated (6 inputs, seed 0, declared shapes)"
    assert all(rate > 0 for rate in _sweeps_answered(report))


def test_stateful_model_from_stacked_feeds(tmp_path, vad_model):
    data = tmp_path / "vad.npz"
    rng = np.random.default_rng(0)
    feeds = [{"audio": rng.standard_normal((1, 64)).astype(np.float32),
              "state": rng.standard_normal((2, 1, 16)).astype(np.float32), "sr": np.array(16000)} for _ in range(6)]
    np.savez(data, **{name: np.stack([f[name] for f in feeds]) for name in feeds[0]})
    out = tmp_path / "out"
    result = optimize("--model", str(vad_model), "--output", str(out), "--dataset", str(data),
                      "--capacity-seconds", "3", *FAST)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["input_source"] == f"dataset {data}"
    assert report["capacity"]["max_batch_size"] == 0  # state [2, N, 16]: nothing to stack on axis 0
    assert all(rate > 0 for rate in _sweeps_answered(report))


def test_stateful_model_from_declared_inputs(tmp_path, vad_model):
    out = tmp_path / "out"
    result = optimize("--model", str(vad_model), "--output", str(out), "--inputs", VAD_INPUTS,
                      "--capacity-seconds", "0", *FAST)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["chosen"] and report["validation_inputs"] == 3


@pytest.mark.parametrize("extra, words", [
    (["--inputs", json.dumps([{"name": "state", "shape": [3, 1, 16]}])],
     "spec.model.inputs[state].shape: dimension 0 is fixed to 2 by the model [2, ?, 16], got 3 in [3, 1, 16]"),
    (["--inputs", json.dumps([{"name": "audio", "shape": [1, 1]}, {"name": "state", "shape": [2, 1, 16]},
                              {"name": "sr", "value": 16000}])],
     "the original model does not run on its inputs (audio [1, 1], state [2, 1, 16], sr []): "),
    ([], f"{HINTS_NEEDED_PREFIX} input 'audio'"),
    (["--inputs", json.dumps([{"name": "audio", "shape": [1, 64]}, {"name": "state", "shape": [2, 1, 16]}])],
     f"{HINTS_NEEDED_PREFIX} input 'sr' is a scalar (int64)"),
    (["--inputs", json.dumps([{"name": "sr", "value": 0.5}])],
     "spec.model.inputs[sr].value: input 'sr' is int64, expected an integer, got 0.5"),
    (["--inputs", "[{"], "--inputs is not JSON"),
])
def test_bad_declarations_are_one_line_naming_the_input(tmp_path, vad_model, extra, words):
    result = optimize("--model", str(vad_model), "--output", str(tmp_path / "out"), *extra, *FAST)
    assert result.returncode == 2
    assert words in result.stderr and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]  # ONNX Runtime may log its own line before ours
    assert last.startswith("modelship optimize: error: ") and words in last


def test_a_dataset_that_does_not_fit_names_input_expected_and_actual(tmp_path, vad_model):
    data = tmp_path / "vad.npz"
    np.savez(data, audio=np.zeros((4, 1, 64), np.float32), state=np.zeros((4, 2, 1, 8), np.float32),
             sr=np.full(4, 16000))
    result = optimize("--model", str(vad_model), "--output", str(tmp_path / "out"), "--dataset", str(data), *FAST)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert ("dataset input 'state': expected samples of shape [2, ?, 16] (one complete feed per sample on a new "
            "first axis), got [4, 2, 1, 8]") in result.stderr
