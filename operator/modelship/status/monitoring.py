"""What monitoring tells the user: the DataDrift, QualityDegraded and CaptureDropping conditions
and status.monitoring, decided from what the serving pods export (contracts, "monitoring").

Pure: the monitoring loop (autoscale/monitoring.py) scrapes the pods and parses their series
into `PodReading`s; `decide` turns them into a `View`; `settle` keeps the published view until
something a reader cares about changes (a condition, the set of listed tensors, a score moving
by more than `SCORE_MOVE`), so a steady stream writes nothing; `fields` and `conditions` are
what the reconciler writes through its `extra_status` seam.

Choices, and why:
- A tensor is judged only on pods whose current window is full (`window` samples); a pod that
  just started says nothing yet. Over those pods the largest score per tensor counts: one pod
  seeing drifted traffic is drift.
- Drifted means the PSI is at or above its threshold and, where the server also exports the
  two-sample Kolmogorov-Smirnov statistic, its p-value is below `pValue`: both tests must
  agree. PSI alone is noisy on small windows; KS alone fires on harmless shifts of huge windows.
  The KS p-value comes from the statistic D and the two sample sizes (the window and the
  reference) by Kolmogorov's asymptotic distribution with Stephens' small-sample correction.
- Quality is the label-weighted mean over the pods' windows; it is judged only when they hold
  at least `minLabels` labels together. Between judgements (too few labels, windows not full)
  the last verdict stands rather than flapping to Unknown.
- Counters go into status rounded down to 1, 2, 5 x 10^k, so a busy capture writes status a
  few times per decade, not every tick.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, Sequence

from modelship.api.v1alpha1 import ModelService, Monitoring
from modelship.contracts import QUALITY_ERROR_METRICS
from modelship.status import conditions as c

DATA_DRIFT = "DataDrift"
QUALITY_DEGRADED = "QualityDegraded"
CAPTURE_DROPPING = "CaptureDropping"
MONITORING_CONDITIONS = (DATA_DRIFT, QUALITY_DEGRADED, CAPTURE_DROPPING)

DRIFT_DETECTED, NO_DRIFT = "DriftDetected", "NoDrift"
REFERENCE_NOT_READY, WINDOW_NOT_FULL, NOT_MEASURED = "ReferenceNotReady", "WindowNotFull", "NotMeasured"
BELOW_MINIMUM, ABOVE_MAXIMUM, WITHIN_BOUND, NOT_ENOUGH_LABELS = "BelowMinimum", "AboveMaximum", "WithinBound", "NotEnoughLabels"
RECORDS_DROPPED, WRITING, NO_RECORDS = "RecordsDropped", "Writing", "NoRecordsYet"
MONITORING_DISABLED, NOT_CONFIGURED = "MonitoringDisabled", "NotConfigured"

SCORE_MOVE = 0.05  # absolute PSI change (or 25 % relative, whichever is larger) worth a status write
QUALITY_MOVE = 0.01


@dataclasses.dataclass(frozen=True)
class TensorReading:
    """One tensor's drift series on one pod."""

    tensor: str
    window: float  # samples in the current window
    psi: float | None = None
    ks: float | None = None  # the Kolmogorov-Smirnov statistic D


@dataclasses.dataclass(frozen=True)
class PodReading:
    """The monitoring series one scrape of one pod found, for one model."""

    reference_samples: float = 0.0  # 0: no reference loaded or frozen yet
    tensors: tuple[TensorReading, ...] = ()
    quality: Mapping[str, float] = dataclasses.field(default_factory=dict)  # metric -> current window's value
    quality_labels: float = 0.0
    written: float = 0.0  # capture records, cumulative
    dropped: float = 0.0


@dataclasses.dataclass(frozen=True)
class Verdict:
    status: str
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class DriftEntry:
    tensor: str
    psi: float
    p_value: float | None
    drifted: bool


