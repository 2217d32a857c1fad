"""The static int8 QOperator recipe on a public detector (tests/corpus): it builds, quantizes the
convolutions into QLinearConv, passes the default gate, and a serving pod's re-apply gives the
same bytes. No timing here: the speed is measured in docs/real-models.md."""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from collections import Counter

import onnx
import pytest

import corpus
from modelship_server.optimize import candidates as cand
from modelship_server.optimize.apply import args_for
from modelship_server.optimize.command import _feeds  # the one place feeds are derived
from modelship_server.optimize.gate import GateSpec, evaluate

SAMPLES, SEED = 16, 0


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_default_recipes_build_the_qoperator_recipe_first_for_cnns():
    recipes = [r.name for r in cand.default_recipes(cpu_count=2, gpu_unavailable="none", convolutional=True)[0]]
    assert recipes[:2] == ["ort-all", "static-int8-qoperator"]
    assert "static-int8-qoperator" in {r.name for r in cand.default_recipes(cpu_count=2, gpu_unavailable="none")[0]}
    recipe = cand.STATIC_QOPERATOR
    assert (recipe.kind, recipe.quant_format, recipe.activation_type, recipe.per_channel, recipe.reduce_range) == \
        ("static_int8", "qoperator", "uint8", True, True)


@pytest.mark.parametrize("name", ["ddddocr-det"])
def test_qoperator_builds_passes_the_gate_and_is_rebuilt_by_apply(tmp_path, name):
    model = corpus.MODELS[name]
    source = tmp_path / "job" / "model.onnx"
    source.parent.mkdir()
    source.write_bytes(model.path().read_bytes())
    graph = onnx.load(str(source))
    # the inputs the Job derives: generated from the declared shapes (none needed here), halved
    args = argparse.Namespace(inputs=None, dataset=None, samples=SAMPLES, seed=SEED)
    calibration, validation, _ = _feeds(args, graph)
    recipe = cand.STATIC_QOPERATOR.model_copy()
    built = cand.build(recipe, source, tmp_path / "job" / "work", calibration)

    ops = Counter(node.op_type for node in onnx.load(str(built)).graph.node)
    assert ops["QLinearConv"] == sum(1 for n in graph.graph.node if n.op_type == "Conv") and ops["Conv"] == 0, ops
    assert ops["DequantizeLinear"] < ops["QLinearConv"]  # QOperator form, not QDQ pairs around float ops

    baseline = cand.open_session(cand.baseline_recipe(), source)
    variant = cand.open_session(recipe, built)
    for feeds in (validation, [model.sample(1, seed=s) for s in range(3)]):  # generated, then realistic
        verdict = evaluate(GateSpec(), [baseline.run(None, f) for f in feeds], [variant.run(None, f) for f in feeds])
        assert verdict.passed, verdict.reason

    digest = _sha(built)
    pod = tmp_path / "pod" / "model" / "1"
    pod.mkdir(parents=True)
    (pod / "model.onnx").write_bytes(model.path().read_bytes())
    result = subprocess.run([sys.executable, "-m", "modelship.cli", "optimize", "--model", str(pod / "model.onnx"),
                             "--output", str(pod), "--termination-log", str(tmp_path / "termination-log"),
                             *args_for(recipe, digest, samples=SAMPLES, seed=SEED, dataset=None)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert _sha(pod / "model.onnx") == digest
    assert sorted(p.name for p in pod.iterdir()) == ["model.onnx"]
