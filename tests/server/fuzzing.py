"""Generated requests for the server and the verdicts every answer must pass.

Shared by the property tests (tests/server/test_fuzz.py, a fixed seed and a
small budget) and the long benchmark run (server_image/bench/hostile.py).
The generators mix well-formed requests with every way of getting one wrong:
random JSON, wrong datatypes, shapes, sizes, names, binary offsets, raw bytes,
protobuf fields; the verdict is the same for all of them: an answer the client
caused (2xx/4xx, or a 503 with Retry-After), never a 5xx or INTERNAL/UNKNOWN.
"""

from __future__ import annotations

import http.client
import json
import struct
from pathlib import Path

import grpc
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb

from modelship_server import samples

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES"]
# model -> its inputs (name, datatype, non-batch dims)
MODELS = {
    "identity": [("x", "FP32", [-1])],
    "multi": [("x", "FP32", [4]), ("k", "INT64", [1])],
    "strings": [("text", "BYTES", [1])],
    "embedding": [("ids", "INT64", [-1])],
    "broadcast": [("a", "FP32", [-1]), ("b", "FP32", [-1])],
}
HTTP_OK = {200, 400, 404, 405, 413, 414, 431, 503}
GRPC_OK = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNIMPLEMENTED}


def write_repository(repo: Path) -> Path:
    samples.write_model(repo, "identity", samples.identity(), "max_batch_size: 8\n")
    samples.write_model(repo, "multi", samples.multi_io(), "max_batch_size: 8\n")
    samples.write_model(repo, "strings", samples.strings(), "max_batch_size: 8\n")
    samples.write_model(repo, "embedding", samples.embedding(), "max_batch_size: 8\ndynamic_batching { }\n")
    samples.write_model(repo, "broadcast", samples.broadcast_add(), "max_batch_size: 8\n")
    return repo


# -- strategies ---------------------------------------------------------------------------

_text = st.text(alphabet=st.characters(exclude_categories=()), max_size=12)  # lone surrogates included
_json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                         st.floats(allow_nan=False), _text)
any_json = st.recursive(_json_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(_text, inner, max_size=4)), max_leaves=20)

_dim = st.one_of(st.integers(0, 6), st.integers(-3, 2**65), st.sampled_from([2**31, 2**62, 2**63 - 1]))
_shape = st.one_of(st.lists(st.integers(1, 4), min_size=1, max_size=3),
                   st.lists(_dim, max_size=5), st.lists(st.integers(0, 2), min_size=60, max_size=70),
                   any_json)
_values = st.one_of(
    st.lists(st.floats(allow_nan=False, width=32), max_size=16),
    st.lists(st.integers(-2**64, 2**64), max_size=16),
    st.lists(_text, max_size=8),
    st.lists(st.one_of(st.none(), st.booleans()), max_size=8),
    any_json,
)


@st.composite
def valid_inputs(draw, model: str) -> list[tuple[str, str, list[int], list]]:
    """Every input of the model with one batch size and values of the right type: (name, dtype, shape, values)."""
    n = draw(st.integers(1, 3))
    out = []
    free = draw(st.integers(1, 4))
    for name, dtype, dims in MODELS[model]:
        shape = [n] + [d if d > 0 else (free if model != "broadcast" else draw(st.sampled_from([1, free])))
                       for d in dims]
        count = 1
        for d in shape:
            count *= d
        if dtype == "BYTES":
            values = draw(st.lists(st.text(max_size=6), min_size=count, max_size=count))
        elif dtype == "INT64":
            values = draw(st.lists(st.integers(0, 99) if model == "embedding" else st.integers(-5, 5),
                                   min_size=count, max_size=count))
        else:
            values = draw(st.lists(st.floats(-1e3, 1e3, width=32), min_size=count, max_size=count))
        out.append((name, dtype, shape, values))
    return out


