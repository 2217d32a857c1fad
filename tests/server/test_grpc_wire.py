"""The zero-copy split of raw_input_contents agrees with protobuf's own parse (no server needed)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from modelship_server.codecs import grpc as codec
from modelship_server.codecs.grpc_wire import MAX_FIELDS, split_raw_contents
from modelship_server.errors import InvalidInput
from modelship_server.messages import InferResponse, Tensor


def _message(n_inputs: int = 2, *, params: bool = True, typed: bool = False) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name="m", model_version="3", id="req-1")
    rng = np.random.default_rng(n_inputs)
    for i in range(n_inputs):
        t = msg.inputs.add(name=f"IN{i}", datatype="FP32", shape=[2, 1000 * (i + 1)])
        arr = rng.random((2, 1000 * (i + 1)), np.float32)
        if typed:
            t.contents.fp32_contents.extend(arr.ravel().tolist())
        else:
            msg.raw_input_contents.append(arr.tobytes())
    msg.inputs.add(name="S", datatype="BYTES", shape=[2])
    if not typed:
        msg.raw_input_contents.append(b"\x01\x00\x00\x00a\x02\x00\x00\x00bc")
    else:
        msg.inputs[-1].contents.bytes_contents.extend([b"a", b"bc"])
    msg.outputs.add(name="OUT")
    if params:
        msg.parameters["timeout"].int64_param = 5000
        msg.parameters["priority"].uint64_param = 2
    return msg


@pytest.mark.parametrize("typed", [False, True])
@pytest.mark.parametrize("n_inputs", [0, 1, 3])
def test_split_decodes_to_the_same_request_as_a_full_parse(n_inputs, typed):
    wire = _message(n_inputs, typed=typed).SerializeToString()
    split = split_raw_contents(wire)
    assert split is not None
    head, contents = split
    assert len(contents) == (0 if typed else n_inputs + 1)
    assert all(isinstance(c, memoryview) and c.obj is wire for c in contents)  # views, not copies
    ours = codec.decode_request(pb.ModelInferRequest.FromString(head), contents)
    theirs = codec.decode_request(pb.ModelInferRequest.FromString(wire))
    assert (ours.model, ours.version, ours.id, ours.timeout_s, ours.parameters) == \
        (theirs.model, theirs.version, theirs.id, theirs.timeout_s, theirs.parameters)
    assert [(t.name, t.datatype, t.shape) for t in ours.inputs] == [(t.name, t.datatype, t.shape) for t in theirs.inputs]
    for a, b in zip(ours.inputs, theirs.inputs):
        np.testing.assert_array_equal(a.data, b.data)


def test_fields_after_and_between_contents_are_kept():
    a = pb.ModelInferRequest(model_name="m")
    a.raw_input_contents.append(b"\x00" * 8)
    b = pb.ModelInferRequest(id="late")
    b.inputs.add(name="X", datatype="FP32", shape=[2])
    head, contents = split_raw_contents(a.SerializeToString() + b.SerializeToString())  # protobuf merges concatenations
    msg = pb.ModelInferRequest.FromString(head)
    assert (msg.model_name, msg.id, msg.inputs[0].name, len(msg.raw_input_contents)) == ("m", "late", "X", 0)
    assert [bytes(c) for c in contents] == [b"\x00" * 8]


def test_many_top_level_fields_are_left_to_protobuf():
    msg = pb.ModelInferRequest(model_name="m")
    for _ in range(MAX_FIELDS + 1):
        msg.raw_input_contents.append(b"")
    assert split_raw_contents(msg.SerializeToString()) is None


def test_a_large_head_is_left_to_protobuf():
    msg = pb.ModelInferRequest(model_name="m", id="x" * 5000)
    msg.raw_input_contents.append(b"\x00" * 64)
    wire = msg.SerializeToString()
    assert split_raw_contents(wire, max_head=4096) is None
    assert split_raw_contents(wire, max_head=8192) is not None


@pytest.mark.parametrize("wire", [
    b"\x3a\x10abc",             # field 7 declares 16 bytes, 3 follow
    b"\x0a",                    # a key, no length
    b"\x08" + b"\xff" * 11,     # a varint longer than 10 bytes
    b"\x0b\x00",                # wire type 3 (group start)
    b"\x00\x00",                # field number 0
    b"\x09\x00\x00",            # fixed64 truncated
])
def test_malformed_top_levels_are_invalid_input(wire):
    with pytest.raises(InvalidInput, match="does not parse"):
        split_raw_contents(wire)


def test_random_bytes_never_raise_anything_but_invalid_input():
    rng = random.Random(13)
    good = _message(1).SerializeToString()
    for _ in range(3000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = bytes(data[: rng.randrange(len(data) + 1)])
        try:
            split = split_raw_contents(data)
        except InvalidInput:
            continue
        if split is not None:
            try:
                pb.ModelInferRequest.FromString(split[0])
            except Exception:  # noqa: BLE001 - the server answers these INVALID_ARGUMENT (its _parse)
                pass


def _response(outputs) -> InferResponse:
    return InferResponse("m", "3", "req-1", [Tensor(n, dt, list(a.shape), a) for n, dt, a in outputs])


@pytest.mark.parametrize("outputs", [
    [("OUT", "FP32", np.arange(12, dtype=np.float32).reshape(3, 4))],
    # a non-contiguous view (a batch member's slice of a transposed output), an empty tensor,
    # a BYTES tensor and one over 128 bytes (a multi-byte length varint), together
    [("T", "FP32", np.arange(24, dtype=np.float32).reshape(4, 6).T[1:3]),
     ("E", "INT64", np.zeros((0, 5), np.int64)),
     ("S", "BYTES", np.array([b"a", b"", "\u00e9".encode()], dtype=object)),
     ("BIG", "FP64", np.linspace(0, 1, 70_000).reshape(7, 10_000))],
    [],
])
def test_response_bytes_are_what_protobuf_serializes(outputs):
    """ModelInfer's hand-joined response is byte for byte the message protobuf would serialize,
    and parses back to the same tensors."""
    resp = _response(outputs)
    wire = codec.encode_response_bytes(resp)
    assert wire == codec.encode_response(resp).SerializeToString()
    back = pb.ModelInferResponse.FromString(wire)
    assert [o.name for o in back.outputs] == [n for n, _, _ in outputs]
    for (_, dt, arr), raw in zip(outputs, back.raw_output_contents):
        if dt != "BYTES":
            np.testing.assert_array_equal(np.frombuffer(raw, arr.dtype).reshape(arr.shape), arr)


def test_response_heads_reused_only_for_the_same_head(monkeypatch):
    """Answers without an id reuse a cached head: each is still byte for byte protobuf's message,
    whatever came before it (other shapes, other models, other values), and the cache stays bounded."""
    monkeypatch.setattr(codec, "_HEADS", {})
    monkeypatch.setattr(codec, "_HEADS_MAX", 4)
    rng = np.random.default_rng(0)
    for i in range(40):
        rows = 1 + i % 6
        resp = InferResponse(f"m{i % 3}", "1", "", [
            Tensor("OUT", "FP32", [rows, 4], rng.random((rows, 4), np.float32)),
            Tensor("IDX", "INT64", [rows], np.arange(rows, dtype=np.int64) + i)])
        assert codec.encode_response_bytes(resp) == codec.encode_response(resp).SerializeToString()
        assert len(codec._HEADS) <= 4
    with_id = InferResponse("m0", "1", "req-9", [Tensor("OUT", "FP32", [1, 4], np.ones((1, 4), np.float32))])
    assert codec.encode_response_bytes(with_id) == codec.encode_response(with_id).SerializeToString()
