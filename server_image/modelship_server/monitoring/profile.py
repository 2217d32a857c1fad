"""What a tensor becomes for monitoring: named features with one value per sample, and their
running statistics (count, NaN / inf, out of the reference's range, mean / variance, histogram).

- numeric of rank 2 or 3 (a table, a sequence of vectors) whose last axis is small
  (<= PER_FEATURE_MAX): one feature per position on the last axis, `name[i]`, each row (all
  other axes flattened) a sample;
- numeric otherwise (an image, audio, a large vector) or rank <= 1: per sample (axis 0 when batched) `name.mean` and `name.std`,
  or the values themselves (`name`) for a rank-1 or scalar tensor;
- BYTES: `name.length`, the length of each element;
- a classifier's output (float, last axis 2..PER_FEATURE_MAX, or an integer output): also
  `name.class`, the predicted class, so its histogram is the predicted-class histogram.
"""

from __future__ import annotations

import math

import numpy as np

from .sketch import Histogram

PER_FEATURE_MAX = 64


def is_classifier_output(datatype: str, shape: tuple[int, ...]) -> bool:
    if datatype.startswith(("INT", "UINT")):
        return True
    return datatype.startswith(("FP", "BF")) and len(shape) >= 2 and 2 <= shape[-1] <= PER_FEATURE_MAX


def features(name: str, datatype: str, arr: np.ndarray, *, batched: bool, output: bool = False) -> dict[str, np.ndarray]:
    """The features of one tensor of one request, each a 1-D float64 array of samples."""
    if datatype == "BYTES":
        flat = arr.ravel()
        return {f"{name}.length": np.fromiter((len(x) if isinstance(x, (bytes, str)) else 0 for x in flat),
                                              dtype=np.float64, count=flat.size)}
    if datatype == "BOOL":
        arr = arr.astype(np.float64)
    out: dict[str, np.ndarray] = {}
    if arr.ndim in (2, 3) and 0 < arr.shape[-1] <= PER_FEATURE_MAX:
        rows = arr.reshape(-1, arr.shape[-1]).astype(np.float64, copy=False)
        for i in range(rows.shape[1]):
            out[f"{name}[{i}]"] = rows[:, i]
    elif arr.ndim <= 1:
        out[name] = arr.astype(np.float64, copy=False).ravel()
    else:
        rows = arr.reshape(arr.shape[0] if batched else 1, -1).astype(np.float64, copy=False)
        with np.errstate(invalid="ignore"):
            out[f"{name}.mean"] = rows.mean(axis=1)
            out[f"{name}.std"] = rows.std(axis=1)
    if output and is_classifier_output(datatype, arr.shape):
        out[f"{name}.class"] = predicted_class(arr).astype(np.float64).ravel()
    return out


def predicted_class(arr: np.ndarray) -> np.ndarray:
    """The argmax of the last axis for scores, or the values of an integer output."""
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64)
    return np.argmax(arr, axis=-1)


class FeatureStats:
    """Running statistics of one feature; `histogram` is None until the reference fixes the bins."""

    __slots__ = ("count", "finite", "nan", "inf", "out_of_range", "mean", "m2", "low", "high", "histogram")

    def __init__(self, histogram: Histogram | None = None, low: float = -math.inf, high: float = math.inf) -> None:
        self.count = 0
        self.finite = 0
        self.nan = 0
        self.inf = 0
        self.out_of_range = 0
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations (Chan et al.'s parallel update)
        self.low, self.high = low, high
        self.histogram = histogram

    def add(self, values: np.ndarray) -> None:
        v = np.asarray(values, np.float64).ravel()
        nan = np.isnan(v)
        inf = np.isinf(v)
        self.nan += int(nan.sum())
        self.inf += int(inf.sum())
        fin = v[~(nan | inf)]
        n = fin.size
        self.count += v.size
        if not n:
            return
        self.out_of_range += int(np.count_nonzero((fin < self.low) | (fin > self.high)))
        mean = float(fin.mean())
        m2 = float(((fin - mean) ** 2).sum())
        before, total = self.finite, self.finite + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * before * n / total
        self.finite = total
        if self.histogram is not None:
            self.histogram.add(fin)

    @property
    def variance(self) -> float:
        return self.m2 / self.finite if self.finite > 0 else 0.0

    def to_dict(self) -> dict:
        return {"count": self.count, "nan": self.nan, "inf": self.inf, "out_of_range": self.out_of_range,
                "mean": self.mean, "variance": self.variance}
