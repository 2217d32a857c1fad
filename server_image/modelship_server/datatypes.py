"""The one table of tensor datatypes: protocol names, config enums, numpy, ONNX.

KServe v2 names (`FP32`), Triton config enums (`TYPE_FP32`) and ONNX Runtime
type strings (`tensor(float)`) all meet numpy here, so no other module keeps
its own copy of the mapping.
"""

from __future__ import annotations

import numpy as np

# protocol datatype -> numpy dtype (BYTES is an object array of bytes)
_NP: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}

_ORT: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
    "tensor(bfloat16)": "BF16",
}


DATATYPES = frozenset(_NP)


def to_numpy(datatype: str) -> np.dtype:
    """numpy dtype of a protocol datatype; KeyError if unknown."""
    return _NP[datatype]


def from_numpy(dtype: np.dtype) -> str:
    """Protocol datatype of a numpy dtype (strings and objects are BYTES); KeyError if unknown.
    The Triton warm-up step names each input's type from the model's numpy dtype."""
    if dtype.kind in "OSU":
        return "BYTES"
    return {np_dtype: name for name, np_dtype in _NP.items() if name != "BYTES"}[np.dtype(dtype)]


def from_ort(ort_type: str) -> str:
    """Protocol datatype of an ONNX Runtime type string such as `tensor(float)`."""
    try:
        return _ORT[ort_type]
    except KeyError:
        raise ValueError(f"unsupported ONNX tensor type {ort_type!r}") from None


def from_config(enum_name: str) -> str:
    """`TYPE_FP32` -> `FP32`; `TYPE_STRING` -> `BYTES` (Triton's naming)."""
    name = enum_name.removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def to_config(datatype: str) -> str:
    return "TYPE_STRING" if datatype == "BYTES" else "TYPE_" + datatype


def itemsize(datatype: str) -> int:
    """Bytes per element in the binary wire format (0 for variable-size BYTES)."""
    return 0 if datatype == "BYTES" else _NP[datatype].itemsize
