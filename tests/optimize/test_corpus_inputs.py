"""Every corpus model against the declared-inputs rules: the hints a user would write pass
the checks and give feeds the model runs; without them, the inputs that need a declaration
are named; its own samples load from an .npz in the stacked-feeds layout (and batch-first
where the model batches)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import corpus
from modelship_server import feeds
from modelship_server.optimize.inputs import input_specs, load_dataset

NEEDS = {  # what a model without hints must be refused for (inputs named), or nothing
    "ddddocr-ocr": ["input1"], "nudenet-320n": ["images"], "vad-state": ["input", "state", "sr"],
    "text-encoder": ["input_ids", "attention_mask"], "text-classifier": ["tokens"],
}


@pytest.mark.parametrize("name", sorted(corpus.MODELS))
def test_declared_inputs_run_and_undeclared_ones_are_named(name, tmp_path):
    model = corpus.MODELS[name]
    specs = input_specs(onnx.load(str(model.path()), load_external_data=False))
    hints = feeds.parse_hints(json.dumps([{"name": k, **v} for k, v in model.hints.items()]))
    feeds.check_hints(specs, hints)
    missing = feeds.missing_hints(specs, [])
    assert [line.split("'")[1] for line in missing] == NEEDS.get(name, []), missing
    strings = any(s.dtype.kind == "O" for s in specs)
    if not strings:
        feeds.require_generatable(specs, hints)
        session = ort.InferenceSession(str(model.path()), providers=["CPUExecutionProvider"])
        for feed in feeds.generate(specs, hints, 2, seed=1):
            session.run(None, feed)  # raises if a declared shape or value does not suit the model
    samples = [model.sample(batch=1, seed=s) for s in range(3)]
    stacked = tmp_path / "stacked.npz"
    # strings are written as numpy str arrays: savez cannot store objects without pickle
    as_saved = (lambda a: a.astype(str)) if strings else (lambda a: a)
    np.savez(stacked, **{k: as_saved(np.stack([f[k] for f in samples])) for k in samples[0]})
    loaded = load_dataset(stacked, specs)
    assert len(loaded) == 3 and all(loaded[1][k].shape == samples[1][k].shape for k in samples[1])
    if model.batchable:
        batch_first = tmp_path / "batch.npz"
        np.savez(batch_first, **{k: as_saved(np.concatenate([f[k] for f in samples])) for k in samples[0]})
        assert [f[specs[0].name].shape[0] for f in load_dataset(batch_first, specs)] == [1, 1, 1]
