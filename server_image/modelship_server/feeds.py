"""Feeds a model can answer: the inputs a user declares, checked against the model, and
feeds generated from them.

Every step that runs a model on inputs nobody sent (the optimizer's search and gate, its
capacity sweep, a serving pod's warm-up, `apply-variant`, `modelship bench`) builds them
here, from one declaration: `spec.model.inputs` on a ModelService, `--inputs JSON` on the
command line, the `modelship_inputs` parameter in config.pbtxt. So a shape or value a user
gives once is the one every step uses, and a model with a free image size or a scalar
sample rate is never fed 1-sized dimensions or random numbers where that means nothing.

A hint's `shape` is the whole shape of one request as the model's input has it, batch axis
included (as 1 for batch-first models): `[1, 3, 48, 160]` for an image, `[2, 1, 128]` for a
recurrent state with the batch on axis 1, `[]` for a scalar.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Sequence

import numpy as np

from modelship.contracts import INPUTS_UNDECLARED_PREFIX as HINTS_NEEDED_PREFIX

Feed = dict[str, np.ndarray]
FIELD = "spec.model.inputs"  # what users write; the CLI's --inputs takes the same JSON

INT_DEFAULT_RANGE = (0, 10)  # generated integers when nothing is declared (ids, class indices)


class InputsError(ValueError):
    """Declared inputs that contradict the model, or cannot be parsed; names input and values."""


class HintsNeeded(InputsError):
    """Generated inputs would be meaningless for these inputs; the message says what each needs."""


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One model input: name, numpy dtype, shape with None for dynamic dimensions."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]


@dataclasses.dataclass(frozen=True)
class InputHint:
    """What a user declares about one input (see the module docstring for `shape`)."""

    name: str
    shape: tuple[int, ...] | None = None
    min_shape: tuple[int, ...] | None = None
    max_shape: tuple[int, ...] | None = None
    value: float | None = None  # every element is this constant (a sample rate, a flag)
    range: tuple[float, float] | None = None  # generated values lie in [low, high), as numpy draws them

    def typical(self) -> tuple[int, ...] | None:
        """The shape generated feeds take: `shape`, else minShape, else maxShape."""
        return next((s for s in (self.shape, self.min_shape, self.max_shape) if s is not None), None)

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        for key, val in (("shape", self.shape), ("minShape", self.min_shape), ("maxShape", self.max_shape),
                         ("value", self.value), ("range", self.range)):
            if val is not None:
                out[key] = list(val) if isinstance(val, tuple) else val
        return out


def shape_text(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


# --- parsing -------------------------------------------------------------------------------


def _dims(entry: dict[str, Any], key: str, where: str) -> tuple[int, ...] | None:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise InputsError(f"{where}.{key} must be a list of integers; got {value!r}")
    if any(d < 1 for d in value):
        raise InputsError(f"{where}.{key} must hold dimensions of at least 1; got {value}")
    return tuple(value)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputsError(f"{where} must be a finite number; got {value!r}")
    return value


def hint_from_wire(entry: Any, where: str) -> InputHint:
    """One declared input from its JSON form (camelCase, as in spec.model.inputs)."""
    if not isinstance(entry, dict):
        raise InputsError(f"{where} must be an object with a name; got {entry!r}")
    unknown = sorted(set(entry) - {"name", "shape", "minShape", "maxShape", "value", "range"})
    if unknown:
        raise InputsError(f"{where} has unknown field(s) {unknown}; expected name, shape, minShape, maxShape, "
                          "value, range")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise InputsError(f"{where}.name must be the model input's name; got {name!r}")
    where = f"{FIELD}[{name}]" if where.startswith(FIELD) else where
    shape, low, high = (_dims(entry, k, where) for k in ("shape", "minShape", "maxShape"))
    value = None if entry.get("value") is None else _number(entry["value"], f"{where}.value")
    bounds = entry.get("range")
    span: tuple[float, float] | None = None
    if bounds is not None:
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise InputsError(f"{where}.range must be [low, high); got {bounds!r}")
        span = (_number(bounds[0], f"{where}.range[0]"), _number(bounds[1], f"{where}.range[1]"))
        if span[0] >= span[1]:
            raise InputsError(f"{where}.range must be [low, high) with low < high; got {list(span)}")
    hint = InputHint(name, shape, low, high, value, span)
    problem = hint_problem(hint)
    if problem:
        raise InputsError(f"{where}: {problem}")
    return hint


def hint_problem(hint: InputHint) -> str:
    """What is wrong with one hint on its own (no model needed), or ''; the API uses it too."""
    if hint.value is not None and hint.range is not None:
        return f"value ({hint.value:g}) and range ({list(hint.range)}) exclude each other; give one"
    if hint.shape is None and hint.value is None and hint.range is None and hint.min_shape is None \
            and hint.max_shape is None:
        return "declares nothing; give at least one of shape, minShape/maxShape, value, range"
    shape = hint.shape
    for key, bound, relation in (("minShape", hint.min_shape, "<="), ("maxShape", hint.max_shape, ">=")):
        if bound is None:
            continue
        if shape is not None and len(bound) != len(shape):
            return f"{key} {list(bound)} has {len(bound)} dimensions but shape {list(shape)} has {len(shape)}"
        if shape is not None and not all((b <= s) if relation == "<=" else (b >= s) for b, s in zip(bound, shape)):
            return f"{key} {list(bound)} must be {relation} shape {list(shape)} in every dimension"
    if hint.min_shape is not None and hint.max_shape is not None:
        if len(hint.min_shape) != len(hint.max_shape):
            return f"minShape {list(hint.min_shape)} and maxShape {list(hint.max_shape)} differ in rank"
        if any(lo > hi for lo, hi in zip(hint.min_shape, hint.max_shape)):
            return f"minShape {list(hint.min_shape)} must be <= maxShape {list(hint.max_shape)} in every dimension"
    return ""


def parse_hints(text: str | None, where: str = "--inputs") -> list[InputHint]:
    """A JSON list of declared inputs (the form of spec.model.inputs); [] for None or ''."""
    if not text:
        return []
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputsError(f"{where} is not JSON ({exc.msg} at character {exc.pos}); expected a list like "
                          '[{"name": "x", "shape": [1, 3, 224, 224]}]') from None
    if not isinstance(doc, list):
        raise InputsError(f"{where} must be a JSON list of inputs; got {type(doc).__name__}")
    hints = [hint_from_wire(entry, f"{where}[{i}]") for i, entry in enumerate(doc)]
    seen: set[str] = set()
    for hint in hints:
        if hint.name in seen:
            raise InputsError(f"{where} declares input {hint.name!r} twice")
        seen.add(hint.name)
    return hints


def hints_json(hints: Sequence[InputHint] | Sequence[dict[str, Any]]) -> str:
    """The canonical JSON text (compact, stable order) every step receives."""
    entries = [h.wire() if isinstance(h, InputHint) else h for h in hints]
    return json.dumps(entries, separators=(",", ":"), sort_keys=True)


# --- against the model --------------------------------------------------------------------


def check_hints(specs: Sequence[InputSpec], hints: Sequence[InputHint]) -> None:
    """Refuse hints that contradict the model: unknown inputs, other ranks, other fixed sizes,
    values the input's type cannot hold."""
    by_name = {s.name: s for s in specs}
    for hint in hints:
        spec = by_name.get(hint.name)
        if spec is None:
            raise InputsError(f"{FIELD} names input {hint.name!r}, which the model does not have; "
                              f"its inputs are {sorted(by_name)}")
        for key, shape in (("shape", hint.shape), ("minShape", hint.min_shape), ("maxShape", hint.max_shape)):
            if shape is None:
                continue
            if len(shape) != len(spec.shape):
                raise InputsError(f"{FIELD}[{hint.name}].{key}: expected {len(spec.shape)} dimensions like the "
                                  f"model's {shape_text(spec.shape)}, got {list(shape)}")
            for axis, (want, got) in enumerate(zip(spec.shape, shape)):
                if want is not None and want != got:
                    raise InputsError(f"{FIELD}[{hint.name}].{key}: dimension {axis} is fixed to {want} by the "
                                      f"model {shape_text(spec.shape)}, got {got} in {list(shape)}")
        if spec.dtype.kind in "OSU":
            if hint.value is not None or hint.range is not None:
                raise InputsError(f"{FIELD}[{hint.name}]: input {hint.name!r} holds strings; value and range "
                                  "apply to numbers only")
        elif spec.dtype.kind in "iub":
            for label, number in (("value", hint.value), ("range[0]", hint.range and hint.range[0]),
                                  ("range[1]", hint.range and hint.range[1])):
                if number is None:
                    continue
                if float(number) != int(number):
                    raise InputsError(f"{FIELD}[{hint.name}].{label}: input {hint.name!r} is {spec.dtype}, "
                                      f"expected an integer, got {number}")
                info = np.iinfo(spec.dtype) if spec.dtype.kind != "b" else None
                low, high = (0, 1) if info is None else (info.min, info.max)
                high += 1 if label == "range[1]" else 0  # the range's high end is excluded
                if not low <= int(number) <= high:
                    raise InputsError(f"{FIELD}[{hint.name}].{label}: {int(number)} does not fit input "
                                      f"{hint.name!r} of type {spec.dtype} ({low} .. {high})")


