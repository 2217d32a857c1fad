"""A decoded request checked against the model's metadata, before it can reach a queue.

What the codecs cannot know (they never see the model) is checked here: input
names, datatypes, ranks, fixed dimensions, batch size, requested outputs.
Each message names the tensor and gives the expected and the actual value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .errors import InvalidInput
from .messages import InferRequest

if TYPE_CHECKING:
    from .registry import ServedModel


def check_request(request: InferRequest, model: "ServedModel") -> tuple[dict[str, np.ndarray], int]:
    """The ORT feed dict and the request's batch size (1 for models that do not batch)."""
    specs = model.input_specs
    mbs = model.policy.max_batch_size
    feeds: dict[str, np.ndarray] = {}
    batch = None
    batch_from = ""
    for t in request.inputs:
        spec = specs.get(t.name)
        if spec is None:
            raise InvalidInput(
                f"unknown input '{t.name}' for model '{model.name}'; expected inputs: {sorted(specs)}"
            )
        if t.name in feeds:
            raise InvalidInput(f"input '{t.name}' is given more than once")
        if t.datatype != spec.datatype:
            raise InvalidInput(
                f"input '{t.name}': expected datatype {spec.datatype}, got {t.datatype}"
            )
        shape = t.shape
        expected = spec.shape(mbs)
        if len(shape) != len(expected):
            raise InvalidInput(
                f"input '{t.name}': expected shape {expected} (rank {len(expected)}), "
                f"got {shape} (rank {len(shape)})"
            )
        offset = 1 if mbs > 0 else 0
        for i, (want, got) in enumerate(zip(spec.dims, shape[offset:])):
            if want != -1 and want != got:
                raise InvalidInput(
                    f"input '{t.name}': dimension {i + offset} expected {want}, got {got} "
                    f"(expected shape {expected}, got {shape})"
                )
        if mbs > 0:
            b = shape[0]
            if b < 1:
                raise InvalidInput(f"input '{t.name}': batch size must be at least 1, got {b}")
            if b > mbs:
                raise InvalidInput(
                    f"input '{t.name}': batch size {b} exceeds the model's max_batch_size {mbs}"
                )
            if batch is None:
                batch, batch_from = b, t.name
            elif b != batch:
                raise InvalidInput(
                    f"input '{t.name}': batch size {b} differs from input '{batch_from}' batch size {batch}"
                )
        feeds[t.name] = _as_text(t.name, t.data) if spec.datatype == "BYTES" else t.data
    missing = [n for n, s in specs.items() if n not in feeds and not s.optional]
    if missing:
        raise InvalidInput(
            f"model '{model.name}' needs inputs {missing}; the request has {sorted(feeds)}"
        )
    if request.outputs is not None:
        seen = set()
        for o in request.outputs:
            if o.name not in model.output_specs:
                raise InvalidInput(
                    f"unknown output '{o.name}' for model '{model.name}'; expected outputs: "
                    f"{sorted(model.output_specs)}"
                )
            if o.name in seen:
                raise InvalidInput(f"output '{o.name}' is requested more than once")
            seen.add(o.name)
    return feeds, batch or 1


def _as_text(name: str, data: np.ndarray) -> np.ndarray:
    """ONNX Runtime's string tensors hold text: decode BYTES here, where a bad element is the client's error."""
    out = np.empty(data.shape, dtype=object)
    flat = out.reshape(-1)
    for i, v in enumerate(data.reshape(-1)):
        if isinstance(v, bytes):
            try:
                v = v.decode()
            except UnicodeDecodeError as exc:
                raise InvalidInput(
                    f"input '{name}': element {i} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                    "the model's string input takes UTF-8"
                ) from None
        flat[i] = v
    return out
