"""The reference profile: what drift is measured against, and its file format.

A reference is a JSON document (`SCHEMA`), written by `modelship optimize` from its dataset
(`reference-profile.json`), by `python -m modelship_server.monitoring reference`, or frozen by
the server from the first requests it samples. Per feature it holds the histogram bins and
counts, the mean / variance and the observed range (values outside it count as out of range).

    {"schema": "modelship.dev/reference-profile/v1", "model": "m", "source": "...", "samples": 1000,
     "tensors": {"x": {"role": "input", "datatype": "FP32"}},
     "features": {"x[0]": {"tensor": "x", "edges": [...], "counts": [...], "count": 1000,
                           "mean": 0.1, "variance": 1.0, "min": -3.2, "max": 3.4}}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ..datatypes import from_numpy
from .profile import features
from .sketch import DEFAULT_BINS, Histogram, edges_for

SCHEMA = "modelship.dev/reference-profile/v1"


class ReferenceInvalid(ValueError):
    """A reference file that cannot be used; the message names the file and the field."""


def from_features(values: Mapping[str, list[np.ndarray]], owners: Mapping[str, str], tensors: Mapping[str, dict], *,
                  model: str, source: str, samples: int, bins: int = DEFAULT_BINS) -> dict:
    """A reference document from collected feature values (one list of sample arrays per feature;
    `owners` names each feature's tensor)."""
    out: dict[str, dict] = {}
    for name, parts in values.items():
        v = np.concatenate([np.asarray(p, np.float64).ravel() for p in parts]) if parts else np.zeros(0)
        fin = v[np.isfinite(v)]
        h = Histogram(edges_for(fin, bins))
        h.add(fin)
        out[name] = {
            "tensor": owners[name],
            **h.to_dict(),
            "count": int(fin.size),
            "mean": float(fin.mean()) if fin.size else 0.0,
            "variance": float(fin.var()) if fin.size else 0.0,
            "min": float(fin.min()) if fin.size else 0.0,
            "max": float(fin.max()) if fin.size else 0.0,
        }
    return {"schema": SCHEMA, "model": model, "source": source, "samples": samples,
            "tensors": {k: dict(v) for k, v in tensors.items()}, "features": out}


def build_reference(samples: Iterable[Mapping[str, np.ndarray]], *, model: str = "", source: str = "",
                    datatypes: Mapping[str, str] | None = None, outputs: Iterable[str] = (), batched: bool = True,
                    bins: int = DEFAULT_BINS) -> dict:
    """The reference profile of `samples` (each a feed: tensor name -> array, a batch when `batched`).

    Tensors named in `outputs` are profiled as outputs (a classifier's predicted-class histogram
    too); datatypes default to the arrays' own.
    """
    outs = set(outputs)
    values: dict[str, list[np.ndarray]] = {}
    owners: dict[str, str] = {}
    tensors: dict[str, dict] = {}
    count = 0
    for feed in samples:
        count += 1
        for name, arr in feed.items():
            a = np.asarray(arr)
            dt = (datatypes or {}).get(name) or ("BYTES" if a.dtype == object else from_numpy(a.dtype))
            tensors.setdefault(name, {"role": "output" if name in outs else "input", "datatype": dt})
            for fname, v in features(name, dt, a, batched=batched, output=name in outs).items():
                values.setdefault(fname, []).append(v)
                owners[fname] = name
    if not count:
        raise ReferenceInvalid("no samples to build a reference from")
    return from_features(values, owners, tensors, model=model, source=source, samples=count, bins=bins)


def _fail(path: object, field: str, expected: str, got: object) -> ReferenceInvalid:
    return ReferenceInvalid(f"reference {path}: field {field!r}: expected {expected}, got {got!r}"[:600])


def parse_reference(doc: object, path: object = "<document>") -> dict:
    """Check a reference document's shape; ReferenceInvalid naming the field otherwise."""
    if not isinstance(doc, dict):
        raise _fail(path, "(document)", "a JSON object", type(doc).__name__)
    if doc.get("schema") != SCHEMA:
        raise _fail(path, "schema", repr(SCHEMA), doc.get("schema"))
    for key, kind in (("tensors", dict), ("features", dict)):
        if not isinstance(doc.get(key), kind):
            raise _fail(path, key, "an object", doc.get(key))
    for name, t in doc["tensors"].items():
        if not isinstance(t, dict) or t.get("role") not in ("input", "output") or not isinstance(t.get("datatype"), str):
            raise _fail(path, f"tensors.{name}", '{"role": "input"|"output", "datatype": "FP32"...}', t)
    for name, f in doc["features"].items():
        if not isinstance(f, dict):
            raise _fail(path, f"features.{name}", "an object", f)
        edges, counts = f.get("edges"), f.get("counts")
        if not isinstance(edges, list) or not isinstance(counts, list) or len(counts) != len(edges) + 1:
            raise _fail(path, f"features.{name}.counts", "a list one longer than edges",
                        f"{len(counts) if isinstance(counts, list) else counts} counts for "
                        f"{len(edges) if isinstance(edges, list) else edges} edges")
        if f.get("tensor") not in doc["tensors"]:
            raise _fail(path, f"features.{name}.tensor", f"one of {sorted(doc['tensors'])}", f.get("tensor"))
    return doc


def load_reference(path: Path) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ReferenceInvalid(f"reference {path}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ReferenceInvalid(f"reference {path}: not valid JSON: {exc}") from None
    return parse_reference(doc, path)


def check_against_model(ref: dict, inputs: Mapping[str, str], outputs: Mapping[str, str], path: object) -> None:
    """Every tensor of the reference must be one of the model's, with the same datatype."""
    for name, t in ref["tensors"].items():
        served = inputs if t["role"] == "input" else outputs
        if name not in served:
            raise _fail(path, f"tensors.{name}", f"one of the model's {t['role']}s {sorted(served)}", name)
        if served[name] != t["datatype"]:
            raise _fail(path, f"tensors.{name}.datatype", served[name], t["datatype"])
