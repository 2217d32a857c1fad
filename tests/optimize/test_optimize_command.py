"""`modelship optimize` as a user runs it: files written, and one clear line + exit 2 on bad input."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

import models
from modelship.contracts import OptimizeSummary
from modelship.status.optimization import parse_summary
from modelship_server.optimize.command import MIN_CAPACITY_SECONDS, capacity_seconds_left, split_budget

FAST = ["--timing-rounds", "2", "--timing-calls", "2", "--samples", "6", "--capacity-seconds", "0"]


def optimize(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelship.cli", "optimize", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(models.mlp(), str(path))
    return path


def test_writes_model_report_table_and_termination_message(tmp_path, model_file):
    out, log = tmp_path / "out", tmp_path / "termination-log"
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
    result = optimize("--model", str(model_file), "--output", str(out), "--sha256", digest.upper(),
                      "--termination-log", str(log), *FAST)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["schema_version"] == "modelship.dev/optimize-report/v1"
    assert report["model_sha256"] == digest
    assert report["output_sha256"] == hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    assert f"chosen: {report['chosen']}" in result.stdout  # the table
    assert "[optimize" in result.stderr  # progress lines
    summary = log.read_bytes()
    # The summary names the baseline "original" (C1), whichever way this run's timing went.
    expected = "original" if report["chosen"] == "baseline" else report["chosen"]
    assert len(summary) <= 4096 and json.loads(summary)["chosen"] == expected
    # The operator reads this very message; its keys are the contract's.
    doc = json.loads(summary)
    assert set(doc) <= set(OptimizeSummary.__annotations__), set(doc) - set(OptimizeSummary.__annotations__)
    read = parse_summary(summary.decode())
    assert (read.outcome, read.chosen, read.sha256) == (doc["outcome"], expected, report["output_sha256"])


def test_dataset_is_used_for_calibration_and_gate(tmp_path, model_file):
    data = tmp_path / "data.npz"
    np.savez(data, INPUT0=np.random.default_rng(3).standard_normal((6, 32)).astype(np.float32))
    result = optimize("--model", str(model_file), "--output", str(tmp_path / "out"), "--dataset", str(data),
                      "--metric", "max_abs", "--threshold-mean", "0.5", "--threshold-min", "1.0", *FAST)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["input_source"] == f"dataset {data}" and report["validation_inputs"] == 3
    assert report["gate"] == {"metric": "max_abs", "threshold_mean": 0.5, "threshold_worst": 1.0}
    # the drift reference of the same dataset, for modelship-server --monitoring-reference (docs/monitoring.md)
    reference = json.loads((tmp_path / "out" / "reference-profile.json").read_text())
    assert reference["samples"] == 6 and reference["source"] == f"optimize: dataset {data}"
    assert reference["features"]["INPUT0[0]"]["count"] == 6


def _bad_input(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("modelship optimize: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_missing_model(tmp_path):
    _bad_input(optimize("--model", str(tmp_path / "nope.onnx"), "--output", str(tmp_path / "o")),
               "nope.onnx does not exist", "--model")


def test_corrupt_model(tmp_path, model_file):
    model_file.write_bytes(model_file.read_bytes()[:100])
    log = tmp_path / "term"
    _bad_input(optimize("--model", str(model_file), "--output", str(tmp_path / "o"), "--termination-log", str(log)),
               "is not a loadable ONNX model", "complete .onnx export")
    assert log.read_text().startswith("error: model file")
    assert not (tmp_path / "o" / "model.onnx").exists()


def test_digest_mismatch(tmp_path, model_file):
    actual = hashlib.sha256(model_file.read_bytes()).hexdigest()
    _bad_input(optimize("--model", str(model_file), "--output", str(tmp_path / "o"), "--sha256", "0" * 64),
               f"has sha256 {actual}, expected {'0' * 64}", "fix --sha256")


def test_malformed_digest(tmp_path, model_file):
    _bad_input(optimize("--model", str(model_file), "--output", str(tmp_path / "o"), "--sha256", "abc"),
               "not 64 hex digits")


@pytest.mark.parametrize("arrays, needle", [
    ({"INPUT0": np.zeros((4, 31), np.float32)}, "dataset input 'INPUT0': expected samples of shape [?, 32]"),
    ({"INPUT0": np.zeros((4, 32), np.float64)}, "dataset input 'INPUT0': expected dtype float32, got float64"),
    ({"image": np.zeros((4, 32), np.float32)}, "no array for input(s) ['INPUT0']"),
])
def test_misfitting_dataset(tmp_path, model_file, arrays, needle):
    data = tmp_path / "data.npz"
    np.savez(data, **arrays)
    _bad_input(optimize("--model", str(model_file), "--output", str(tmp_path / "o"), "--dataset", str(data)), needle)


@pytest.mark.parametrize("budget, capacity, search", [
    (600.0, 60.0, 540.0),  # the sweep's own time is reserved
    (100.0, 60.0, 75.0),  # at most a quarter of the budget...
    (40.0, 60.0, 25.0),  # ...but never less than the minimum
    (600.0, 0.0, 600.0),  # no sweep: the search gets everything
    (10.0, 60.0, 0.0),
])
def test_split_budget_reserves_the_capacity_sweep(budget, capacity, search):
    assert split_budget(budget, capacity) == search


@pytest.mark.parametrize("budget, elapsed, capacity, expected", [
    (600.0, 300.0, 60.0, 60.0),  # plenty left: its own cap
    (600.0, 570.0, 60.0, 30.0),  # what is left
    (600.0, 650.0, 60.0, MIN_CAPACITY_SECONDS),  # over budget: still the minimum
    (600.0, 650.0, 5.0, 5.0),  # never more than asked for
])
def test_capacity_gets_what_is_left_never_less_than_the_minimum(budget, elapsed, capacity, expected):
    assert capacity_seconds_left(budget, elapsed, capacity) == expected


def test_build_workers_flag(tmp_path, model_file):
    result = optimize("--model", str(model_file), "--output", str(tmp_path / "o"), "--build-workers", "1", *FAST)
    assert result.returncode == 0, result.stderr
    assert "1 build worker" in result.stderr  # built in this process, as on a 1-CPU pod
    _bad_input(optimize("--model", str(model_file), "--output", str(tmp_path / "o"), "--build-workers", "0"),
               "--build-workers must be at least 1; got 0")
