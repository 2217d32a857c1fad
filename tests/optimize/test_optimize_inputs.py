"""Inputs: generated from model metadata, or loaded from an .npz and checked against the model."""

from __future__ import annotations

import numpy as np
import pytest

import models
from modelship_server import samples
from modelship_server.optimize.inputs import DatasetError, InputSpec, generate, input_specs, load_dataset


def test_specs_and_generated_inputs_follow_the_model():
    specs = input_specs(samples.multi_io())
    assert [(s.name, s.dtype, s.shape) for s in specs] == [
        ("x", np.dtype(np.float32), (None, 4)), ("k", np.dtype(np.int64), (None, 1))]
    feeds = generate(specs, 3, seed=5)
    assert len(feeds) == 3
    assert feeds[0]["x"].shape == (1, 4) and feeds[0]["x"].dtype == np.float32
    assert feeds[0]["k"].shape == (1, 1) and feeds[0]["k"].dtype == np.int64
    again = generate(specs, 3, seed=5)
    assert np.array_equal(feeds[2]["x"], again[2]["x"])  # seeded
    assert not np.array_equal(feeds[0]["x"], feeds[1]["x"])


def test_dataset_is_split_into_samples(tmp_path):
    path = tmp_path / "d.npz"
    x = np.arange(20, dtype=np.float32).reshape(5, 4)
    np.savez(path, x=x, k=np.ones((5, 1), np.int64))
    feeds = load_dataset(path, input_specs(samples.multi_io()))
    assert len(feeds) == 5
    assert np.array_equal(feeds[3]["x"], x[3:4])


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((2, 4), np.float32)}, "no array for input(s) ['k']"),
    ({"x": np.zeros((2, 4), np.float64), "k": np.zeros((2, 1), np.int64)},
     "dataset input 'x': expected dtype float32, got float64"),
    ({"x": np.zeros((2, 5), np.float32), "k": np.zeros((2, 1), np.int64)},
     "dataset input 'x': expected samples of shape [?, 4] (samples on the first axis), got [2, 5]"),
    ({"x": np.zeros((2, 4), np.float32), "k": np.zeros((3, 1), np.int64)}, "same, non-zero number of samples"),
    ({"x": np.zeros((2, 4), np.float32), "k": np.zeros((2, 1), np.int64), "z": np.zeros(1)}, "['z'] that are not model inputs"),
])
def test_dataset_misfit_names_the_input(tmp_path, arrays, message):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError) as err:
        load_dataset(path, input_specs(samples.multi_io()))
    assert message in str(err.value)


def test_unreadable_dataset(tmp_path):
    path = tmp_path / "d.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="not a readable .npz"):
        load_dataset(path, input_specs(samples.multi_io()))


VAD_SPECS = input_specs(models.stateful())


def test_stacked_feeds_hold_scalars_and_batch_on_axis_1(tmp_path):
    """Each sample a complete feed, stacked on a new first axis: a scalar sample rate and a
    state whose batch is on axis 1 are written as they are fed."""
    path = tmp_path / "d.npz"
    feeds = [{"audio": np.full((1, 64), i, np.float32), "state": np.zeros((2, 1, 16), np.float32),
              "sr": np.array(16000)} for i in range(5)]
    np.savez(path, **{name: np.stack([f[name] for f in feeds]) for name in feeds[0]})
    loaded = load_dataset(path, VAD_SPECS)
    assert len(loaded) == 5
    assert loaded[3]["audio"].shape == (1, 64) and loaded[3]["audio"][0, 0] == 3
    assert loaded[3]["state"].shape == (2, 1, 16) and loaded[3]["sr"].shape == () and loaded[3]["sr"] == 16000


def test_batch_first_stays_the_default_reading(tmp_path):
    """The same rank as the model means batch-first, as before (sample i is array[i:i+1])."""
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((4, 4), np.float32), k=np.ones((4, 1), np.int64))
    assert [f["x"].shape for f in load_dataset(path, input_specs(samples.multi_io()))] == [(1, 4)] * 4


@pytest.mark.parametrize("arrays, words", [
    # x stacked (3 axes for [?, 4]) but k batch-first (2 axes for [?, 1])
    ({"x": np.zeros((3, 1, 4), np.float32), "k": np.zeros((3, 1), np.int64)},
     "mixes layouts: ['x'] are stacked feeds (one axis more than the model's input) but ['k'] are batch-first"),
    ({"x": np.zeros((3,), np.float32), "k": np.zeros((3, 1), np.int64)},
     "input 'x' has 1 axes for the model's [?, 4], expected 3 (stacked feeds) or 2 (batch-first)"),
    ({"x": np.zeros((3, 1, 5), np.float32), "k": np.zeros((3, 1, 1), np.int64)},
     "dataset input 'x': expected samples of shape [?, 4] (one complete feed per sample on a new first axis), "
     "got [3, 1, 5], i.e. samples of [1, 5]"),
])
def test_ambiguous_or_misfit_layouts_say_how_to_write_the_file(tmp_path, arrays, words):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError) as err:
        load_dataset(path, input_specs(samples.multi_io()))
    assert words in str(err.value)
    if "layouts" in words or "axes" in words:
        assert "np.stack([feed[name] for feed in feeds])" in str(err.value)


def test_batch_first_cannot_be_meant_when_the_first_axis_is_fixed(tmp_path):
    """state [2, N, 16] has no batch axis first: a batch-first file for it is refused with the
    stacked form to write instead, and a scalar needs stacking anyway."""
    path = tmp_path / "d.npz"
    np.savez(path, audio=np.zeros((3, 64), np.float32), state=np.zeros((2, 3, 16), np.float32),
             sr=np.array([16000, 16000, 16000]))
    with pytest.raises(DatasetError) as err:
        load_dataset(path, VAD_SPECS)
    assert "mixes layouts: ['sr'] are stacked feeds" in str(err.value)
    np.savez(path, audio=np.zeros((3, 64), np.float32), state=np.zeros((3, 16, 2), np.float32),
             sr=np.zeros((3, 1), np.int64))
    with pytest.raises(DatasetError, match=r"input 'sr' has 2 axes for the model's \[\], expected 1 \(stacked feeds\)"):
        load_dataset(path, VAD_SPECS)


def test_batch_first_refused_for_a_fixed_first_axis(tmp_path):
    specs = [InputSpec("state", np.dtype(np.float32), (2, None, 16))]
    path = tmp_path / "d.npz"
    np.savez(path, state=np.zeros((5, 1, 16), np.float32))
    with pytest.raises(DatasetError, match=r"input 'state' \[2, \?, 16\] fixes its first axis; write one complete feed"):
        load_dataset(path, specs)


def test_generate_follows_declared_inputs():
    from modelship_server.feeds import InputHint

    hints = [InputHint("audio", (1, 256)), InputHint("state", (2, 1, 16)), InputHint("sr", value=8000)]
    [feed] = generate(VAD_SPECS, 1, hints=hints)
    assert feed["audio"].shape == (1, 256) and int(feed["sr"]) == 8000
