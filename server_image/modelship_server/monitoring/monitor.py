"""Per-model monitoring state, and the hub the data plane hands every answered request to.

On the request path (event-loop thread) the hub only: gives the request an id when it has none,
remembers the prediction for feedback, and, for sampled requests, writes a copy of the inputs and
the outputs where the profiler will read them (bounded: full, dropped and counted).

Where profiling runs is MODELSHIP_MONITORING_DRAIN:
- `process` (the default): a child process at the lowest CPU priority reads the sampled requests
  from a shared-memory ring, profiles them and sends each model's `profile_state` back
  (profiler.py says why and how). `snapshot` serves the latest state it sent.
- `loop`: the requests wait in the model's pending lists; every DRAIN_S the event loop takes
  them and profiles them in slices of at most SLICE requests, spread apart (MODELSHIP_MONITORING_
  SLICE_US and _SLICE_MIN weigh a slice's p99 against its fixed CPU cost).
- `thread`: the same lists, profiled in a thread (it holds the GIL the loop needs).
Either way a drain joins each tensor's arrays, computes its features and updates statistics and
drift histograms with a few numpy calls per model (its tensors side by side, see _Fused). Drift
scores are computed when read, cached until the window slides. `benchmarks/monitoring.py cost
--drain` compares the three.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import hmac
import ipaddress
import os
import itertools
import logging
import math
import random
import threading
import time
import uuid
from typing import Any

import numpy as np

from ..settings import MonitoringSettings
from . import feedback as fb
from .capture import CaptureWriter, DirSink, S3Sink
from .drift import Score
from .drift import scores as drift_scores
from .profiler import ProfilerProcess
from .profile import ColumnStats, is_classifier_output, predicted_class, tensor_features
from .quality import QualityWindow
from .reference import ReferenceInvalid, check_against_model, from_features

log = logging.getLogger("modelship_server.monitoring")

Columns = dict[tuple[int, str], list[np.ndarray]]  # (0 input / 1 output, tensor) -> arrays, in request order

BLOCKS = 10  # a window slides by a tenth of its size
QUEUE_MAX = 8192  # sampled requests per model waiting for the drain
DRAIN_S = 0.1  # the drain runs this often and takes everything queued
HAND_OVER_S = 0.02  # with a profiler process: how often it is told how far the ring is written
SLICE = 128  # at most this many sampled requests per event-loop slice
DRAIN_MODES = ("process", "loop", "thread")


def _env_number(name: str, default: float, low: float, high: float) -> float:
    """A tuning knob from the environment; a value that is not a number in [low, high] is logged
    (naming the variable, the expected range and the value) and the default used."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not low <= value <= high:
        log.warning("%s: expected a number from %g to %g, got %r; using %g", name, low, high, raw, default)
        return default
    return value


# at least this many (when there are): a slice has a fixed cost (~50-150 us, more with cold caches),
# and each slice between requests leaves the server's caches colder. On the quiet 2-core machine
# (docs/monitoring.md, "Quiet machine, 2026-12-01 03:28") slices of 32 cost +37 us of server CPU per
# request against +25 us for slices of 128, for the same p99: whole slices of 128, spread apart.
SLICE_MIN = int(_env_number("MODELSHIP_MONITORING_SLICE_MIN", 128, 1, SLICE))
# a slice is sized from the last ones' cost to hold the loop about this long
SLICE_BUDGET_S = _env_number("MODELSHIP_MONITORING_SLICE_US", 2000, 1, 1e9) * 1e-6
PLANES_MAX = 64_000  # TensorDrift.bins: up to this many comparisons in one broadcast (faster below, slower above)
SLICE_GAP_S = 0.002  # between two slices the loop runs free up to this long: a request overlaps one slice at most
SLICE_GAP_MIN_S = 0.0005  # ... and at least this long, even when the drain is behind


def drain_mode() -> str:
    """Where sampled requests are profiled: MODELSHIP_MONITORING_DRAIN, `process` (the default: a
    child at the lowest priority, see profiler.py), `loop` (event-loop slices) or `thread`."""
    mode = os.environ.get("MODELSHIP_MONITORING_DRAIN", "") or "process"
    if mode not in DRAIN_MODES:
        log.warning("MODELSHIP_MONITORING_DRAIN=%r: expected one of %s; using 'process'", mode, ", ".join(DRAIN_MODES))
        return "process"
    return mode


def replica_key(model_path: Any) -> bytes:
    """The key a model's replicas share to tag the ids they make: MODELSHIP_MONITORING_KEY when
    set (a Secret), else a digest of the model file's size and first MiB, which every replica of
    the same model has and a client without the file does not."""
    env = os.environ.get("MODELSHIP_MONITORING_KEY")
    if env:
        return env.encode()
    digest = hashlib.sha256(b"modelship-feedback-ids")
    try:
        with open(model_path, "rb") as f:
            digest.update(str(os.fstat(f.fileno()).st_size).encode())
            digest.update(f.read(1 << 20))
    except (OSError, TypeError):
        pass
    return digest.digest()