@dataclasses.dataclass(frozen=True)
class View:
    reference: str
    ready_pods: str
    drift: Verdict
    top: tuple[DriftEntry, ...] = ()
    quality: Verdict | None = None
    quality_metric: str | None = None
    quality_value: float | None = None
    quality_labels: int | None = None
    capture: Verdict | None = None
    capture_sink: str | None = None
    written: int | None = None
    dropped: int | None = None


def reference_source(msvc: ModelService) -> str:
    spec = msvc.spec
    if spec.monitoring_reference_from_dataset and spec.optimization.dataset is not None:
        return f"dataset {spec.optimization.dataset.uri}"
    return f"first {spec.monitoring.reference.first_requests} sampled requests of each pod"


def ks_p_value(statistic: float, n: float, m: float) -> float:
    """The two-sided p-value of a two-sample KS statistic D for samples of sizes n and m
    (Kolmogorov's limit distribution, Stephens' correction); 1.0 without samples."""
    if n <= 0 or m <= 0 or statistic <= 0:
        return 1.0
    effective = math.sqrt(n * m / (n + m))
    lam = (effective + 0.12 + 0.11 / effective) * statistic
    if lam < 0.2:
        return 1.0
    total = sum((-1) ** (k - 1) * math.exp(-2.0 * k * k * lam * lam) for k in range(1, 101))
    return min(1.0, max(0.0, 2.0 * total))


def decide(msvc: ModelService, pods: Mapping[str, PodReading | None], *, previous: View | None = None,
           previous_counters: Mapping[str, tuple[float, float]] | None = None) -> View:
    """The view of one ModelService from its pods' latest readings (None: the scrape failed).
    `previous_counters`: pod -> (written, dropped) at the previous tick, for capture drops."""
    spec = msvc.spec.monitoring
    read = {name: r for name, r in pods.items() if r is not None}
    ready = sum(1 for r in read.values() if r.reference_samples > 0)
    drift, top = _drift(spec, read, previous.drift if previous else None)
    view = View(reference=reference_source(msvc), ready_pods=f"{ready}/{len(pods)}", drift=drift, top=top)
    if spec.quality is not None:
        view = dataclasses.replace(view, **_quality(spec, read, previous.quality if previous else None))
    if spec.capture is not None:
        view = dataclasses.replace(view, **_capture(spec, read, previous_counters or {},
                                                    previous.capture if previous else None))
    return view


def _drift(spec: Monitoring, pods: Mapping[str, PodReading], previous: Verdict | None
           ) -> tuple[Verdict, tuple[DriftEntry, ...]]:
    if not pods:
        return _keep(previous, Verdict(c.UNKNOWN, NOT_MEASURED, "no serving pod's metrics could be read yet")), ()
    with_reference = {n: r for n, r in pods.items() if r.reference_samples > 0}
    if not with_reference:
        return _keep(previous, Verdict(c.UNKNOWN, REFERENCE_NOT_READY,
                                       f"no pod has a reference profile yet (of {len(pods)} scraped)")), ()
    worst: dict[str, DriftEntry] = {}
    for reading in with_reference.values():
        for t in reading.tensors:
            if t.window < spec.window or t.psi is None:
                continue
            p = ks_p_value(t.ks, t.window, reading.reference_samples) if t.ks is not None else None
            drifted = t.psi >= spec.drift.psi_threshold and (p is None or p < spec.drift.p_value)
            entry = DriftEntry(tensor=t.tensor, psi=t.psi, p_value=p, drifted=drifted)
            old = worst.get(t.tensor)
            if old is None or (entry.drifted, entry.psi) > (old.drifted, old.psi):
                worst[t.tensor] = entry
    if not worst:
        return _keep(previous, Verdict(c.UNKNOWN, WINDOW_NOT_FULL,
                                       f"no pod has a full window of {spec.window} sampled requests yet")), ()
    ranked = tuple(sorted(worst.values(), key=lambda e: (not e.drifted, -e.psi, e.tensor))[:spec.drift.top])
    hits = [e for e in ranked if e.drifted]
    if hits:
        names = "; ".join(f"{e.tensor} (PSI {e.psi:.2f}" + (f", KS p {e.p_value:.1e}" if e.p_value is not None else "")
                          + ")" for e in hits)
        return Verdict(c.TRUE, DRIFT_DETECTED, f"drifted from the reference: {names}; PSI threshold "
                       f"{spec.drift.psi_threshold:g}, p-value {spec.drift.p_value:g}"), ranked
    return Verdict(c.FALSE, NO_DRIFT, f"{len(worst)} tensor(s) within PSI {spec.drift.psi_threshold:g} of the "
                   f"reference; highest {ranked[0].tensor} at {ranked[0].psi:.2f}"), ranked


