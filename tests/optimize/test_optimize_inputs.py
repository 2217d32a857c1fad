"""Inputs: generated from model metadata, or loaded from an .npz and checked against the model."""

from __future__ import annotations

import numpy as np
import pytest

from modelship_server import samples
from modelship_server.optimize.inputs import DatasetError, generate, input_specs, load_dataset


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
     "dataset input 'x': expected shape [?, 4] (samples on the first axis), got [2, 5]"),
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
