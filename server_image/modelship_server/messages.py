"""Protocol-independent inference request and response, as the data plane sees them.

The REST and gRPC codecs decode into these and encode from them; nothing below
the codecs knows which wire a request came from (except for the `protocol`
label that metrics carry).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(slots=True)
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray  # already in `shape` and the numpy dtype of `datatype`


@dataclasses.dataclass(slots=True)
class RequestedOutput:
    name: str
    binary: bool | None = None  # REST only: None means "the request's default"


@dataclasses.dataclass(slots=True)
class InferRequest:
    model: str
    version: str
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None = None  # None: every output
    id: str = ""
    timeout_s: float | None = None  # from the request (Triton's `timeout`, or a gRPC deadline)
    binary_output: bool = False  # REST: Triton's `binary_data_output` parameter
    protocol: str = "http"
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    trace: Any = None  # a sampled request's tracing.RequestTrace (None: tracing off or not sampled)
    # With --mirror-to only: the caller's Authorization header, sent again with the mirrored request
    # (the reference is stable of the same ModelService: the same keys and token rules let it in).
    authorization: str | None = None


@dataclasses.dataclass(slots=True)
class InferResponse:
    model: str
    version: str
    id: str
    outputs: list[Tensor]
    binary: list[bool] | None = None  # REST: per output, send as binary data
