"""The raw ONNX Runtime ceiling of ghz_compare.py (server_image/bench/ort_ceiling.py): its loop
counts what it ran, and CPU time is charged to the process tree that used it."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from modelship_server import samples

BENCH = Path(__file__).resolve().parents[2] / "server_image" / "bench" / "ort_ceiling.py"


@pytest.fixture(scope="module")
def ceiling():
    spec = importlib.util.spec_from_file_location("ort_ceiling", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tight_loop_counts_runs_samples_and_cpu(ceiling, tmp_path):
    samples.write_model(tmp_path, "mlp", samples.mlp(), "max_batch_size: 8\n")
    feeds = {"INPUT0": np.random.default_rng(0).random((4, 64), np.float32)}
    r = ceiling.measure(tmp_path / "mlp" / "1" / "model.onnx", feeds, 0.3, cpu=None)
    assert r["batch"] == 4 and r["runs"] > 10
    assert r["infer_per_s"] == pytest.approx(r["runs_per_s"] * 4)
    # the ceiling is the better of the loop's rate and 1/p50, never below the loop
    assert r["runs_per_s"] >= r["loop_runs_per_s"] > 0
    assert r["runs_per_s"] == pytest.approx(max(r["loop_runs_per_s"], 1000 / r["p50_ms"]))
    assert 0 < r["cpu_ms_per_run"] < 1000 / r["loop_runs_per_s"] * 1.5


def test_tree_cpu_counts_a_busy_child(ceiling):
    """A child that burns ~0.3 s of CPU shows up under its parent's pid, and an idle one does not."""
    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\ntime.sleep(30)"
    busy = subprocess.Popen([sys.executable, "-c", burn])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        deadline = time.monotonic() + 60
        while ceiling.tree_cpu_s(busy.pid) < 0.3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ceiling.tree_cpu_s(busy.pid) >= 0.3
        assert ceiling.tree_cpu_s(os.getpid()) >= ceiling.tree_cpu_s(busy.pid)  # children included
        assert ceiling.tree_cpu_s(idle.pid) < 0.25  # an interpreter's start-up, no more
    finally:
        for p in (busy, idle):
            p.kill()
            p.wait(10)


def test_front_end_cost(ceiling):
    # 100 requests/s against 1000 runs/s: 10 ms a request of which 1 ms is the run
    assert ceiling.front_end_ms(100.0, 1000.0) == pytest.approx(9.0)
    assert np.isnan(ceiling.front_end_ms(0.0, 1000.0))
