"""The capacity model: the pure pick on recorded sweeps, then one short sweep on a real server."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

import models
from modelship_server.optimize.candidates import baseline_recipe
from modelship_server.optimize.capacity import (BatchingConfig, Level, Sweep, batchable, config_pbtxt, configs,
                                                knee, measure, pick)

OFF = BatchingConfig(max_batch_size=8, max_queue_delay_microseconds=0, dynamic=False)
DYN = BatchingConfig(max_batch_size=8, max_queue_delay_microseconds=500, dynamic=True)


def lv(c: int, rps: float, p95: float, errors: int = 0) -> Level:
    return Level(concurrency=c, requests_per_second=rps, errors=errors,
                 latency_ms={"p50": p95 / 2, "p90": p95 * 0.9, "p95": p95, "p99": p95 * 1.5})


@pytest.mark.parametrize("levels, concurrency", [
    ([lv(1, 100, 1), lv(2, 190, 1.1), lv(4, 300, 1.5), lv(8, 310, 3)], 4),  # 310 < 1.1 x 300: past the knee
    ([lv(1, 100, 1), lv(2, 105, 2)], 1),                                   # no gain at all
    ([lv(1, 100, 1), lv(2, 200, 1), lv(4, 500, 1, errors=3)], 2),           # errors end the climb
])
def test_knee(levels, concurrency):
    assert knee(levels).concurrency == concurrency


def test_pick_highest_rate_within_the_slo_across_configs():
    sweeps = [Sweep(config=OFF, levels=[lv(1, 100, 1), lv(2, 180, 2), lv(4, 220, 6)]),
              Sweep(config=DYN, levels=[lv(1, 80, 1.5), lv(2, 150, 2.5), lv(4, 260, 4), lv(8, 400, 9)])]
    cap = pick(sweeps, slo_ms=5.0, percentile="p95")
    # 400 req/s breaks the SLO (9 ms); 260 within it beats the unbatched 180
    assert (cap.requests_per_second, cap.concurrency, cap.dynamic_batching, cap.max_batch_size) == (260, 4, True, 8)
    assert cap.within_slo and cap.latency_ms == 4 and cap.max_queue_delay_microseconds == 500
    # a tighter SLO favours the config that is fastest at low load
    tight = pick(sweeps, slo_ms=2.0, percentile="p95")
    assert (tight.requests_per_second, tight.dynamic_batching) == (180, False)
    # the percentile matters: p99 is 1.5x p95 in these rows
    assert pick(sweeps, slo_ms=5.0, percentile="p99").requests_per_second == 180


def test_pick_when_nothing_meets_the_slo_reports_the_fastest_single_request():
    sweeps = [Sweep(config=OFF, levels=[lv(1, 100, 10), lv(2, 150, 12)])]
    cap = pick(sweeps, slo_ms=1.0, percentile="p95")
    assert not cap.within_slo and cap.concurrency == 1 and cap.latency_ms == 10


def test_pick_without_slo_uses_the_knee_and_errors_only_is_an_error():
    cap = pick([Sweep(config=DYN, levels=[lv(1, 100, 1), lv(2, 200, 1.2), lv(4, 205, 2.5)])], None, "p95")
    assert cap.concurrency == 2 and cap.slo_ms is None and cap.within_slo
    with pytest.raises(ValueError, match="without errors"):
        pick([Sweep(config=DYN, levels=[lv(1, 0, 1, errors=5)])], 5.0, "p95")


def test_configs_follow_the_model_and_the_slo():
    cfgs = configs(models.mlp(), max_batch_size=32, slo_ms=5.0)
    assert [(c.max_batch_size, c.dynamic) for c in cfgs] == [(32, False), (8, True), (32, True)]
    assert all(c.max_queue_delay_microseconds == 500 for c in cfgs if c.dynamic)  # SLO / 10
    assert configs(models.mlp(), max_batch_size=4, slo_ms=100.0)[1].max_queue_delay_microseconds == 2000
    fixed = models.mlp()
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # no batch dimension
    assert not batchable(fixed)
    assert [(c.max_batch_size, c.dynamic) for c in configs(fixed, 32, 5.0)] == [(0, False)]
    assert config_pbtxt(DYN) == "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 500 }\n"


def test_measure_on_a_real_server(tmp_path):
    """A short sweep against a real modelship-server child process; it is stopped afterwards."""
    path = tmp_path / "m.onnx"
    onnx.save(models.mlp(), str(path))
    log = tmp_path / "progress"
    with open(log, "w") as progress:
        feed = {"INPUT0": np.ones((1, 32), np.float32)}
        cap = measure(path, baseline_recipe(), feed=feed, slo_ms=1000.0, max_batch_size=4, budget_seconds=30,
                      level_seconds=0.3, max_concurrency=2, progress=progress)
    assert cap.within_slo and cap.requests_per_second > 10 and cap.latency_ms < 1000
    assert len(cap.sweeps) == 2 and all(len(s.levels) >= 1 for s in cap.sweeps)
    assert "[capacity]" in log.read_text()


def test_command_reports_capacity_in_the_termination_message(tmp_path):
    model = tmp_path / "model.onnx"
    onnx.save(models.mlp(), str(model))
    log = tmp_path / "termination-log"
    result = subprocess.run([sys.executable, "-m", "modelship.cli", "optimize", "--model", str(model),
                             "--output", str(tmp_path / "out"), "--termination-log", str(log),
                             "--timing-rounds", "2", "--timing-calls", "2", "--samples", "6",
                             "--slo-ms", "500", "--max-batch-size", "4", "--capacity-seconds", "3"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    doc = json.loads(log.read_text())
    cap = doc["capacity"]
    assert cap["slo_ms"] == 500 and cap["percentile"] == "p95" and cap["requests_per_second"] > 0
    assert "capacity per replica:" in result.stdout
    assert doc["outcome"] in ("optimized", "baseline", "accuracy_gate_failed")
    assert (doc["apply_args"] != []) == (doc["outcome"] == "optimized")
    assert doc["session"]["graph_optimization_level"] == "all"


@pytest.mark.parametrize("flag, value, needle", [("--slo-ms", "-1", "--slo-ms must be a positive"),
                                                 ("--max-batch-size", "0", "--max-batch-size must be at least 1")])
def test_capacity_flags_are_checked(tmp_path, flag, value, needle):
    model = tmp_path / "model.onnx"
    onnx.save(models.mlp(), str(model))
    result = subprocess.run([sys.executable, "-m", "modelship.cli", "optimize", "--model", str(model),
                             "--output", str(tmp_path / "out"), flag, value],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and needle in result.stderr and "Traceback" not in result.stderr