@st.composite
def tensor_json(draw, model: str) -> dict:
    specs = MODELS[model]
    name, dtype, dims = draw(st.sampled_from(specs))
    if draw(st.booleans()):  # well-formed, maybe with bad values
        n = draw(st.integers(1, 3))
        shape = [n] + [d if d > 0 else draw(st.integers(1, 4)) for d in dims]
        count = 1
        for d in shape:
            count *= d
        if dtype == "BYTES":
            data = draw(st.lists(_text, min_size=count, max_size=count))
        elif dtype == "INT64":
            data = draw(st.lists(st.integers(-5, 120), min_size=count, max_size=count))
        else:
            data = draw(st.lists(st.floats(-1e3, 1e3, width=32), min_size=count, max_size=count))
        t = {"name": name, "datatype": dtype, "shape": shape, "data": data}
    else:
        t = {"name": draw(st.one_of(st.just(name), _text)),
             "datatype": draw(st.one_of(st.just(dtype), st.sampled_from(DATATYPES), _text)),
             "shape": draw(_shape), "data": draw(_values)}
    if draw(st.integers(0, 9)) == 0:
        del t[draw(st.sampled_from(sorted(t)))]
    return t


def _dumps(doc, ascii_only: bool) -> bytes:
    # ensure_ascii: lone surrogates as \\udXXX escapes; otherwise as raw (invalid UTF-8) bytes.
    return json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def infer_json(draw) -> tuple[str, bytes, dict]:
    """(model, body, headers) for POST /v2/models/<model>/infer with a JSON body."""
    model = draw(st.sampled_from(sorted(MODELS) + ["nope"]))
    spec_model = model if model in MODELS else "identity"
    kind = draw(st.integers(0, 9))
    if kind == 0:
        body = _dumps(draw(any_json), draw(st.booleans()))
    elif kind == 1:
        body = draw(st.binary(max_size=200))
    elif kind < 6:
        doc = {"inputs": [{"name": n, "datatype": d, "shape": sh, "data": v}
                          for n, d, sh, v in draw(valid_inputs(spec_model))]}
        if draw(st.integers(0, 3)) == 0:  # one thing wrong
            t = draw(st.sampled_from(doc["inputs"]))
            key = draw(st.sampled_from(["name", "datatype", "shape", "data"]))
            t[key] = draw({"name": _text, "datatype": st.sampled_from(DATATYPES), "shape": _shape,
                           "data": _values}[key])
        body = _dumps(doc, draw(st.booleans()))
    else:
        doc: dict = {"inputs": draw(st.lists(tensor_json(spec_model), min_size=1, max_size=3))}
        if draw(st.booleans()):
            doc["id"] = draw(st.one_of(_text, any_json))
        if draw(st.integers(0, 3)) == 0:
            doc["parameters"] = draw(st.one_of(
                st.fixed_dictionaries({"timeout": st.one_of(st.integers(-5, 10**7), any_json)}),
                st.fixed_dictionaries({"binary_data_output": any_json}), any_json))
        if draw(st.integers(0, 3)) == 0:
            doc["outputs"] = draw(st.one_of(st.lists(st.fixed_dictionaries(
                {"name": st.sampled_from(["y", "flag", "vectors", "c", "echo", "zz"])}), max_size=3), any_json))
        body = _dumps(doc, draw(st.booleans()))
    headers = {"Content-Type": "application/json"}
    return model, body, headers


_PACK = {"BOOL": "?", "UINT8": "B", "INT8": "b", "INT16": "h", "UINT16": "H", "INT32": "i", "UINT32": "I",
         "INT64": "q", "UINT64": "Q", "FP16": "e", "FP32": "f", "FP64": "d"}


