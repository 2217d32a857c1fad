"""One tensor's payload to a numpy array and back, whatever the wire.

Checks here are the ones that need the payload itself: value types in JSON,
element count versus shape, byte count versus shape. Every failure names the
tensor and the expected and actual values, and is an InvalidInput (400).
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
from tritonclient.utils import serialize_byte_tensor

from .. import datatypes
from ..errors import InvalidInput

_INT_KINDS = "iu"
_FLOAT_TYPES = {"FP16", "FP32", "FP64"}


def check_header(name: Any, datatype: Any, shape: Any, what: str = "input") -> str:
    """Validate the name/datatype/shape triple every tensor carries; return the name."""
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{what} tensor without a 'name' string (got {name!r})")
    check_text(f"{what} name", name)
    if datatype not in datatypes.DATATYPES:
        raise InvalidInput(
            f"{what} '{name}': unknown datatype {datatype!r}; expected one of "
            + ", ".join(sorted(datatypes.DATATYPES))
        )
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidInput(
            f"{what} '{name}': 'shape' must be a list of non-negative integers, got {shape!r}"[:300]
        )
    if len(shape) > MAX_RANK:
        raise InvalidInput(f"{what} '{name}': rank {len(shape)} is over the limit of {MAX_RANK} dimensions")
    big = next((d for d in shape if d > MAX_DIM), None)
    if big is not None:
        raise InvalidInput(f"{what} '{name}': dimension {big} is over the limit of {MAX_DIM} (int64)")
    return name


MAX_RANK = 64  # the most numpy 2 can hold; numpy 1 stops at 32 and _reshape says so
MAX_DIM = 2**63 - 1


def check_text(what: str, value: str) -> str:
    """A string that must go back on the wire: lone surrogates (valid JSON, invalid UTF-8) are refused."""
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"{what} {value[:40].encode(errors='backslashreplace').decode()!r} is not valid Unicode text: {exc.reason} "
            f"at position {exc.start}"
        ) from None
    return value


_NONE_FOUND = object()


def _first_bad(values: Any, ok) -> Any:
    stack = [values]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(reversed(v))
        elif not ok(v):
            return v
    return _NONE_FOUND


def _describe(v: Any) -> str:
    return f"{type(v).__name__} {v!r}"[:80]


def from_json(name: str, datatype: str, shape: list[int], data: Any) -> np.ndarray:
    """JSON `data` (flat or nested, row-major) to an array of `shape`."""
    count = math.prod(shape)
    if datatype == "BYTES":
        flat = data if isinstance(data, list) else [data]
        if any(isinstance(v, list) for v in flat):
            flat = list(_flatten(flat))
        bad = next((v for v in flat if not isinstance(v, str)), _NONE_FOUND)
        if bad is not _NONE_FOUND:
            raise InvalidInput(f"input '{name}': expected strings for BYTES, got {_describe(bad)}")
        if len(flat) != count:
            raise InvalidInput(
                f"input '{name}': shape {list(shape)} needs {count} elements, got {len(flat)}"
            )
        try:
            encoded = [s.encode() for s in flat]
        except UnicodeEncodeError as exc:
            raise InvalidInput(f"input '{name}': a BYTES element is not valid Unicode text: {exc.reason}") from None
        return _reshape(name, np.array(encoded, dtype=object), shape)
    if not isinstance(data, list):
        data = [data]
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise InvalidInput(
            f"input '{name}': 'data' is a ragged nested list; expected {count} {datatype} values "
            f"for shape {list(shape)}"
        ) from None
    kind = arr.dtype.kind
    if arr.size == 0:
        kind = "empty"
    if datatype == "BOOL":
        ok = kind in ("b", "empty")
        want = "booleans"
    elif datatype in _FLOAT_TYPES:
        ok = kind in ("f", "i", "u", "empty")
        want = "numbers"
    else:
        ok = kind in ("i", "u", "empty")
        want = "integers"
    if not ok:
        if datatype == "BOOL":
            bad = _first_bad(data, lambda v: isinstance(v, bool))
        elif want == "numbers":
            bad = _first_bad(data, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
        else:
            bad = _first_bad(data, lambda v: isinstance(v, int) and not isinstance(v, bool))
        raise InvalidInput(
            f"input '{name}': expected {want} for {datatype}, got "
            + (_describe(bad) if bad is not _NONE_FOUND else f"values of numpy dtype {arr.dtype}")
        )
    if arr.size != count:
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} needs {count} elements, got {arr.size}"
        )
    dtype = datatypes.to_numpy(datatype)
    if dtype.kind in _INT_KINDS and arr.size:
        info = np.iinfo(dtype)
        lo, hi = arr.min(), arr.max()
        if lo < info.min or hi > info.max:
            bad = lo if lo < info.min else hi
            raise InvalidInput(
                f"input '{name}': value {int(bad)} is out of range for {datatype} "
                f"[{info.min}, {info.max}]"
            )
    return _reshape(name, arr.astype(dtype, copy=False), shape)


def _reshape(name: str, arr: np.ndarray, shape: list[int]) -> np.ndarray:
    try:
        return arr.reshape(shape)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"input '{name}': cannot take shape {list(shape)}: {exc}") from None


def _flatten(values):
    for v in values:
        if isinstance(v, list):
            yield from _flatten(v)
        else:
            yield v


def from_bytes(name: str, datatype: str, shape: list[int], buf) -> np.ndarray:
    """Raw little-endian bytes (binary extension, gRPC raw contents) to an array; no copy."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return _reshape(name, split_bytes(name, buf, count), shape)
    dtype = datatypes.to_numpy(datatype)
    expected = count * dtype.itemsize
    if len(buf) != expected:
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} of {datatype} needs {expected} bytes, got {len(buf)}"
        )
    return _reshape(name, np.frombuffer(buf, dtype=dtype), shape)