def _quality(spec: Monitoring, pods: Mapping[str, PodReading], previous: Verdict | None) -> dict[str, Any]:
    quality = spec.quality
    assert quality is not None
    metric = quality.metric
    weighted = [(r.quality[metric], r.quality_labels) for r in pods.values()
                if metric in r.quality and r.quality_labels > 0 and math.isfinite(r.quality[metric])]
    labels = sum(n for _, n in weighted)
    value = sum(v * n for v, n in weighted) / labels if labels > 0 else None
    out: dict[str, Any] = {"quality_metric": metric, "quality_labels": bucket(labels),
                           "quality_value": None if value is None else round(value, 3)}
    if value is None or labels < quality.min_labels:
        out["quality"] = _keep(previous, Verdict(
            c.UNKNOWN, NOT_ENOUGH_LABELS, f"{int(labels)} label(s) in the current windows; {metric} is judged from "
            f"{quality.min_labels} (POST /v2/models/<model>/feedback)"))
        return out
    if metric in QUALITY_ERROR_METRICS:
        bound = quality.maximum
        assert bound is not None
        bad, reason_bad, word = value > bound, ABOVE_MAXIMUM, "maximum"
    else:
        bound = quality.minimum
        assert bound is not None
        bad, reason_bad, word = value < bound, BELOW_MINIMUM, "minimum"
    text = f"{metric} {value:.3f} over {int(labels)} labels, {word} {bound:g}"
    out["quality"] = Verdict(c.TRUE, reason_bad, text) if bad else Verdict(c.FALSE, WITHIN_BOUND, text)
    return out


def _capture(spec: Monitoring, pods: Mapping[str, PodReading], before: Mapping[str, tuple[float, float]],
             previous: Verdict | None) -> dict[str, Any]:
    assert spec.capture is not None
    written = sum(r.written for r in pods.values())
    dropped = sum(r.dropped for r in pods.values())
    new_written = new_dropped = 0.0
    for name, r in pods.items():
        old_w, old_d = before.get(name, (0.0, 0.0))
        if r.written < old_w or r.dropped < old_d:  # the server restarted: its counters start over
            old_w = old_d = 0.0
        new_written += r.written - old_w
        new_dropped += r.dropped - old_d
    out: dict[str, Any] = {"capture_sink": spec.capture.sink, "written": bucket(written), "dropped": bucket(dropped)}
    if new_dropped > 0:
        out["capture"] = Verdict(c.TRUE, RECORDS_DROPPED, f"{int(new_dropped)} capture record(s) dropped since the "
                                 f"last look: the sink {spec.capture.sink} is slow or unreachable (inference is "
                                 "not affected; records are dropped, not queued)")
    elif new_written > 0:
        out["capture"] = Verdict(c.FALSE, WRITING, f"records are written to {spec.capture.sink}")
    else:
        out["capture"] = _keep(previous, Verdict(c.FALSE, NO_RECORDS, "no capture record written or dropped yet"))
    return out


def _keep(previous: Verdict | None, fresh: Verdict) -> Verdict:
    """A verdict (True/False) stands while nothing new can be judged."""
    if previous is not None and previous.status in (c.TRUE, c.FALSE):
        return previous
    return fresh


