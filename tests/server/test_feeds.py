"""Declared inputs (modelship_server.feeds): parsed, checked against the model, turned into
feeds; the one module the optimizer, the capacity sweep, bench and warm-up share."""

from __future__ import annotations

import numpy as np
import pytest

from modelship_server import feeds
from modelship_server.feeds import HintsNeeded, InputHint, InputsError, InputSpec

F32, I64 = np.dtype(np.float32), np.dtype(np.int64)
IMAGE = [InputSpec("x", F32, (None, 3, None, None))]
VAD = [InputSpec("audio", F32, (None, None)), InputSpec("state", F32, (2, None, 16)), InputSpec("sr", I64, ())]


def test_parse_round_trips_the_wire_form():
    text = ('[{"name": "x", "shape": [1, 3, 48, 160], "minShape": [1, 3, 48, 32], "maxShape": [8, 3, 48, 800]},'
            ' {"name": "sr", "value": 16000}, {"name": "ids", "range": [0, 30521]}]')
    hints = feeds.parse_hints(text)
    assert hints[0] == InputHint("x", (1, 3, 48, 160), (1, 3, 48, 32), (8, 3, 48, 800))
    assert hints[1].value == 16000 and hints[2].range == (0, 30521)
    assert feeds.parse_hints(feeds.hints_json(hints)) == hints
    assert feeds.parse_hints(None) == [] and feeds.parse_hints("") == []


@pytest.mark.parametrize("text, words", [
    ("not json", "--inputs is not JSON"),
    ('{"name": "x"}', "must be a JSON list"),
    ('[{"shape": [1]}]', "--inputs[0].name must be the model input's name"),
    ('[{"name": "x", "shape": [1, 0]}]', "--inputs[0].shape must hold dimensions of at least 1; got [1, 0]"),
    ('[{"name": "x", "shape": [1, "a"]}]', "--inputs[0].shape must be a list of integers"),
    ('[{"name": "x", "value": 1, "range": [0, 2]}]', "value (1) and range ([0, 2]) exclude each other"),
    ('[{"name": "x", "range": [5, 1]}]', "range must be [low, high) with low < high; got [5, 1]"),
    ('[{"name": "x", "range": [5, 5]}]', "range must be [low, high) with low < high; got [5, 5]"),
    ('[{"name": "x", "shape": [1, 3, 8, 8], "minShape": [1, 3, 16, 8]}]', "minShape [1, 3, 16, 8] must be <= shape"),
    ('[{"name": "x", "shape": [1, 3, 8, 8], "maxShape": [1, 3, 8]}]', "maxShape [1, 3, 8] has 3 dimensions"),
    ('[{"name": "x"}]', "declares nothing"),
    ('[{"name": "x", "colour": 1}]', "unknown field(s) ['colour']"),
    ('[{"name": "x", "value": 1}, {"name": "x", "value": 2}]', "declares input 'x' twice"),
])
def test_parse_refuses_with_the_field(text, words):
    with pytest.raises(InputsError) as err:
        feeds.parse_hints(text)
    assert words in str(err.value)


@pytest.mark.parametrize("hint, words", [
    (InputHint("y", (1,)), "names input 'y', which the model does not have; its inputs are ['audio', 'sr', 'state']"),
    (InputHint("state", (2, 1)), "spec.model.inputs[state].shape: expected 3 dimensions like the model's "
                                 "[2, ?, 16], got [2, 1]"),
    (InputHint("state", (3, 1, 16)), "dimension 0 is fixed to 2 by the model [2, ?, 16], got 3 in [3, 1, 16]"),
    (InputHint("state", None, max_shape=(2, 4, 8)), "spec.model.inputs[state].maxShape: dimension 2 is fixed to 16"),
    (InputHint("sr", value=16000.5), "spec.model.inputs[sr].value: input 'sr' is int64, expected an integer, got 16000.5"),
    (InputHint("sr", (), value=2.0 ** 70), "does not fit input 'sr' of type int64"),
])
def test_hints_that_contradict_the_model_are_refused(hint, words):
    with pytest.raises(InputsError) as err:
        feeds.check_hints(VAD, [hint])
    assert words in str(err.value)


def test_generation_without_hints_is_refused_where_it_means_nothing():
    lines = feeds.missing_hints(VAD, [])
    assert len(lines) == 3
    assert lines[0].startswith("input 'audio' has dynamic dims [?, ?] beyond the batch axis (axis 1)")
    assert lines[1].startswith("input 'state' has dynamic dims [2, ?, 16] beyond the batch axis (axis 1)")
    assert "shape [2, N, 16]" in lines[1]
    assert lines[2].startswith("input 'sr' is a scalar (int64)") and "value" in lines[2]
    with pytest.raises(HintsNeeded, match=r"^inputs need declaring: input 'x' has dynamic dims \[\?, 3, \?, \?\]"):
        feeds.require_generatable(IMAGE, [])
    feeds.require_generatable(IMAGE, [InputHint("x", (1, 3, 32, 96))])
    assert feeds.missing_hints([InputSpec("t", np.dtype(object), (None, 1))], []) == [
        "input 't' holds strings, which cannot be generated: give spec.optimization.dataset with real inputs"]


def test_generated_feeds_follow_the_declaration():
    hints = [InputHint("audio", (1, 512)), InputHint("state", (2, 1, 16)), InputHint("sr", value=16000)]
    assert feeds.missing_hints(VAD, hints) == []
    [feed] = feeds.generate(VAD, hints, 1, seed=3)
    assert feed["audio"].shape == (1, 512) and feed["audio"].dtype == F32
    assert feed["state"].shape == (2, 1, 16)
    assert feed["sr"].shape == () and feed["sr"].dtype == I64 and int(feed["sr"]) == 16000
    [wide] = feeds.generate(VAD, hints, 1, batch=4, zeros=True)
    assert wide["audio"].shape == (4, 512) and not wide["audio"].any()
    assert wide["state"].shape == (2, 1, 16)  # its batch is on axis 1: the declared shape stands
    ids = feeds.generate([InputSpec("ids", I64, (None, 8))], [InputHint("ids", range=(100, 103))], 4, seed=1)
    values = np.concatenate([f["ids"].ravel() for f in ids])
    assert set(values.tolist()) == {100, 101, 102}  # high excluded, as numpy draws integers
    big = feeds.generate(IMAGE, [InputHint("x", (1, 3, 8, 8), max_shape=(2, 3, 16, 40))], 1, which="maxShape")
    assert big[0]["x"].shape == (2, 3, 16, 40)


def test_bounds_alone_stand_for_the_typical_shape():
    """Only minShape (or maxShape) declared: generation takes it, and nothing is missing."""
    hints = [InputHint("x", min_shape=(1, 3, 32, 32), max_shape=(4, 3, 640, 640))]
    assert feeds.missing_hints(IMAGE, hints) == []
    assert feeds.generate(IMAGE, hints, 1)[0]["x"].shape == (1, 3, 32, 32)
    assert feeds.generate(IMAGE, hints, 1, which="maxShape")[0]["x"].shape == (4, 3, 640, 640)
