"""A mergeable fixed-bin histogram: the sketch drift is measured on.

Bins are fixed by the reference (its quantiles, or its distinct values when it has few), so a
window's histogram and the reference's line up bin for bin, two windows merge by adding counts,
and memory is one small integer array per feature whatever the traffic.
"""

from __future__ import annotations

import numpy as np

DEFAULT_BINS = 20


def edges_for(values: np.ndarray, bins: int = DEFAULT_BINS) -> np.ndarray:
    """Inner bin edges for `values` (finite, 1-D): midpoints between distinct values when there
    are at most `bins` of them (a categorical feature gets one bin per value), else quantiles."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.zeros(0)
    distinct = np.unique(v)
    if distinct.size <= bins:
        return (distinct[:-1] + distinct[1:]) / 2.0 if distinct.size > 1 else distinct.copy()
    qs = np.quantile(v, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    return np.unique(qs)


class Histogram:
    """Counts of values per bin: bin i holds edges[i-1] < v <= edges[i] (open at both ends)."""

    __slots__ = ("edges", "counts")

    def __init__(self, edges: np.ndarray, counts: np.ndarray | None = None) -> None:
        self.edges = np.asarray(edges, dtype=np.float64)
        self.counts = np.zeros(self.edges.size + 1, dtype=np.int64) if counts is None else np.asarray(counts, np.int64)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def add(self, values: np.ndarray) -> None:
        """Count the finite values (NaN and inf are counted by the profile, not binned)."""
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[np.isfinite(v)]
        if v.size:
            self.counts += np.bincount(np.searchsorted(self.edges, v, side="left"), minlength=self.counts.size)

    def merge(self, other: Histogram) -> Histogram:
        if other.edges.shape != self.edges.shape or not np.array_equal(other.edges, self.edges):
            raise ValueError("histograms with different bins cannot be merged")
        return Histogram(self.edges, self.counts + other.counts)

    def to_dict(self) -> dict:
        return {"edges": self.edges.tolist(), "counts": self.counts.tolist()}