def next_slice_size(size: int, took_s: float) -> int:
    """The next slice's size after a full slice of `size` requests took `took_s`: scaled toward
    SLICE_BUDGET_S, at most doubled or halved (one preempted slice does not collapse it), within
    SLICE_MIN..SLICE. Under budget it grows by one at least, so it settles just around the budget."""
    want = size * SLICE_BUDGET_S / max(took_s, 1e-9)
    if took_s > SLICE_BUDGET_S:
        return max(SLICE_MIN, size // 2, min(size - 1, int(want)))
    return min(SLICE, 2 * size, max(size + 1, int(want)))


def slice_gap(size: int, left: int, time_left_s: float) -> float:
    """The pause before the next slice: SLICE_GAP_S, shortened so that `left` requests in slices
    of `size` are through in `time_left_s` (what remains of DRAIN_S since the take), down to
    SLICE_GAP_MIN_S when behind: slices stay apart (back to back they add up under a request in
    flight), and what comes faster than that pace is dropped and counted at the queue."""
    return max(SLICE_GAP_MIN_S, min(SLICE_GAP_S, time_left_s * size / max(left, 1)))


class TensorDrift:
    """The drift windows of every feature of one tensor, as matrices: the last `window` samples
    binned like the reference, in BLOCKS blocks (a window slides by a tenth of its size).

    The window's counts are kept as a running sum (a block in, the oldest out: exact integers);
    the scores are computed when read (a scrape, the JSON endpoint) and cached until the window
    slides again, so a busy server does not score every feature on every slide nobody reads.
    """

    def __init__(self, names: list[str], ref_features: list[dict], window: int, psi_t: float, p_t: float) -> None:
        self.names = names
        n = len(names)
        width = max([len(f["edges"]) for f in ref_features] + [1])
        self.k = width + 1
        self.edges = np.full((n, width), np.inf)
        self.ref = np.zeros((n, self.k))
        self.valid = np.zeros((n, self.k), bool)
        for j, f in enumerate(ref_features):
            e = len(f["edges"])
            self.edges[j, :e] = f["edges"]
            self.ref[j, :e + 1] = f["counts"]
            self.valid[j, :e + 1] = True
        self.window = window
        self.block_size = max(1, window // BLOCKS)
        self.blocks: collections.deque[np.ndarray] = collections.deque(maxlen=BLOCKS)
        self.current = np.zeros((n, self.k), np.int64)
        self.current_n = 0
        self.total = np.zeros((n, self.k), np.int64)  # the sum of `blocks`
        self.slides = 0  # windows completed: the scores' cache key
        self._scores: list[Score] | None = None
        self._scored = 0
        self.psi_t, self.p_t = psi_t, p_t
        self._offsets = np.arange(n) * self.k
        self._edges_t = np.ascontiguousarray(self.edges.T)  # (width, n): one comparison per edge row

    def bins(self, m: np.ndarray, finite: bool | None = None) -> np.ndarray:
        """Each value's bin (edges[i-1] < v <= edges[i]) plus its feature's offset; n * k for
        NaN / inf (counted by the stats, not binned). The count of edges under each value, in int8
        (a bin index is at most DEFAULT_BINS-ish, far under 127): for a small matrix in one
        broadcast comparison, for a large one a comparison per edge row over the whole matrix."""
        if self.k <= 127 and m.size * self._edges_t.shape[0] <= PLANES_MAX:
            # a small matrix (a slice of a few requests): all edge rows in one broadcast comparison,
            # summed in int8 over the edge axis: two numpy calls instead of two per edge row
            planes = np.greater(m, self._edges_t[:, None, :]).view(np.int8)
            idx = np.add.reduce(planes, axis=0, dtype=np.int8).astype(np.int64)
        else:
            counts = np.zeros(m.shape, np.int8 if self.k <= 127 else np.int64)
            above = np.empty(m.shape, bool)
            step = above.view(np.int8) if counts.dtype == np.int8 else above
            for e in self._edges_t:
                np.greater(m, e, out=above)
                counts += step
            idx = counts.astype(np.int64)
        idx += self._offsets
        if finite is None or not finite:
            bad = ~np.isfinite(m)
            if bad.any():
                idx[bad] = len(self.names) * self.k
        return idx

    def add(self, m: np.ndarray, finite: bool | None = None) -> None:
        """Add rows of the feature matrix (columns in `names` order); `finite`: as ColumnStats.add."""
        n, k = len(self.names), self.k
        idx = self.bins(m, finite)
        while idx.shape[0]:  # blocks hold exactly block_size rows, so a window is exactly `window`
            take = min(idx.shape[0], self.block_size - self.current_n)
            part, idx = idx[:take], idx[take:]
            self.current += np.bincount(part.ravel(), minlength=n * k + 1)[:n * k].reshape(n, k)
            self.current_n += take
            if self.current_n >= self.block_size:
                if len(self.blocks) == BLOCKS:
                    self.total -= self.blocks[0]
                self.blocks.append(self.current)
                self.total += self.current
                self.current = np.zeros((n, k), np.int64)
                self.current_n = 0
                if len(self.blocks) == BLOCKS:
                    self.slides += 1

    @property
    def scores(self) -> list[Score] | None:
        """The latest full window's scores (None before the first), computed on first read."""
        if self.slides == 0:
            return None
        if self._scored != self.slides:
            self._scores = drift_scores(self.ref, self.total, self.valid, self.psi_t, self.p_t)
            self._scored = self.slides
        return self._scores

    @property
    def samples(self) -> int:
        return len(self.blocks) * self.block_size + self.current_n


class _StatsPart:
    """One tensor's columns of a fused ColumnStats, read like its own ColumnStats."""

    def __init__(self, whole: ColumnStats, lo: int, hi: int) -> None:
        self.whole, self.lo, self.hi = whole, lo, hi

    @property
    def count(self) -> int:
        return self.whole.count

    def column(self, i: int) -> dict:
        return self.whole.column(self.lo + i)

    def split(self) -> ColumnStats:
        w, lo, hi = self.whole, self.lo, self.hi
        st = ColumnStats(hi - lo)
        st.count, st.uniform = w.count, w.uniform
        for a in ColumnStats.COLUMNS:
            setattr(st, a, getattr(w, a)[lo:hi].copy())
        return st


class _DriftPart:
    """One tensor's rows of a fused TensorDrift, read like its own TensorDrift."""

    def __init__(self, whole: TensorDrift, lo: int, hi: int, names: list[str], ref_features: list[dict]) -> None:
        self.whole, self.lo, self.hi, self.names, self.ref_features = whole, lo, hi, names, ref_features

    @property
    def scores(self) -> list[Score] | None:
        s = self.whole.scores
        return None if s is None else s[self.lo:self.hi]

    @property
    def samples(self) -> int:
        return self.whole.samples

    @property
    def slides(self) -> int:
        return self.whole.slides

    def split(self) -> TensorDrift:
        w, lo, hi = self.whole, self.lo, self.hi
        d = TensorDrift(self.names, self.ref_features, w.window, w.psi_t, w.p_t)
        k = d.k  # the fused rows are padded to the widest tensor's bins; the padding never counts
        d.current = w.current[lo:hi, :k].copy()
        d.total = w.total[lo:hi, :k].copy()
        d.blocks.extend(b[lo:hi, :k].copy() for b in w.blocks)
        d.current_n, d.slides = w.current_n, w.slides
        return d


class _Fused:
    """A model's tensors profiled as one feature matrix (their matrices side by side): one set of
    numpy calls per slice for the statistics and one for the drift bins, not one per tensor (each
    set has a fixed cost of some 10-25 us, which small slices pay often). Used while every slice
    gives every tensor the same number of rows (a batching model's samples); the first slice that
    does not splits it back into per-tensor state, carried over exactly (`split`)."""

    def __init__(self, tensors: list[str], stats: ColumnStats, drift: TensorDrift,
                 parts: dict[str, tuple[_StatsPart, _DriftPart]]) -> None:
        self.tensors, self.stats, self.drift, self.parts = tensors, stats, drift, parts

    @staticmethod
    def of(stats: dict[str, Any], drift: dict[str, Any], ref: dict, cfg: MonitoringSettings) -> _Fused | None:
        """Fuse fresh drift windows (just made from the reference) with their tensors' statistics,
        replacing both in `stats` and `drift` by views (a tensor without a reference stays apart);
        None (nothing changed) when the reference has one tensor or their statistics differ in count."""
        tensors = list(drift)
        if len(tensors) < 2 or any(t not in stats for t in tensors):
            return None
        parts = [stats[t] for t in tensors]
        if not all(isinstance(p, ColumnStats) for p in parts) or len({p.count for p in parts}) != 1:
            return None
        if any(not isinstance(drift[t], TensorDrift) or drift[t].samples for t in tensors):
            return None
        whole = ColumnStats(sum(len(p.mean) for p in parts))
        whole.count, whole.uniform = parts[0].count, all(p.uniform for p in parts)
        for a in ColumnStats.COLUMNS:
            setattr(whole, a, np.concatenate([getattr(p, a) for p in parts]))
        names = [n for t in tensors for n in drift[t].names]
        ref_features = [ref["features"][n] for n in names]
        d = TensorDrift(names, ref_features, cfg.window, cfg.psi_threshold, cfg.p_value)
        views: dict[str, tuple[_StatsPart, _DriftPart]] = {}
        lo = 0
        for t in tensors:
            tn = drift[t].names
            hi = lo + len(tn)
            views[t] = (_StatsPart(whole, lo, hi), _DriftPart(d, lo, hi, tn, [ref["features"][n] for n in tn]))
            stats[t], drift[t] = views[t]
            lo = hi
        return _Fused(tensors, whole, d, views)

    def add(self, merged: dict[str, np.ndarray]) -> bool:
        """Add the fused tensors' matrices of one slice side by side (a tensor without a reference
        is not among them: the caller profiles it apart); False (nothing added) when they do not
        line up."""
        ms = []
        for t in self.tensors:
            m = merged.get(t)
            if m is None or m.shape[1] != self.parts[t][0].hi - self.parts[t][0].lo:
                return False
            ms.append(m)
        if len({m.shape[0] for m in ms}) != 1:
            return False
        m = np.concatenate(ms, axis=1)
        finite = bool(np.isfinite(m).all())
        self.stats.add(m, finite)
        self.drift.add(m, finite)
        return True

    def split(self) -> dict[str, tuple[ColumnStats, TensorDrift]]:
        return {t: (s.split(), d.split()) for t, (s, d) in self.parts.items()}


class ModelMonitor:
    """Everything monitored about one model (all its versions together)."""

    fuse = True  # profile the tensors as one matrix where they line up (_Fused); False: tensor by tensor

    def __init__(self, name: str, inputs: dict[str, str], outputs: dict[str, str], batched: bool,
                 cfg: MonitoringSettings, reference: dict | None, reference_path: str = "") -> None:
        self.name = name
        self.inputs, self.outputs, self.batched = inputs, outputs, batched
        self.cfg = cfg
        self.lock = threading.Lock()
        self.reference: dict | None = None
        self.reference_source = ""
        self.collected = 0
        self.collecting: dict[str, list[np.ndarray]] = {}
        self.names: dict[str, list[str]] = {}  # tensor -> its feature names, as first seen
        self.stats: dict[str, ColumnStats | _StatsPart] = {}  # views of self.fused's while fused
        self.drift: dict[str, TensorDrift | _DriftPart] = {}
        self.fused: _Fused | None = None  # every tensor's stats and drift as one matrix (see _Fused)
        self.profiled = 0
        self.dropped = 0
        self.pending: Columns = {}  # sampled requests' arrays by (role, tensor), waiting for the drain
        self.pending_n = 0
        self.store = fb.PredictionStore(cfg.feedback_ttl_s, cfg.feedback_max_entries)
        self.quality_output = next(iter(outputs), "")
        self.quality: QualityWindow | None = None
        self.feedback_counts = {o: 0 for o in (fb.JOINED, fb.UNKNOWN, fb.EXPIRED, fb.INVALID)}
        self.remote: dict | None = None  # the profiler process's latest `profile_state`, when it profiles
        if reference is not None:
            self._use_reference(reference, f"file {reference_path}" if reference_path else "given")

    @property
    def windows(self) -> dict[str, Any]:
        """Per feature: an object with `score` (the latest Score or None) and `samples`."""
        out: dict[str, Any] = {}
        for d in self.drift.values():
            for j, fname in enumerate(d.names):
                out[fname] = _FeatureView(d.scores[j] if d.scores else None, d.samples)
        return out

    # -- profiling (worker thread) --------------------------------------------

    def _use_reference(self, ref: dict, source: str) -> None:
        self.reference = ref
        self.reference_source = source
        self.collecting = {}
        by_tensor: dict[str, list[str]] = {}
        for fname, f in ref["features"].items():
            by_tensor.setdefault(f["tensor"], []).append(fname)
        for tensor, fnames in by_tensor.items():
            names = self.names.setdefault(tensor, fnames)
            if names != fnames:  # the reference's order is the one drift uses
                self.names[tensor] = names = fnames
                self.stats.pop(tensor, None)
            self.drift[tensor] = TensorDrift(names, [ref["features"][n] for n in names], self.cfg.window,
                                             self.cfg.psi_threshold, self.cfg.p_value)
            st = self.stats.get(tensor)
            if not isinstance(st, ColumnStats):  # none yet (a reference is used once, before any fusing)
                st = self.stats[tensor] = ColumnStats(len(names))
            st.low = np.array([float(ref["features"][n].get("min", -np.inf)) for n in names])
            st.high = np.array([float(ref["features"][n].get("max", np.inf)) for n in names])
        self.fused = _Fused.of(self.stats, self.drift, ref, self.cfg) if self.fuse else None

    def observe(self, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        self.observe_many([(inputs, outputs)])

    def observe_many(self, batch: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]) -> None:
        """Profile sampled requests given as (inputs, outputs) pairs."""
        columns: Columns = {}
        for inputs, outputs in batch:
            for t, a in inputs.items():
                columns.setdefault((0, t), []).append(a)
            for t, a in outputs.items():
                columns.setdefault((1, t), []).append(a)
        self.profile(columns, len(batch))

    def offer(self, inputs: list, outputs: dict[str, np.ndarray]) -> bool:
        """On the request path: queue one sampled request's arrays by tensor (the inputs copied, not
        views of the request body, which they would keep alive until the drain); False when full."""
        if self.pending_n >= QUEUE_MAX:
            self.dropped += 1
            return False
        cols = self.pending
        for t in inputs:
            lst = cols.get((0, t.name))
            if lst is None:
                lst = cols[(0, t.name)] = []
            lst.append(np.array(t.data))
        for name, arr in outputs.items():
            lst = cols.get((1, name))
            if lst is None:
                lst = cols[(1, name)] = []
            lst.append(arr)
        self.pending_n += 1
        return True

    def take_pending(self) -> tuple[Columns, int]:
        cols, n = self.pending, self.pending_n
        self.pending, self.pending_n = {}, 0
        return cols, n

    def profile(self, columns: Columns, count: int) -> None:
        """Profile `count` sampled requests, their arrays listed by (role, tensor) in request
        order: each tensor's arrays are joined and its features computed once, so a drain costs a
        few numpy calls per tensor, not Python work per request or per feature."""
        with self.lock:
            if self.reference is None:
                take = min(count, self.cfg.reference_size - self.collected)
                merged = self._merge({k: v[:take] for k, v in columns.items()})
                for t, m in merged.items():
                    self.collecting.setdefault(t, []).append(m)
                self._stats(merged)
                self.collected += take
                self.profiled += take
                if self.collected >= self.cfg.reference_size:
                    self._freeze()
                if take >= count:
                    return
                columns, count = {k: v[take:] for k, v in columns.items()}, count - take
            merged = self._merge(columns)
            self.profiled += count
            self._stats(merged, self.drift)

    def _merge(self, columns: Columns) -> dict[str, np.ndarray]:
        """Tensor -> feature matrix of all the listed arrays. A batching model's requests are one
        batch along axis 0, so its arrays are joined first and the features computed once; a
        tensor whose shapes differ between requests (or a model that does not batch) goes array
        by array."""
        parts: dict[str, list[np.ndarray]] = {}
        for (role, tname), arrs in columns.items():
            if not arrs:
                continue
            joined: list[np.ndarray] = arrs
            if self.batched and len(arrs) > 1 and arrs[0].ndim >= 1:
                try:
                    joined = [np.concatenate(arrs)]
                except ValueError:  # shapes differ past axis 0
                    pass
            for arr in joined:
                f = self._features_of(role, tname, arr)
                if f is not None:
                    parts.setdefault(tname, []).append(f)
        return {t: (ms[0] if len(ms) == 1 else np.concatenate(ms)) for t, ms in parts.items()}

    def _features_of(self, role: int, tname: str, arr: np.ndarray) -> np.ndarray | None:
        """One array's feature matrix in the order of self.names[tname]; None when the tensor is
        not the model's or its features do not match the ones first seen (its shape changed)."""
        dt = (self.outputs if role else self.inputs).get(tname)
        if dt is None:
            return None
        names, m = tensor_features(tname, dt, arr, batched=self.batched, output=role == 1)
        known = self.names.setdefault(tname, names)
        if known == names:
            return m
        if set(known) <= set(names):
            return m[:, [names.index(n) for n in known]]
        return None

    def _stats(self, merged: dict[str, np.ndarray], drift: dict[str, TensorDrift | _DriftPart] | None = None) -> None:
        """Statistics (and, given `drift`, the drift windows) of each tensor's matrix; whether it
        is all finite is checked once for both."""
        fused = self.fused
        if fused is not None and drift:
            if fused.add(merged):
                if len(merged) == len(fused.tensors):
                    return
                merged = {t: m for t, m in merged.items() if t not in fused.parts}
            else:  # a tensor missing or rows that differ: apart from now on, state carried over
                self.fused = None
                for t, (own_stats, own_drift) in fused.split().items():
                    self.stats[t], self.drift[t] = own_stats, own_drift
        for t, m in merged.items():
            st = self.stats.get(t)
            if not isinstance(st, ColumnStats):  # none yet (views exist only while fused)
                st = self.stats[t] = ColumnStats(m.shape[1])
            finite = bool(np.isfinite(m).all())
            st.add(m, finite)
            d = drift.get(t) if drift else None
            if isinstance(d, TensorDrift):
                d.add(m, finite)

    def _freeze(self) -> None:
        values: dict[str, list[np.ndarray]] = {}
        owners: dict[str, str] = {}
        for t, ms in self.collecting.items():
            m = np.concatenate(ms)
            for j, fname in enumerate(self.names[t]):
                values[fname] = [m[:, j]]
                owners[fname] = t
        tensors = {t: {"role": "input", "datatype": d} for t, d in self.inputs.items() if t in self.collecting}
        tensors |= {t: {"role": "output", "datatype": d} for t, d in self.outputs.items() if t in self.collecting}
        source = f"frozen: the first {self.collected} sampled requests"
        ref = from_features(values, owners, tensors, model=self.name, source=source, samples=self.collected)
        self._use_reference(ref, source)
        log.info("model %s: no --monitoring-reference given; froze the first %d sampled requests as the "
                 "drift reference (%d features)", self.name, self.collected, len(ref["features"]))

    # -- feedback (event-loop thread) -----------------------------------------

    def remember(self, request_id: str, outputs: dict[str, np.ndarray]) -> None:
        arr = outputs.get(self.quality_output)
        if arr is None or not request_id:
            return
        if self.quality is None:
            kind = "classification" if is_classifier_output(self.outputs[self.quality_output], arr.shape) else "regression"
            self.quality = QualityWindow(self.cfg.window, kind)
        pred = predicted_class(arr).ravel() if self.quality.kind == "classification" else arr.astype(np.float64).ravel()
        self.store.put(request_id, pred)

    def feedback(self, item: Any) -> tuple[str, str]:
        """Join one `{"id": ..., "label": ...}`: (outcome, message)."""
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or "label" not in item:
            self.feedback_counts[fb.INVALID] += 1
            return fb.INVALID, f'expected {{"id": "<request id>", "label": ...}}, got {_short(item)}'
        rid = item["id"]
        outcome, pred = self.store.lookup(rid)
        if pred is None:
            self.feedback_counts[outcome] += 1
            why = (f"the prediction of request {rid!r} is older than --feedback-ttl or was evicted"
                   if outcome == fb.EXPIRED else
                   f"no prediction of model {self.name!r} with request id {rid!r} is held here")
            return outcome, why
        assert self.quality is not None
        labels, why = _labels(item["label"], pred.size, self.quality.kind)
        if labels is None:
            self.feedback_counts[fb.INVALID] += 1
            return fb.INVALID, f"request {rid!r}: label {why}"
        self.store.consume(rid)
        self.quality.add(pred, labels)
        self.feedback_counts[fb.JOINED] += 1
        return fb.JOINED, ""

    # -- reading (any thread) -------------------------------------------------

    def profile_state(self) -> dict:
        """What profiling knows: the reference, the drift of every feature, requests profiled.
        A profiler process sends this back (`remote`); `snapshot` adds what the loop keeps."""
        with self.lock:
            ref = self.reference
            feats: dict[str, dict] = {}
            for tensor, st in self.stats.items():
                d = self.drift.get(tensor)
                for j, fname in enumerate(self.names.get(tensor, [])):
                    entry: dict[str, Any] = {"tensor": tensor, **st.column(j)}
                    if d is not None:
                        entry["window_samples"] = d.samples
                        if d.scores is not None:
                            sc = d.scores[j]
                            entry |= {"psi": sc.psi, "ks": sc.ks, "p_value": sc.p_value, "drifted": sc.drifted}
                    feats[fname] = entry
            state = {"state": "loaded" if ref and not self.reference_source.startswith("frozen") else
                     "frozen" if ref else "collecting",
                     "source": self.reference_source or
                     f"collecting: {self.collected} of the first {self.cfg.reference_size} sampled requests",
                     "samples": ref["samples"] if ref else 0}
            profiled = self.profiled
        drifted = sorted((f for f, e in feats.items() if e.get("drifted")), key=lambda f: -feats[f]["psi"])
        return {"reference": state, "drift": {"drifted": drifted, "features": feats}, "profiled": profiled}

    def snapshot(self) -> dict:
        part = self.remote or self.profile_state()
        q = self.quality
        return {
            "model": self.name,
            "reference": part["reference"],
            "window": {"samples": self.cfg.window, "psi_threshold": self.cfg.psi_threshold, "p_value": self.cfg.p_value},
            "sampling": {"rate": self.cfg.sample_rate, "profiled": part["profiled"], "dropped": self.dropped},
            "drift": part["drift"],
            "quality": {"output": self.quality_output, "kind": q.kind if q else None, "window": self.cfg.window,
                        "labels": len(q.pairs) if q else 0, "metrics": q.metrics() if q else {}},
            "feedback": {"stored": len(self.store), "ttl_s": self.cfg.feedback_ttl_s,
                         "max_entries": self.cfg.feedback_max_entries, "outcomes": dict(self.feedback_counts)},
        }


def _short(x: object) -> str:
    s = repr(x)
    return s if len(s) <= 120 else s[:117] + "..."


def _labels(label: Any, n: int, kind: str) -> tuple[np.ndarray | None, str]:
    """The label as an array of `n` values of the right kind, or (None, why)."""
    values = label if isinstance(label, list) else [label]
    if len(values) != n:
        return None, f"must hold {n} value(s), one per predicted sample, got {len(values)}: {_short(label)}"
    if kind == "classification":
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return None, f"must be a class index (an integer) per sample for a classifier, got {_short(label)}"
        return np.asarray(values, np.int64), ""
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return None, f"must be a number per sample for a regression output, got {_short(label)}"
    return np.asarray(values, np.float64), ""


@dataclasses.dataclass(frozen=True)
class _FeatureView:
    score: Score | None
    samples: int


class Monitoring:
    """The server's monitoring: monitors by model name, the drain (event-loop slices), the capture writer.

    Without a loop nothing drains by itself: the caller calls `drain()` (the in-process benchmark)."""

    def __init__(self, cfg: MonitoringSettings, reference: dict | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.cfg = cfg
        self.reference = reference
        self.monitors: dict[str, ModelMonitor] = {}
        self._ids = itertools.count(1)
        self._boot = uuid.uuid4().hex[:12]
        self._keys: dict[str, bytes] = {}
        self._suffix: dict[str, str] = {}
        self._served: dict[str, Any] = {}
        self._random = random.random
        self.capture: CaptureWriter | None = None
        if cfg.capture_dir or cfg.capture_uri:
            sink: DirSink | S3Sink = DirSink(cfg.capture_dir) if cfg.capture_dir else S3Sink(cfg.capture_uri)
            self.capture = CaptureWriter(sink, batch_size=cfg.capture_batch_size)
        self._stop = threading.Event()
        self._loop = loop
        # (monitor, its pending arrays, requests in them, the first not yet profiled): a slice takes the
        # next few by position, so it costs the same however long the backlog (no copy of the rest)
        self._backlog: collections.deque[tuple[ModelMonitor, Columns, int, int]] = collections.deque()
        self._size: dict[str, int] = {}  # model -> requests in its next slice (sized to SLICE_BUDGET_S)
        self._took_at = 0.0  # loop time of the last take: its backlog is paced to be through by DRAIN_S later
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._thread: threading.Thread | None = None
        self._process: ProfilerProcess | None = None
        self.drain_mode = drain_mode()
        if loop is not None and self.drain_mode == "thread":
            self._thread = threading.Thread(target=self._run, name="profiler", daemon=True)
            self._thread.start()
        elif loop is not None:
            if self.drain_mode == "process":
                try:
                    self._process = ProfilerProcess(loop, cfg, self._on_state)
                except OSError as exc:  # no memfd or no subprocess here (a seccomp profile, a limit)
                    log.warning("monitoring: cannot start the profiler process (%s); profiling on the event loop "
                                "instead (MODELSHIP_MONITORING_DRAIN=loop)", exc)
                    self.drain_mode = "loop"
            self._timer = loop.call_later(HAND_OVER_S if self._process else DRAIN_S, self._tick)

    @property
    def ready(self) -> bool:
        """Whether sampled requests can be taken: the profiler process, if any, has started (or
        given up: serving never waits on monitoring)."""
        return self._process is None or self._process.is_ready()

    def new_id(self, model: Any) -> str:
        """`<boot>-<n>`, or with a peer address `<boot>-<n>@<host:port>.<tag>` (see `forward_target`)."""
        if not self.cfg.peer_address:
            return f"{self._boot}-{next(self._ids)}"
        suffix = self._suffix.get(model.name)
        if suffix is None:
            suffix = self._suffix[model.name] = f"@{self.cfg.peer_address}.{self._tag(model.name, self.cfg.peer_address)}"
        return f"{self._boot}-{next(self._ids)}{suffix}"

    def _tag(self, name: str, address: str) -> str:
        """Binds a replica's address to the model: a client can reuse a tag it was given, which
        only points back at that same replica, but cannot make one for another address."""
        key = self._keys.get(name)
        if key is None:
            m = self._served.get(name)
            key = self._keys[name] = replica_key(m.model_path if m is not None else None)
        return hmac.new(key, f"{name}\0{address}".encode(), hashlib.sha256).hexdigest()[:16]

    def forward_target(self, name: str, request_id: object) -> str | None:
        """The replica that made an id this one does not hold, or None.

        Forwarded only when the id's tag checks out under the key the model's replicas share
        (so a client cannot make a server POST to an address of its choosing), and only to an
        IP-literal address.
        """
        if not self.cfg.peer_address or not isinstance(request_id, str) or "@" not in request_id:
            return None
        body, _, tag = request_id.rpartition(".")
        target = body.rsplit("@", 1)[1]
        if target == self.cfg.peer_address or not hmac.compare_digest(tag, self._tag(name, target)):
            return None
        host = target.rpartition(":")[0].strip("[]")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return None
        return target

    def forwarded(self, model: Any, count: int) -> None:
        """`count` unknown ids another replica answered: that replica counts (and captures) them."""
        self.monitors[model.name].feedback_counts[fb.UNKNOWN] -= count

    def monitor_for(self, model: Any) -> ModelMonitor:
        """The model's monitor, made on first use; ReferenceInvalid if the reference does not fit it."""
        mon = self.monitors.get(model.name)
        if mon is None:
            self._served[model.name] = model
            inputs = {t.name: t.datatype for t in model.inputs}
            outputs = {t.name: t.datatype for t in model.outputs}
            ref = self.reference
            if ref is not None and ref.get("model") not in ("", None, model.name):
                ref = None
            if ref is not None:
                check_against_model(ref, inputs, outputs, self.cfg.reference)
            batched, ref_path = model.policy.max_batch_size > 0, str(self.cfg.reference or "")
            mon = self.monitors[model.name] = ModelMonitor(model.name, inputs, outputs, batched, self.cfg, ref, ref_path)
            if self._process is not None:
                self._process.add_model(model.name, inputs, outputs, batched, ref, ref_path)
        return mon

    def attach(self, models: list) -> None:
        """Make every served model's monitor now, so a reference that does not fit fails the start."""
        for m in models:
            self.monitor_for(m)
        ref = self.reference
        if ref is not None and ref.get("model") and ref["model"] not in self.monitors:
            raise ReferenceInvalid(f"reference {self.cfg.reference}: field 'model': expected one of the served models "
                                 f"{sorted(self.monitors)}, got {ref['model']!r}")

    def after_infer(self, model: Any, request: Any, outputs: dict[str, np.ndarray]) -> None:
        """On the event-loop thread, after a successful inference; never raises."""
        try:
            mon = self.monitors.get(model.name) or self.monitor_for(model)
            mon.remember(request.id, outputs)
            rnd = self._random
            if self.cfg.sample_rate >= 1.0 or rnd() < self.cfg.sample_rate:
                # both offers copy the inputs: a view of the decoded body would keep the request's whole
                # body alive until the drain (up to 100 ms), and serving slowed by a tenth with those pinned.
                process = self._process
                if process is None:
                    mon.offer(request.inputs, outputs)
                elif not process.offer(model.name, request.inputs, outputs):
                    mon.dropped += 1
            cap = self.capture
            if cap is not None and (self.cfg.capture_sample_rate >= 1.0 or rnd() < self.cfg.capture_sample_rate):
                cap.offer({"type": "inference", "id": request.id, "time": time.time(), "model": model.name,
                           "version": model.version,
                           "inputs": {t.name: (t.datatype, t.data) for t in request.inputs},
                           "outputs": {n: (model.output_specs[n].datatype, a) for n, a in outputs.items()}})
        except Exception:  # noqa: BLE001 - monitoring must never fail a request
            log.exception("model %s: monitoring failed on a request", model.name)

    def feedback(self, model: Any, items: list) -> list[dict]:
        mon = self.monitors.get(model.name) or self.monitor_for(model)
        results = []
        for item in items:
            outcome, why = mon.feedback(item)
            rid = item.get("id") if isinstance(item, dict) else None
            results.append({"id": rid, "outcome": outcome, **({"error": why} if why else {})})
            if outcome == fb.JOINED and self.capture is not None:
                self.capture.offer({"type": "feedback", "id": rid, "time": time.time(), "model": model.name,
                                    "version": model.version, "label": item["label"]})
        return results

    def snapshot(self, model: Any) -> dict:
        mon = self.monitors.get(model.name) or self.monitor_for(model)
        doc = mon.snapshot()
        cap = self.capture
        doc["capture"] = None if cap is None else {
            "sink": cap.sink.describe(), "sample_rate": self.cfg.capture_sample_rate,
            "batch_size": cap.batch_size, "written": cap.written[model.name], "dropped": cap.dropped[model.name],
            "queued": len(cap.queue), "last_error": cap.last_error}
        return doc

    def drain(self) -> int:
        """Profile everything pending now, on the caller's thread; how many requests it took."""
        done = 0
        for mon in list(self.monitors.values()):
            cols, n = mon.take_pending()
            if n:
                self._profile(mon, cols, n)
                done += n
        return done

    @staticmethod
    def _profile(mon: ModelMonitor, cols: Columns, n: int) -> None:
        try:
            mon.profile(cols, n)
        except Exception:  # noqa: BLE001 - one odd request must not stop profiling
            log.exception("model %s: profiling failed on a batch of %d request(s)", mon.name, n)

    def _on_state(self, name: str, state: dict) -> None:
        mon = self.monitors.get(name)
        if mon is not None:
            mon.remote = state

    def _tick(self) -> None:
        """On the event loop: every HAND_OVER_S tell the profiler process how far the ring is
        written; without one, every DRAIN_S take what is pending and profile it in slices."""
        if self._loop is not None:
            self._took_at = self._loop.time()
        process = self._process
        if process is not None:
            process.publish()
            if self._loop is not None and not self._stop.is_set():
                self._timer = self._loop.call_later(HAND_OVER_S, self._tick)
            return
        for mon in list(self.monitors.values()):
            cols, n = mon.take_pending()
            if n:
                self._backlog.append((mon, cols, n, 0))
        self._slice()

    def _slice(self) -> None:
        """Profile one slice, then give the loop back (`slice_gap`, up to SLICE_GAP_S) before the next.

        A slice holds the loop about SLICE_BUDGET_S: its size follows what the model's last full
        slice took (`next_slice_size`). Back to back, the slices of one tick added up under a
        request that spans several loop passes (p99 +0.67 ms with ~6 slices of 0.3 ms); spread, a
        request meets one short slice at most. The next tick waits for the backlog to empty, so
        what arrives faster than the drain fills the bounded queue and is dropped and counted,
        never piled up here."""
        if self._stop.is_set() or self._loop is None:
            return
        try:
            if self._backlog:
                mon, pending, total, first = self._backlog.popleft()
                size = self._size.get(mon.name, SLICE_MIN)
                n = min(size, total - first)
                if first + n < total:
                    self._backlog.appendleft((mon, pending, total, first + n))
                cols = {k: v[first:first + n] for k, v in pending.items()} if n < total else pending
                t0 = time.perf_counter()
                self._profile(mon, cols, n)
                if n == size:
                    self._size[mon.name] = next_slice_size(size, time.perf_counter() - t0)
        finally:  # whatever happened, the next slice or tick is scheduled: profiling never stops
            if self._backlog:
                nxt, _, total, first = self._backlog[0]
                gap = slice_gap(self._size.get(nxt.name, SLICE_MIN), total - first,
                                self._took_at + DRAIN_S - self._loop.time())
                self._timer = self._loop.call_later(gap, self._slice)
            else:
                self._timer = self._loop.call_later(DRAIN_S, self._tick)

    def _run(self) -> None:
        while not self._stop.wait(DRAIN_S):
            self.drain()

    def close(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.cancel()
        if self._thread is not None:
            self._thread.join(5)
        if self._process is not None:
            self._process.close()
        if self.capture is not None:
            self.capture.close()
