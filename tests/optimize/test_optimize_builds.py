"""Candidate builds in parallel worker processes: same bytes as alone, and a dead worker is a
finding, not a crash. Real spawned processes, real ONNX Runtime quantizers."""

from __future__ import annotations

import hashlib
import os
import signal
import time

import onnx
import pytest

import models
from modelship_server.optimize import candidates as cand
from modelship_server.optimize.builds import BUILD_MEMORY_FACTOR, MAX_WORKERS, Builds, worker_count
from modelship_server.optimize.inputs import generate, input_specs

MB = 1 << 20


@pytest.mark.parametrize("cpus, model_bytes, memory, expected", [
    (1, 10 * MB, 10_000 * MB, 1),  # one CPU: no pool at all
    (2, 10 * MB, 10_000 * MB, 2),
    (64, 10 * MB, 10_000 * MB, MAX_WORKERS),  # bounded: more builds at once than recipes buys nothing
    (8, 1000 * MB, 2 * BUILD_MEMORY_FACTOR * 1000 * MB, 2),  # memory for two builds of a 1 GB model
    (8, 1000 * MB, 100 * MB, 1),  # not even one fits: still one, in this process
    (4, 10 * MB, None, 4),  # memory unknown: CPUs decide
])
def test_worker_count(cpus, model_bytes, memory, expected):
    assert worker_count(cpus, model_bytes, memory) == expected


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_parallel_builds_write_the_bytes_a_lone_rebuild_writes(tmp_path):
    # The transformer's recipes share intermediates (the fused graph, the sensitivity ranking) and
    # the quantizers' scratch files; built two at a time they must still give each recipe exactly
    # the file a serving pod's lone rebuild (apply.py) gives, or its digest check would refuse it.
    model = models.transformer_encoder()
    source = tmp_path / "model.onnx"
    onnx.save(model, str(source))
    calibration = generate(input_specs(model), 8, seed=0)
    recipes, _ = cand.default_recipes(cpu_count=2, gpu_unavailable="no GPU in tests", transformer=True)
    parallel = {}
    with Builds(source, tmp_path / "shared", calibration, workers=2) as builds:
        for recipe in recipes:
            builds.submit(recipe)
        while builds.in_flight:
            built = builds.next_done()
            assert built.error is None, f"{built.recipe.name}: {built.error}"
            parallel[built.recipe.name] = _sha(built.path)
    assert set(parallel) == {r.name for r in recipes}
    for recipe in recipes:
        alone = cand.build(recipe, source, tmp_path / f"alone-{recipe.name}", calibration)
        assert _sha(alone) == parallel[recipe.name], recipe.name


def test_a_killed_worker_loses_its_build_and_the_next_build_still_runs(tmp_path):
    model = models.mlp()
    source = tmp_path / "model.onnx"
    onnx.save(model, str(source))
    calibration = generate(input_specs(model), 4, seed=0)
    recipe = cand.Recipe(name="dynamic-int8", kind="dynamic_int8")
    with Builds(source, tmp_path / "w", calibration, workers=2) as builds:
        builds.start()
        deadline = time.monotonic() + 60
        while len(builds.pids) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(builds.pids) == 2
        for pid in builds.pids:  # as the kernel's OOM killer would
            os.kill(pid, signal.SIGKILL)
        builds.submit(recipe)
        first = builds.next_done()
        # The pool notices the deaths either before this submit (which then starts fresh workers
        # and builds) or after (the build is reported lost): never an exception, never a hang.
        assert first.path is not None or "worker process died" in (first.error or ""), first
        builds.submit(recipe.model_copy(update={"name": "again"}))
        second = builds.next_done()
        assert second.error is None and second.path is not None and second.path.is_file()
        pids = builds.pids
    assert all(not _alive(pid) for pid in pids)  # leaving the block ends the workers


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie has exited; only the parent's wait removes it
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ")[1][0] != "Z"


def test_variants_are_timed_with_the_servers_session_settings():
    # modelship-server does not spin by default; the search times variants the same way, which
    # also keeps one variant's idle pool threads off the cores of the next one it times.
    from modelship_server import runtime
    from tritonclient.grpc import model_config_pb2 as mc

    served = runtime.session_options(mc.ModelConfig(), runtime.RuntimeOptions())
    timed = cand.session_options(cand.baseline_recipe())
    for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
        assert timed.get_session_config_entry(key) == served.get_session_config_entry(key) == "0"
    assert timed.graph_optimization_level == served.graph_optimization_level
    assert timed.intra_op_num_threads == served.intra_op_num_threads == 0
