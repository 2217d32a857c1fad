"""gRPC messages: tritonclient's generated `service_pb2` types to and from our messages.

Inputs come either as `raw_input_contents` (one bytes blob per input, what
tritonclient sends) or as typed `InferTensorContents`; outputs always go back
as `raw_output_contents`, as Triton does.
"""

from __future__ import annotations

from tritonclient.grpc import service_pb2 as pb

from ..errors import InvalidInput
from ..messages import InferRequest, InferResponse, RequestedOutput, Tensor
from . import tensors


def param_value(p: pb.InferParameter):
    kind = p.WhichOneof("parameter_choice")
    return getattr(p, kind) if kind else None


def decode_request(req: pb.ModelInferRequest, raw_contents: list | None = None) -> InferRequest:
    """`raw_contents`, when given, stands for `raw_input_contents` (views split off the wire
    bytes by `grpc_wire`, which the arrays are then built on without a copy)."""
    if not req.inputs:
        raise InvalidInput("request needs at least one entry in 'inputs'")
    raw = req.raw_input_contents if raw_contents is None else raw_contents
    if raw and len(raw) != len(req.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries but there are {len(req.inputs)} inputs; "
            "send every input raw or none"
        )
    inputs = []
    for i, t in enumerate(req.inputs):
        shape = list(t.shape)
        name = tensors.check_header(t.name, t.datatype, shape)
        if raw:
            data = tensors.from_bytes(name, t.datatype, shape, raw[i])
        else:
            data = tensors.from_contents(name, t.datatype, shape, t.contents)
        inputs.append(Tensor(name, t.datatype, shape, data))
    outputs = [RequestedOutput(o.name) for o in req.outputs] if req.outputs else None
    params = {k: param_value(v) for k, v in req.parameters.items()} if req.parameters else {}
    timeout = params.get("timeout")
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0):
        raise InvalidInput(
            f"parameter 'timeout' must be a non-negative integer of microseconds, got {timeout!r}"
        )
    return InferRequest(
        model=req.model_name,
        version=req.model_version,
        inputs=inputs,
        outputs=outputs,
        id=req.id,
        timeout_s=(timeout / 1e6) if timeout else None,
        protocol="grpc",
        parameters=params,
    )


def decode_work_bytes(req: pb.ModelInferRequest, raw_contents: list | None) -> int:
    """Bytes that decoding `req` walks element by element (typed contents are already parsed;
    raw numeric tensors become arrays in O(1)): the BYTES tensors' raw size."""
    if not raw_contents:
        return 0
    return sum(len(c) for t, c in zip(req.inputs, raw_contents) if t.datatype == "BYTES")


def encode_response(response: InferResponse) -> pb.ModelInferResponse:
    """The response as a message (what ModelStreamInfer wraps); ModelInfer sends `encode_response_bytes`."""
    msg = pb.ModelInferResponse(
        model_name=response.model, model_version=response.version, id=response.id
    )
    for t in response.outputs:
        out = msg.outputs.add()
        out.name = t.name
        out.datatype = t.datatype
        out.shape.extend(t.shape)
        msg.raw_output_contents.append(bytes(tensors.to_bytes(t.datatype, t.data)))
    return msg


_RAW_OUTPUT_TAG = bytes([(6 << 3) | 2])  # ModelInferResponse.raw_output_contents, length-delimited


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_HEADS: dict[tuple, bytes] = {}  # serialized response heads (all but the tensor bytes), by what they hold
_HEADS_MAX = 1024


def _head(response: InferResponse) -> bytes:
    """The response's fields but raw_output_contents, serialized."""
    msg = pb.ModelInferResponse(model_name=response.model, model_version=response.version, id=response.id)
    for t in response.outputs:
        out = msg.outputs.add()
        out.name = t.name
        out.datatype = t.datatype
        out.shape.extend(t.shape)
    return msg.SerializeToString()


def encode_response_bytes(response: InferResponse) -> bytes:
    """The serialized ModelInferResponse, the same bytes `encode_response(...).SerializeToString()`
    gives, with each output's tensor bytes joined straight from the ORT output array: one copy,
    where appending to the message and serializing it made three. Protobuf writes fields in number
    order, and raw_output_contents (6) is the last, so it is appended after the rest.

    The head (names, versions, output names, types and shapes) is the same for every answer of a
    model at one batch size, so answers without an id reuse it: building and serializing the
    message was a fifth of the handler's own time on a small model (issue 13)."""
    outputs = response.outputs
    if response.id:
        head = _head(response)
    else:
        key = (response.model, response.version, *[(t.name, t.datatype, *t.shape) for t in outputs])
        head = _HEADS.get(key)
        if head is None:
            if len(_HEADS) >= _HEADS_MAX:
                _HEADS.clear()
            head = _HEADS[key] = _head(response)
    parts: list = [head]
    for t in outputs:
        data = tensors.to_bytes(t.datatype, t.data)
        parts += (_RAW_OUTPUT_TAG, _varint(len(data)), data)
    return b"".join(parts)
