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

import functools
import math

import numpy as np

from .sketch import Histogram

PER_FEATURE_MAX = 64


_add_reduce = np.add.reduce


def is_classifier_output(datatype: str, shape: tuple[int, ...]) -> bool:
    if datatype.startswith(("INT", "UINT")):
        return True
    return datatype.startswith(("FP", "BF")) and len(shape) >= 2 and 2 <= shape[-1] <= PER_FEATURE_MAX


@functools.lru_cache(maxsize=1024)
def _position_names(name: str, f: int) -> list[str]:
    return [f"{name}[{i}]" for i in range(f)]


def tensor_features(name: str, datatype: str, arr: np.ndarray, *, batched: bool,
                    output: bool = False) -> tuple[list[str], np.ndarray]:
    """The features of one tensor of one request: their names, and a float64 matrix with one
    row per sample and one column per feature (the profiler works on whole matrices)."""
    if datatype == "BYTES":
        flat = arr.ravel()
        lengths = np.fromiter((len(x) if isinstance(x, (bytes, str)) else 0 for x in flat), dtype=np.float64,
                              count=flat.size)
        return [f"{name}.length"], lengths.reshape(-1, 1)
    if arr.ndim in (2, 3) and 0 < arr.shape[-1] <= PER_FEATURE_MAX:
        f = arr.shape[-1]
        names, cols = _position_names(name, f), arr.reshape(-1, f).astype(np.float64)
    elif arr.ndim <= 1:
        names, cols = [name], arr.astype(np.float64).reshape(-1, 1)
    else:
        rows = arr.reshape(arr.shape[0] if batched else 1, -1).astype(np.float64)
        with np.errstate(invalid="ignore"):
            cols = np.stack([rows.mean(axis=1), rows.std(axis=1)], axis=1)
        names = [f"{name}.mean", f"{name}.std"]
    if output and is_classifier_output(datatype, arr.shape):
        cls = predicted_class(arr).astype(np.float64).reshape(-1, 1)
        if cls.shape[0] == cols.shape[0]:
            names, cols = [*names, f"{name}.class"], np.concatenate([cols, cls], axis=1)
    return names, cols


def features(name: str, datatype: str, arr: np.ndarray, *, batched: bool, output: bool = False) -> dict[str, np.ndarray]:
    """The same features by name, each a 1-D array of samples."""
    names, cols = tensor_features(name, datatype, arr, batched=batched, output=output)
    out = {n: cols[:, i] for i, n in enumerate(names)}
    if output and is_classifier_output(datatype, arr.shape) and f"{name}.class" not in out:
        out[f"{name}.class"] = predicted_class(arr).astype(np.float64).ravel()
    return out


def predicted_class(arr: np.ndarray) -> np.ndarray:
    """The argmax of the last axis for scores, or the values of an integer output."""
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64)
    return arr.argmax(axis=-1)  # the method: np.argmax's dispatch costs a microsecond per request here


class ColumnStats:
    """FeatureStats for every column of a feature matrix at once (a handful of numpy calls per
    request batch, whatever the number of features)."""

    COLUMNS = ("finite", "nan", "inf", "out_of_range", "mean", "m2", "low", "high")  # an entry per column

    def __init__(self, n: int) -> None:
        self.count = 0
        self.finite = np.zeros(n, np.int64)
        self.nan = np.zeros(n, np.int64)
        self.inf = np.zeros(n, np.int64)
        self.out_of_range = np.zeros(n, np.int64)
        self.mean = np.zeros(n)
        self.m2 = np.zeros(n)
        self.low = np.full(n, -np.inf)
        self.high = np.full(n, np.inf)
        self.uniform = True  # no NaN or inf seen: every column's finite count is `count`

    def add(self, m: np.ndarray, finite: bool | None = None) -> None:
        """Add rows of the matrix; `finite` says whether it holds no NaN or inf, when the caller
        knows (the profiler checks once per tensor for the stats and the drift bins together)."""
        if finite is None:
            finite = bool(np.isfinite(m).all())
        if m.shape[0] and finite:
            self._add_finite(m)
            return
        nan = np.isnan(m)
        inf = np.isinf(m)
        ok = ~(nan | inf)
        self.uniform = self.uniform and bool(ok.all())
        self.count += m.shape[0]
        self.nan += nan.sum(axis=0)
        self.inf += inf.sum(axis=0)
        n = ok.sum(axis=0)
        if not n.any():
            return
        x = np.where(ok, m, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(n > 0, x.sum(axis=0) / np.maximum(n, 1), 0.0)
            m2 = (np.where(ok, m - mean, 0.0) ** 2).sum(axis=0)
            total = self.finite + n
            delta = mean - self.mean
            self.mean = np.where(total > 0, self.mean + delta * n / np.maximum(total, 1), 0.0)
            self.m2 = self.m2 + m2 + np.where(total > 0, delta * delta * self.finite * n / np.maximum(total, 1), 0.0)
        self.finite = total
        self.out_of_range += (ok & ((m < self.low) | (m > self.high))).sum(axis=0)

    def _add_finite(self, m: np.ndarray) -> None:
        """`add` for a matrix without NaN or inf (the usual case): the same update in fewer numpy
        calls (ufuncs called directly, skipping the `mean` / `sum` wrappers; every feature has the
        same count, so the weights are scalars)."""
        n = m.shape[0]
        mean = _add_reduce(m, axis=0)
        mean /= n
        d = m - mean
        m2 = np.einsum("ij,ij->j", d, d)
        before = self.count if self.uniform else self.finite
        total = before + n
        delta = mean - self.mean
        self.mean += delta * (n / total)
        delta *= delta
        delta *= before * n / total
        self.m2 += m2
        self.m2 += delta
        self.finite += n
        self.count += n
        below = m < self.low
        below |= m > self.high
        self.out_of_range += _add_reduce(below, axis=0)

    def column(self, i: int) -> dict:
        f = int(self.finite[i])
        return {"count": self.count, "nan": int(self.nan[i]), "inf": int(self.inf[i]),
                "out_of_range": int(self.out_of_range[i]), "mean": float(self.mean[i]),
                "variance": float(self.m2[i] / f) if f else 0.0}


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
