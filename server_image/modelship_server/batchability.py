"""Whether a model can batch: Triton's rule, in one pure function both images use.

A server batches by stacking requests on the first dimension of every input and splitting
every output back along the same one. That is only sound when each input and output has a
leading dimension of variable size. A recurrent state `[2, batch, 128]` (batch on axis 1),
a scalar sample rate, or an image input fixed at batch 1 break the rule; batching such a
model chops a real dimension off as if it were the batch, and every request then fails.

Triton refuses to load a config with max_batch_size > 0 for such a model, and its
auto-complete only turns batching on where the rule holds. The server's config completion
(`repository.complete_config`) and the serving pod's `fit-config` step (`fit_config`) both
decide with `batch_problem`, so the two cannot disagree.

Triton checks that the leading dimension is variable, not that the graph names the same
symbol on every tensor (exporters give outputs generated names), and neither do we.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One input or output of the model file: its full dims, -1 for a variable size."""

    name: str
    kind: str  # "input" or "output"
    dims: tuple[int, ...]


def dims_of(shape: Sequence[object]) -> tuple[int, ...]:
    """ORT or onnx dims as ints: symbolic, unknown or negative sizes are -1 (any size)."""
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


def batch_problem(tensors: Iterable[Tensor]) -> str | None:
    """None when every tensor has a variable leading dimension; else why the model cannot
    batch, naming the first tensor that breaks the rule and its dims."""
    for t in tensors:
        if not t.dims:
            return (f"{t.kind} {t.name!r} is a scalar (no dimensions), so it has no batch dimension "
                    "to stack requests on")
        if t.dims[0] != -1:
            return (f"{t.kind} {t.name!r} has dims {list(t.dims)}: its first dimension is fixed at {t.dims[0]}, "
                    "not a variable batch dimension")
    return None