@st.composite
def binary_payload(draw, dtype: str, count: int) -> bytes:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=64))
    if dtype == "BYTES":
        items = draw(st.lists(st.binary(max_size=6), min_size=count, max_size=count))
        out = b"".join(struct.pack("<I", len(b)) + b for b in items)
        if draw(st.integers(0, 3)) == 0:
            out += struct.pack("<I", draw(st.integers(0, 2**32 - 1)))
        return out
    fmt = _PACK.get(dtype, "f")
    size = struct.calcsize(fmt)
    raw = draw(st.binary(min_size=count * size, max_size=count * size))
    if fmt == "?":
        raw = bytes(b & 1 for b in raw)
    return raw


@st.composite
def infer_binary(draw) -> tuple[str, bytes, dict]:
    """(model, body, headers) using Triton's binary tensor extension."""
    model = draw(st.sampled_from(sorted(MODELS)))
    entries, blobs = [], []
    for name, dtype, dims in draw(st.lists(st.sampled_from(MODELS[model]), min_size=1, max_size=3)):
        dtype = draw(st.one_of(st.just(dtype), st.sampled_from(DATATYPES)))
        shape = [draw(st.integers(1, 3))] + [d if d > 0 else draw(st.integers(0, 5)) for d in dims]
        if draw(st.integers(0, 5)) == 0:
            shape = draw(st.lists(_dim, max_size=4))
        count = 1
        for d in shape:
            count = count * d if isinstance(d, int) and d >= 0 else 0
        blob = draw(binary_payload(dtype, min(count, 64)))
        size = len(blob) if draw(st.integers(0, 5)) else draw(st.one_of(st.integers(-3, 300), any_json))
        entries.append({"name": name, "datatype": dtype, "shape": shape, "parameters": {"binary_data_size": size}})
        blobs.append(blob)
    doc = {"inputs": entries}
    if draw(st.booleans()):
        doc["parameters"] = {"binary_data_output": True}
    header = json.dumps(doc).encode()
    hlen: object = len(header)
    if draw(st.integers(0, 5)) == 0:
        hlen = draw(st.one_of(st.integers(-5, len(header) + 50), _text.filter(lambda s: s.isprintable()
                                                                             and s.isascii())))
    body = header + b"".join(blobs)
    return model, body, {"Inference-Header-Content-Length": str(hlen), "Content-Type": "application/octet-stream"}