def missing_hints(specs: Sequence[InputSpec], hints: Sequence[InputHint]) -> list[str]:
    """One line per input that generated feeds cannot serve meaningfully without a hint: a
    dynamic dimension beyond the batch axis (it would be 1), a scalar (its value would be
    arbitrary), strings (nothing to generate). Empty: generation is fine."""
    by_name = {h.name: h for h in hints}
    lines = []
    for spec in specs:
        hint = by_name.get(spec.name)
        has_shape = hint is not None and hint.typical() is not None
        if spec.dtype.kind in "OSU":
            lines.append(f"input {spec.name!r} holds strings, which cannot be generated: give "
                         "spec.optimization.dataset with real inputs")
            continue
        if not spec.shape:
            if hint is None or (hint.value is None and hint.range is None):
                lines.append(f"input {spec.name!r} is a scalar ({spec.dtype}): a generated value would be arbitrary; "
                             f"declare it ({FIELD}: name {spec.name}, value V, e.g. a sample rate) or give "
                             "spec.optimization.dataset")
            continue
        free = [axis for axis, d in enumerate(spec.shape) if d is None and axis > 0]
        if free and not has_shape:
            example = [1 if axis == 0 and d is None else (d if d is not None else "N") for axis, d in
                       enumerate(spec.shape)]
            lines.append(f"input {spec.name!r} has dynamic dims {shape_text(spec.shape)} beyond the batch axis "
                         f"(axis {', '.join(map(str, free))}): generated inputs would make them 1; declare a typical "
                         f"shape ({FIELD}: name {spec.name}, shape {json.dumps(example).replace(chr(34), '')}) or "
                         "give spec.optimization.dataset")
    return lines


