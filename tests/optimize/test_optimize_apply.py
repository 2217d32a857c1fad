"""Re-applying a chosen recipe, as a serving pod's init step does: same file or a loud refusal."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import onnx
import pytest

import models
from modelship_server.optimize import candidates as cand
from modelship_server.optimize.apply import args_for
from modelship_server.optimize.command import _feeds  # the one place feeds are derived
from modelship_server.optimize.inputs import generate, input_specs


def optimize(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelship.cli", "optimize", *args],
                          capture_output=True, text=True, timeout=120)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("make, recipe", [
    (models.mlp, cand.Recipe(name="dynamic-int8", kind="dynamic_int8")),
    (models.small_cnn, cand.Recipe(name="static-int8-qdq", kind="static_int8", per_channel=True)),
    (models.small_cnn, cand.Recipe(name="ort-all", kind="ort_all")),
    (models.transformer_encoder, cand.Recipe(name="transformer-fusion", kind="transformer_fusion")),
    (models.transformer_encoder, cand.Recipe(name="fusion+mixed", kind="dynamic_int8", per_channel=True,
                                             fuse_transformer=True, float_fraction=0.25)),
    (models.int8_hostile, cand.Recipe(name="mixed", kind="dynamic_int8", per_channel=True, float_fraction=0.1)),
    (models.small_cnn, cand.Recipe(name="conv-only", kind="static_int8", per_channel=True, op_types=["Conv"])),
    (models.small_cnn, cand.STATIC_QOPERATOR),
], ids=["dynamic-int8", "static-int8-calibrated", "ort-all", "transformer-fusion", "fusion+mixed-int8",
        "mixed-int8-calibrated", "static-int8-conv-only", "static-int8-qoperator"])
def test_rebuild_reproduces_the_measured_file(tmp_path, make, recipe):
    """What the Job measured is what the pod serves: a rebuild in another folder, from another
    copy of the original, with the recorded flags, gives the same bytes."""
    model = make()
    job = tmp_path / "job"
    job.mkdir()
    onnx.save(model, str(job / "model.onnx"))
    feeds = generate(input_specs(model), 32, seed=0)
    measured = cand.build(recipe, job / "model.onnx", job / "work", feeds[:16])  # the command's split
    digest = _sha(measured)

    pod = tmp_path / "pod" / "model" / "1"
    pod.mkdir(parents=True)
    onnx.save(model, str(pod / "model.onnx"))
    log = tmp_path / "termination-log"
    result = optimize("--model", str(pod / "model.onnx"), "--output", str(pod), "--termination-log", str(log),
                      *args_for(recipe, digest, samples=32, seed=0, dataset=None))
    assert result.returncode == 0, result.stderr
    assert _sha(pod / "model.onnx") == digest
    assert sorted(p.name for p in pod.iterdir()) == ["model.onnx"]  # no leftovers in the version folder


def test_digest_mismatch_refuses_and_keeps_the_original(tmp_path):
    pod = tmp_path / "1"
    pod.mkdir()
    onnx.save(models.mlp(), str(pod / "model.onnx"))
    original = _sha(pod / "model.onnx")
    log = tmp_path / "termination-log"
    recipe = cand.Recipe(name="dynamic-int8", kind="dynamic_int8")
    result = optimize("--model", str(pod / "model.onnx"), "--output", str(pod), "--termination-log", str(log),
                      *args_for(recipe, "0" * 64, samples=32, seed=0, dataset=None))
    assert result.returncode == 3, result.stderr
    message = log.read_text()
    assert message.startswith("error: rebuilding variant dynamic-int8 gave sha256 ")
    assert "0" * 64 in message and "same node type" in message and "Traceback" not in result.stderr
    assert _sha(pod / "model.onnx") == original


@pytest.mark.parametrize("args, needle", [
    (["--apply-recipe", "{not json", "--expect-sha256", "a" * 64], "--apply-recipe is not a recipe"),
    (["--apply-recipe", json.dumps({"name": "x", "kind": "magic"}), "--expect-sha256", "a" * 64],
     "--apply-recipe is not a recipe"),
    (["--apply-recipe", json.dumps({"name": "x", "kind": "ort_all"})], "needs --expect-sha256"),
])
def test_bad_recipe_flags_are_one_line_errors(tmp_path, args, needle):
    onnx.save(models.mlp(), str(tmp_path / "model.onnx"))
    result = optimize("--model", str(tmp_path / "model.onnx"), "--output", str(tmp_path), *args)
    assert result.returncode == 2 and needle in result.stderr and "Traceback" not in result.stderr


def test_feeds_split_is_shared_by_search_and_rebuild():
    import argparse

    args = argparse.Namespace(dataset=None, inputs=None, samples=32, seed=0)
    calibration, validation, source = _feeds(args, models.mlp())
    assert len(calibration) == 16 and len(validation) == 16 and "seed 0" in source


@pytest.mark.parametrize("make", [models.small_cnn, models.transformer_encoder, models.int8_hostile],
                         ids=["cnn", "transformer", "mlp"])
def test_every_recipe_builds_the_same_bytes_every_time(tmp_path, make):
    """Repeated builds must not differ (ONNX Runtime's layout passes once named nodes from a hash map)."""
    model = make()
    onnx.save(model, str(tmp_path / "model.onnx"))
    feeds = generate(input_specs(model), 8, seed=0)
    recipes, _ = cand.default_recipes(cpu_count=2, gpu_unavailable="no GPU in tests",
                                      transformer=cand.looks_like_transformer(model),
                                      convolutional=cand.has_convolutions(model))
    kinds = {(r.kind, r.fuse_transformer, r.float_fraction > 0, r.op_types is not None) for r in recipes}
    assert len(kinds) >= 4  # every family of recipes this model gets is covered, not just one
    for recipe in recipes:
        digests = {_sha(cand.build(recipe, tmp_path / "model.onnx", tmp_path / f"w{i}", feeds)) for i in range(4)}
        assert len(digests) == 1, f"{recipe.name} built {len(digests)} different files"


def test_a_calibrated_rebuild_regenerates_from_the_declared_inputs(tmp_path):
    """Static int8 of a model with a free image size: the Job calibrated on feeds in the
    declared shape; the recorded flags carry the declaration, so the pod's feeds are the same."""
    from modelship_server.feeds import parse_hints

    model = models.free_image()
    declared = json.dumps([{"name": "x", "shape": [1, 3, 12, 30]}])
    recipe = cand.Recipe(name="static-int8", kind="static_int8")
    job = tmp_path / "job"
    job.mkdir()
    onnx.save(model, str(job / "model.onnx"))
    feeds = generate(input_specs(model), 32, seed=0, hints=parse_hints(declared))
    digest = _sha(cand.build(recipe, job / "model.onnx", job / "work", feeds[:16]))
    args = args_for(recipe, digest, samples=32, seed=0, dataset=None, inputs=declared)
    assert args[args.index("--inputs") + 1] == declared
    assert "--inputs" not in args_for(cand.Recipe(name="ort", kind="ort_all"), digest, 32, 0, None, declared)
    pod = tmp_path / "pod"
    pod.mkdir()
    onnx.save(model, str(pod / "model.onnx"))
    result = optimize("--model", str(pod / "model.onnx"), "--output", str(pod), *args)
    assert result.returncode == 0, result.stderr
    assert _sha(pod / "model.onnx") == digest