@st.composite
def grpc_request(draw) -> bytes:
    """A serialized ModelInferRequest (or, sometimes, bytes that are not one)."""
    kind = draw(st.integers(0, 11))
    if kind == 0:
        return draw(st.binary(max_size=200))
    model = draw(st.sampled_from(sorted(MODELS) + ["nope"]))
    spec_model = model if model in MODELS else "identity"
    req = pb.ModelInferRequest(model_name=model, model_version=draw(st.sampled_from(["", "", "", "1", "2"])))
    req.id = draw(st.text(max_size=8))
    if kind < 6:  # well-formed, raw or typed
        raw = draw(st.booleans())
        for name, dtype, shape, values in draw(valid_inputs(spec_model)):
            t = req.inputs.add(name=name, datatype=dtype, shape=shape)
            if dtype == "BYTES":
                data = [v.encode() for v in values]
                if raw:
                    req.raw_input_contents.append(b"".join(struct.pack("<I", len(b)) + b for b in data))
                else:
                    t.contents.bytes_contents.extend(data)
            elif raw:
                req.raw_input_contents.append(struct.pack(f"<{len(values)}{_PACK[dtype]}", *values))
            elif dtype == "INT64":
                t.contents.int64_contents.extend(values)
            else:
                t.contents.fp32_contents.extend(values)
        out = req.SerializeToString()
        if kind == 5:  # then cut or corrupted
            cut = draw(st.integers(0, len(out)))
            out = out[:cut] + draw(st.binary(max_size=8))
        return out
    raw = draw(st.booleans())
    for name, dtype, dims in draw(st.lists(st.sampled_from(MODELS[spec_model]), min_size=0, max_size=3)):
        t = req.inputs.add()
        t.name = draw(st.one_of(st.just(name), st.text(max_size=6)))
        t.datatype = draw(st.one_of(st.just(dtype), st.sampled_from(DATATYPES), st.text(max_size=5)))
        if draw(st.integers(0, 4)):
            shape = [draw(st.integers(1, 3))] + [d if d > 0 else draw(st.integers(0, 5)) for d in dims]
        else:
            shape = draw(st.lists(st.integers(-2**63, 2**63 - 1), max_size=70))
        t.shape.extend(shape)
        count = 1
        for d in shape:
            count = count * d if d >= 0 else 0
        count = min(count, 64)
        if raw:
            req.raw_input_contents.append(draw(binary_payload(t.datatype, count)))
        else:
            c = t.contents
            which = draw(st.integers(0, 4))
            if which == 0:
                c.fp32_contents.extend(draw(st.lists(st.floats(width=32, allow_nan=False), max_size=count + 1)))
            elif which == 1:
                c.int64_contents.extend(draw(st.lists(st.integers(-2**63, 2**63 - 1), max_size=count + 1)))
            elif which == 2:
                c.bytes_contents.extend(draw(st.lists(st.binary(max_size=5), max_size=count + 1)))
            elif which == 3:
                c.int_contents.extend(draw(st.lists(st.integers(-2**31, 2**31 - 1), max_size=count + 1)))
    if raw and draw(st.integers(0, 5)) == 0:
        req.raw_input_contents.append(b"extra")
    if draw(st.integers(0, 4)) == 0:
        req.parameters["timeout"].int64_param = draw(st.integers(-10, 10**6))
    if draw(st.integers(0, 4)) == 0:
        req.outputs.add().name = draw(st.sampled_from(["y", "zz", "vectors", ""]))
    out = req.SerializeToString()
    if kind == 1 and out:
        cut = draw(st.integers(0, len(out)))
        out = out[:cut] + draw(st.binary(max_size=8))
    return out


# -- clients and verdicts -----------------------------------------------------------------


class HttpProbe:
    """One keep-alive connection, reopened whenever the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def post(self, path: str, body: bytes, headers: dict) -> tuple[int, bytes, dict]:
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                self.conn.request("POST", path, body=body, headers=headers)
                r = self.conn.getresponse()
                out = r.status, r.read(), {k.lower(): v for k, v in r.getheaders()}
                if r.will_close:
                    self.close()
                return out
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def http_verdict(status: int, body: bytes, headers: dict, request: bytes = b"") -> str | None:
    """None if the answer is one a client may cause; else what is wrong with it.

    A 504 is the client's doing only when it set the request's own `timeout`.
    """
    if status == 504 and b'"timeout"' in request:
        return None
    if status not in HTTP_OK:
        return f"status {status}: {body[:300]!r}"
    if status == 503 and "retry-after" not in headers:
        return "503 without Retry-After"
    if status != 200 and status != 503:
        try:
            doc = json.loads(body)
        except ValueError:
            return f"status {status} with a body that is not JSON: {body[:200]!r}"
        if not isinstance(doc, dict) or not isinstance(doc.get("error"), str) or not doc["error"]:
            return f"status {status} without an 'error' message: {body[:200]!r}"
        if "Traceback" in doc["error"] or "internal error" in doc["error"]:
            return f"status {status} says: {doc['error'][:300]}"
    return None


def grpc_call(channel: grpc.Channel):
    return channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                               request_serializer=lambda b: b, response_deserializer=lambda b: b)


def grpc_verdict(call, raw: bytes) -> str | None:
    try:
        call(raw, timeout=60)
    except grpc.RpcError as err:
        code = err.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and b"timeout" in raw:
            return None  # the request's own `timeout` parameter
        if code not in GRPC_OK:
            return f"{code}: {err.details()}"
        if code == grpc.StatusCode.INVALID_ARGUMENT and "internal error" in (err.details() or ""):
            return f"{code}: {err.details()}"
    return None