_U32 = struct.Struct("<I")


def split_bytes(name: str, buf, count: int) -> np.ndarray:
    """Triton's BYTES wire format (4-byte little-endian length, then the bytes) to an object array.

    Stops at the first element past `count`: 16 MiB of empty strings declared as
    [1, 1] is refused after two elements, not after four million.
    """
    view = memoryview(buf).cast("B") if not isinstance(buf, bytes) else buf
    end = len(view)
    out = []
    append = out.append
    unpack = _U32.unpack_from
    pos = 0
    while pos < end:
        if len(out) == count:
            raise InvalidInput(
                f"input '{name}': shape needs {count} elements, got more in {end} bytes of BYTES data"
            )
        if pos + 4 > end:
            raise InvalidInput(
                f"input '{name}': BYTES data is not a sequence of 4-byte length-prefixed strings "
                f"({end - pos} stray bytes at offset {pos})"
            )
        (n,) = unpack(view, pos)
        pos += 4
        if pos + n > end:
            raise InvalidInput(
                f"input '{name}': BYTES element {len(out)} declares {n} bytes but only {end - pos} remain"
            )
        append(bytes(view[pos:pos + n]))
        pos += n
    if len(out) != count:
        raise InvalidInput(f"input '{name}': shape needs {count} elements, got {len(out)}")
    arr = np.empty(len(out), dtype=object)
    arr[:] = out
    return arr


_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def from_contents(name: str, datatype: str, shape: list[int], contents) -> np.ndarray:
    """gRPC InferTensorContents (typed repeated fields) to an array."""
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(
            f"input '{name}': {datatype} has no typed contents field; send it in raw_input_contents"
        )
    for other in set(_CONTENTS_FIELD.values()) - {field}:
        if len(getattr(contents, other)):
            raise InvalidInput(
                f"input '{name}': datatype {datatype} expects contents in '{field}', got '{other}'"
            )
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} needs {count} elements, got {len(values)}"
        )
    dtype = datatypes.to_numpy(datatype)
    if datatype == "BYTES":
        return np.array(list(values), dtype=object).reshape(shape)
    arr = np.array(values, dtype=np.int64 if dtype.kind in "iu" and dtype.itemsize < 8 else dtype)
    if arr.dtype != dtype:
        info = np.iinfo(dtype)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            bad = arr.min() if arr.min() < info.min else arr.max()
            raise InvalidInput(
                f"input '{name}': value {int(bad)} is out of range for {datatype} [{info.min}, {info.max}]"
            )
        arr = arr.astype(dtype)
    return arr.reshape(shape)


def to_json_data(datatype: str, arr: np.ndarray) -> list:
    if datatype == "BYTES":
        return [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in arr.ravel()]
    return arr.ravel().tolist()


def to_bytes(datatype: str, arr: np.ndarray):
    """Wire bytes of an array: a zero-copy view when the array is contiguous."""
    if datatype == "BYTES":
        return serialize_byte_tensor(arr).item() if arr.size else b""  # a 0-d object array holding bytes
    if arr.size == 0:
        return b""  # memoryview cannot cast an empty view
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return memoryview(arr).cast("B")
