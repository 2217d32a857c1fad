"""REST bodies: KServe v2 JSON plus Triton's binary tensor data extension.

A binary request is `<JSON header><raw bytes...>` with the header's length in
the `Inference-Header-Content-Length` HTTP header; each input that has
`parameters.binary_data_size` takes the next that many bytes. Binary inputs are
wrapped with np.frombuffer over the received body, so they are never copied.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import InvalidInput
from ..messages import InferRequest, InferResponse, RequestedOutput, Tensor
from . import tensors

_loads = json.loads
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def decode_request(
    body: bytes | memoryview, header_length: int | None, model: str, version: str
) -> InferRequest:
    if header_length is None:
        header_bytes = body
        rest = memoryview(b"")
    else:
        if header_length < 0 or header_length > len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length is {header_length} but the body has {len(body)} bytes"
            )
        view = memoryview(body)
        header_bytes = view[:header_length]
        rest = view[header_length:]
    try:
        doc = _loads(bytes(header_bytes) if isinstance(header_bytes, memoryview) else header_bytes)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidInput("request body is not valid JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"request body must be a JSON object, got {type(doc).__name__}")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("request needs a non-empty 'inputs' list")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput(f"'parameters' must be an object, got {type(params).__name__}")

    inputs: list[Tensor] = []
    offset = 0
    for item in raw_inputs:
        if not isinstance(item, dict):
            raise InvalidInput(f"each entry of 'inputs' must be an object, got {type(item).__name__}")
        name = tensors.check_header(item.get("name"), item.get("datatype"), item.get("shape"))
        datatype, shape = item["datatype"], item["shape"]
        tparams = item.get("parameters") or {}
        size = tparams.get("binary_data_size") if isinstance(tparams, dict) else None
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(f"input '{name}': binary_data_size must be a non-negative integer, got {size!r}")
            if offset + size > len(rest):
                raise InvalidInput(
                    f"input '{name}': binary_data_size {size} runs past the end of the body "
                    f"({len(rest) - offset} binary bytes left)"
                )
            data = tensors.from_bytes(name, datatype, shape, rest[offset : offset + size])
            offset += size
        elif "data" in item:
            data = tensors.from_json(name, datatype, shape, item["data"])
        else:
            raise InvalidInput(f"input '{name}' has neither 'data' nor parameters.binary_data_size")
        inputs.append(Tensor(name, datatype, list(shape), data))
    if offset != len(rest):
        raise InvalidInput(
            f"body has {len(rest)} bytes of binary data after the JSON header but the inputs "
            f"declare {offset} (binary_data_size)"
        )

    outputs = None
    raw_outputs = doc.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise InvalidInput(f"'outputs' must be a list, got {type(raw_outputs).__name__}")
        outputs = []
        for o in raw_outputs:
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise InvalidInput(f"each entry of 'outputs' must be an object with a 'name', got {o!r}"[:200])
            op = o.get("parameters") or {}
            binary = op.get("binary_data") if isinstance(op, dict) else None
            outputs.append(RequestedOutput(o["name"], bool(binary) if binary is not None else None))

    request_id = doc.get("id", "")
    if isinstance(request_id, str):
        tensors.check_text("request 'id'", request_id)
    return InferRequest(
        model=model,
        version=version,
        inputs=inputs,
        outputs=outputs,
        id=request_id if isinstance(request_id, str) else str(request_id),
        timeout_s=_timeout(params.get("timeout")),
        binary_output=bool(params.get("binary_data_output", False)),
        protocol="http",
        parameters=params,
    )


def _timeout(value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInput(f"parameter 'timeout' must be a non-negative integer of microseconds, got {value!r}")
    return value / 1e6 if value else None


def encode_response(response: InferResponse) -> tuple[bytes, list, int | None]:
    """JSON header, binary chunks to send after it, and the header length (None: all JSON)."""
    outs = []
    chunks = []
    binary = response.binary or [False] * len(response.outputs)
    for t, as_binary in zip(response.outputs, binary):
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        if as_binary:
            raw = tensors.to_bytes(t.datatype, t.data)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = tensors.to_json_data(t.datatype, t.data)
        outs.append(entry)
    doc: dict[str, Any] = {"model_name": response.model, "model_version": response.version}
    if response.id:
        doc["id"] = response.id
    doc["outputs"] = outs
    header = _dumps(doc).encode()
    return header, chunks, (len(header) if chunks else None)


def error_body(message: str) -> bytes:
    # The message may quote the client's own bad text (a lone surrogate): never fail on it.
    return _dumps({"error": message}).encode(errors="backslashreplace")


def dumps(doc: Any) -> bytes:
    return _dumps(doc).encode()


def message_to_dict(msg) -> dict:
    """A protobuf message as Triton's REST JSON: field names as in the proto,
    enums by name, 64-bit integers as JSON numbers (json_format would quote them)."""
    out = {}
    for field, value in msg.ListFields():
        mt = field.message_type
        if mt is not None and mt.GetOptions().map_entry:
            vf = mt.fields_by_name["value"]
            out[field.name] = {k: _scalar(vf, v) for k, v in value.items()}
        elif field.label == field.LABEL_REPEATED:
            out[field.name] = [_scalar(field, v) for v in value]
        else:
            out[field.name] = _scalar(field, value)
    return out


def _scalar(field, value):
    if field.type == field.TYPE_MESSAGE:
        return message_to_dict(value)
    if field.type == field.TYPE_ENUM:
        return field.enum_type.values_by_number[value].name
    if field.type == field.TYPE_BYTES:
        import base64

        return base64.b64encode(value).decode()
    return value