def require_generatable(specs: Sequence[InputSpec], hints: Sequence[InputHint]) -> None:
    """HintsNeeded listing every input that needs a declaration, or nothing."""
    lines = missing_hints(specs, hints)
    if lines:
        raise HintsNeeded(f"{HINTS_NEEDED_PREFIX} " + "; ".join(lines))


def feed_shape(spec: InputSpec, hint: InputHint | None, batch: int | None = None,
               which: str = "shape") -> tuple[int, ...]:
    """The shape generated for `spec`: the hint's (its `which`: shape, minShape or maxShape;
    else its typical one), else the model's with dynamic dims set to 1. `batch` replaces a dynamic axis 0."""
    declared = getattr(hint, {"shape": "shape", "minShape": "min_shape", "maxShape": "max_shape"}[which], None) \
        if hint is not None else None
    if declared is None and hint is not None:
        declared = hint.typical()
    shape = list(declared) if declared is not None else [1 if d is None else d for d in spec.shape]
    if batch is not None and spec.shape and spec.shape[0] is None:
        shape[0] = batch
    return tuple(shape)


def _values(spec: InputSpec, hint: InputHint | None, shape: tuple[int, ...], rng: np.random.Generator,
            zeros: bool) -> np.ndarray:
    if hint is not None and hint.value is not None:
        return np.full(shape, hint.value, dtype=spec.dtype)
    kind = spec.dtype.kind
    if kind in "OSU":
        return np.full(shape, "", dtype=object)
    if zeros and (hint is None or hint.range is None):
        return np.zeros(shape, dtype=spec.dtype)
    if kind == "f":
        if hint is not None and hint.range is not None:
            return rng.uniform(hint.range[0], hint.range[1], shape).astype(spec.dtype)
        return rng.standard_normal(shape).astype(spec.dtype)
    if kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    low, high = hint.range if hint is not None and hint.range is not None else INT_DEFAULT_RANGE
    return rng.integers(int(low), int(high), shape).astype(spec.dtype)


def generate(specs: Sequence[InputSpec], hints: Sequence[InputHint], count: int, seed: int = 0,
             batch: int | None = None, which: str = "shape", zeros: bool = False) -> list[Feed]:
    """`count` feeds in the declared shapes and values (else batch 1, dynamic dims 1),
    reproducible by seed. `zeros`: zero-filled where no value or range is declared (warm-up)."""
    rng = np.random.default_rng(seed)
    by_name = {h.name: h for h in hints}
    feeds = []
    for _ in range(count):
        feed: Feed = {}
        for spec in specs:
            hint = by_name.get(spec.name)
            feed[spec.name] = _values(spec, hint, feed_shape(spec, hint, batch, which), rng, zeros)
        feeds.append(feed)
    return feeds