def bucket(count: float) -> int:
    """`count` rounded down to 1, 2 or 5 x 10^k (0 stays 0)."""
    if count < 1:
        return 0
    scale = 10 ** int(math.floor(math.log10(count)))
    for step in (5, 2, 1):
        if count >= step * scale:
            return step * scale
    return scale


def settle(old: View | None, new: View) -> View:
    """`new` when it differs from `old` in a way worth a status write, else `old`."""
    if old is None:
        return new
    exact = ("reference", "ready_pods", "quality_metric", "quality_labels", "capture_sink", "written", "dropped")
    if any(getattr(old, f) != getattr(new, f) for f in exact):
        return new
    for verdict in ("drift", "quality", "capture"):  # their messages carry the scores, which may wobble
        a, b = getattr(old, verdict), getattr(new, verdict)
        if (a is None) != (b is None) or (a is not None and b is not None and (a.status, a.reason) != (b.status, b.reason)):
            return new
    if [(e.tensor, e.drifted) for e in old.top] != [(e.tensor, e.drifted) for e in new.top]:
        return new
    if any(abs(a.psi - b.psi) > max(SCORE_MOVE, 0.25 * a.psi) for a, b in zip(old.top, new.top)):
        return new
    if (old.quality_value is None) != (new.quality_value is None) or (
            old.quality_value is not None and new.quality_value is not None
            and abs(old.quality_value - new.quality_value) > QUALITY_MOVE):
        return new
    return old


def fields(view: View | None) -> dict[str, Any]:
    """status.monitoring (None removes it)."""
    if view is None:
        return {"monitoring": None}
    out: dict[str, Any] = {"reference": view.reference, "referenceReadyPods": view.ready_pods,
                           "drift": [_entry(e) for e in view.top]}
    if view.quality_metric is not None:
        quality: dict[str, Any] = {"metric": view.quality_metric, "labels": view.quality_labels}
        if view.quality_value is not None:
            quality["value"] = view.quality_value
        out["quality"] = quality
    if view.capture_sink is not None:
        out["capture"] = {"sink": view.capture_sink, "written": view.written, "dropped": view.dropped}
    return {"monitoring": out}


def _entry(e: DriftEntry) -> dict[str, Any]:
    out: dict[str, Any] = {"tensor": e.tensor, "psi": round(e.psi, 2), "drifted": e.drifted}
    if e.p_value is not None:
        out["pValue"] = float(f"{e.p_value:.1e}")
    return out


def conditions(msvc: ModelService, view: View | None, previous: Iterable[Mapping[str, Any]] | None
               ) -> list[c.ConditionSpec]:
    """The monitoring conditions for `view`; with monitoring (or a part of it) off, conditions
    set before turn False instead of lingering, and none appear that never were."""
    spec = msvc.spec.monitoring
    out: list[c.ConditionSpec] = []
    if not spec.enabled:
        for type_ in MONITORING_CONDITIONS:
            if c.find(previous, type_) is not None:
                out.append(c.ConditionSpec(type_, c.FALSE, MONITORING_DISABLED, "spec.monitoring.enabled is false"))
        return out
    parts: Sequence[tuple[str, Verdict | None, bool]] = (
        (DATA_DRIFT, view.drift if view else Verdict(c.UNKNOWN, NOT_MEASURED, "waiting for the first measurement"), True),
        (QUALITY_DEGRADED, view.quality if view else None, spec.quality is not None),
        (CAPTURE_DROPPING, view.capture if view else None, spec.capture is not None),
    )
    for type_, verdict, configured in parts:
        if not configured:
            if c.find(previous, type_) is not None:
                what = "quality" if type_ == QUALITY_DEGRADED else "capture"
                out.append(c.ConditionSpec(type_, c.FALSE, NOT_CONFIGURED, f"spec.monitoring.{what} is not set"))
            continue
        if verdict is None:
            verdict = Verdict(c.UNKNOWN, NOT_MEASURED, "waiting for the first measurement")
        out.append(c.ConditionSpec(type_, verdict.status, verdict.reason, verdict.message,
                                   warning=verdict.status == c.TRUE))
    return out
