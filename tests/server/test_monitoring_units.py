"""Monitoring's pure parts: quality metrics against scikit-learn, drift on a stationary and a
shifted stream, the feedback store's bounds, the reference format's errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, mean_absolute_error, mean_squared_error, precision_recall_fscore_support

from modelship_server.monitoring import drift, feedback, quality
from modelship_server.monitoring.monitor import ModelMonitor
from modelship_server.monitoring.profile import FeatureStats, features
from modelship_server.monitoring.reference import ReferenceInvalid, build_reference, check_against_model, parse_reference
from modelship_server.monitoring.sketch import Histogram, edges_for
from modelship_server.settings import MonitoringSettings


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("classes", [2, 3, 7])
def test_classification_metrics_equal_sklearn(seed, classes):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    y_true = rng.integers(0, classes, n)
    # predictions right most of the time, some classes never predicted or never true
    y_pred = np.where(rng.random(n) < 0.7, y_true, rng.integers(0, classes + 1, n))
    got = quality.classification_metrics(y_pred, y_true)
    assert got["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-9)
    for avg in ("micro", "macro"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average=avg, zero_division=0)
        assert got[f"precision_{avg}"] == pytest.approx(p, abs=1e-9)
        assert got[f"recall_{avg}"] == pytest.approx(r, abs=1e-9)
        assert got[f"f1_{avg}"] == pytest.approx(f, abs=1e-9)


def test_the_window_keeps_the_last_n_pairs_and_equals_sklearn_on_them():
    rng = np.random.default_rng(1)
    w = quality.QualityWindow(100, "classification")
    preds, labels = rng.integers(0, 4, 350), rng.integers(0, 4, 350)
    for i in range(0, 350, 7):  # requests of 7 samples
        w.add(preds[i:i + 7], labels[i:i + 7])
    got = w.metrics()
    p, r, f, _ = precision_recall_fscore_support(labels[-100:], preds[-100:], average="macro", zero_division=0)
    assert len(w.pairs) == 100
    assert got["accuracy"] == pytest.approx(accuracy_score(labels[-100:], preds[-100:]), abs=1e-9)
    assert (got["precision_macro"], got["recall_macro"], got["f1_macro"]) == pytest.approx((p, r, f), abs=1e-9)


def test_regression_metrics_equal_sklearn():
    rng = np.random.default_rng(2)
    y, yhat = rng.normal(size=500), rng.normal(size=500)
    got = quality.regression_metrics(yhat, y)
    assert got["mae"] == pytest.approx(mean_absolute_error(y, yhat), abs=1e-9)
    assert got["rmse"] == pytest.approx(np.sqrt(mean_squared_error(y, yhat)), abs=1e-9)


def _monitor(window=1000, reference=None, **kw):
    cfg = MonitoringSettings(enabled=True, window=window, reference_size=1000, **kw)
    return ModelMonitor("m", {"x": "FP32"}, {"y": "FP32"}, True, cfg, reference)


def _stream(monitor, rng, n, shift=0.0, feature=3):
    for _ in range(n):
        x = rng.normal(size=(1, 10)).astype(np.float32)
        x[0, feature] += shift
        monitor.observe({"x": x}, {})


def test_a_stationary_stream_stays_low_and_a_half_sigma_shift_is_flagged_by_name():
    rng = np.random.default_rng(3)
    mon = _monitor()
    _stream(mon, rng, 1000)  # frozen as the reference
    assert mon.reference is not None and mon.reference["samples"] == 1000
    _stream(mon, rng, 3000)
    snap = mon.snapshot()
    assert snap["drift"]["drifted"] == []
    assert max(f["psi"] for f in snap["drift"]["features"].values()) < 0.2
    _stream(mon, rng, 2000, shift=0.5, feature=3)
    snap = mon.snapshot()
    assert snap["drift"]["drifted"] == ["x[3]"], snap["drift"]["drifted"]
    assert snap["drift"]["features"]["x[3]"]["psi"] >= 0.2
    assert snap["reference"]["state"] == "frozen"


def test_profile_counts_nan_inf_and_out_of_range_and_tracks_mean_and_variance():
    st = FeatureStats(low=-1.0, high=1.0)
    v = np.array([0.5, np.nan, np.inf, 2.0, -3.0, 0.0])
    st.add(v[:3])
    st.add(v[3:])
    fin = np.array([0.5, 2.0, -3.0, 0.0])
    assert (st.count, st.nan, st.inf, st.out_of_range) == (6, 1, 1, 2)
    assert st.mean == pytest.approx(fin.mean()) and st.variance == pytest.approx(fin.var())


def test_features_per_position_summary_bytes_and_predicted_class():
    f = features("x", "FP32", np.zeros((2, 3), np.float32), batched=True)
    assert sorted(f) == ["x[0]", "x[1]", "x[2]"] and f["x[0]"].shape == (2,)
    f = features("img", "FP32", np.ones((2, 3, 8, 8), np.float32), batched=True)
    assert sorted(f) == ["img.mean", "img.std"] and f["img.mean"].tolist() == [1.0, 1.0]
    f = features("s", "BYTES", np.array([b"ab", b"abcd"], dtype=object), batched=True)
    assert f["s.length"].tolist() == [2.0, 4.0]
    f = features("p", "FP32", np.array([[0.1, 0.9], [0.8, 0.2]], np.float32), batched=True, output=True)
    assert f["p.class"].tolist() == [1.0, 0.0]


def test_histograms_merge_and_categorical_bins_are_one_per_value():
    edges = edges_for(np.array([0, 1, 2, 2, 3], dtype=float))
    assert edges.tolist() == [0.5, 1.5, 2.5]
    a, b = Histogram(edges), Histogram(edges)
    a.add(np.array([0, 2, 2]))
    b.add(np.array([3, np.nan]))
    assert a.merge(b).counts.tolist() == [1, 0, 2, 1]


def test_ks_p_value_is_small_for_a_clear_shift_and_large_for_noise():
    ref = np.array([100, 200, 400, 200, 100])
    assert drift.ks_p_value(drift.ks_statistic(ref, ref), 1000, 1000) == 1.0
    moved = np.array([50, 100, 300, 300, 250])
    assert drift.ks_p_value(drift.ks_statistic(ref, moved), 1000, 1000) < 1e-6
    assert drift.psi(ref, ref) == pytest.approx(0.0)


def test_feedback_store_is_bounded_by_entries_and_ttl_and_tells_expired_from_unknown():
    now = [0.0]
    store = feedback.PredictionStore(ttl_s=10, max_entries=3, clock=lambda: now[0])
    for i in range(5):
        store.put(f"r{i}", np.array([i]))
    assert len(store) == 3
    assert store.lookup("r0")[0] == feedback.EXPIRED  # evicted by size
    assert store.lookup("nope")[0] == feedback.UNKNOWN
    outcome, pred = store.lookup("r4")
    assert outcome == feedback.JOINED and pred.tolist() == [4]
    store.consume("r4")
    assert store.lookup("r4")[0] == feedback.EXPIRED  # a second label for the same id
    now[0] = 11.0
    assert store.lookup("r3")[0] == feedback.EXPIRED  # past its TTL
    store.put("late", np.array([0]))
    assert len(store) == 1  # the rest aged out on insert


def test_feedback_bad_labels_are_invalid_and_the_prediction_stays_joinable():
    mon = _monitor()
    mon.remember("a", {"y": np.array([[0.1, 0.9]], np.float32)})
    assert mon.feedback({"id": "a", "label": "cat"})[0] == feedback.INVALID
    assert mon.feedback({"id": "a", "label": [1, 0]})[0] == feedback.INVALID  # one prediction, two labels
    assert mon.feedback({"id": "a", "label": 1.5})[0] == feedback.INVALID
    assert mon.feedback({"label": 1})[0] == feedback.INVALID
    assert mon.feedback({"id": "a", "label": 1}) == (feedback.JOINED, "")
    assert mon.quality is not None and mon.quality.metrics()["accuracy"] == 1.0
    assert mon.feedback_counts == {"joined": 1, "unknown_id": 0, "expired": 0, "invalid": 4}


def test_reference_round_trips_and_mismatches_name_the_field(tmp_path):
    rng = np.random.default_rng(4)
    ref = build_reference([{"x": rng.normal(size=(4, 10)).astype(np.float32)} for _ in range(50)], model="m")
    doc = parse_reference(json.loads(json.dumps(ref)))
    assert doc["samples"] == 50 and len(doc["features"]) == 10 and doc["features"]["x[0]"]["count"] == 200
    check_against_model(doc, {"x": "FP32"}, {}, "ref.json")
    with pytest.raises(ReferenceInvalid, match=r"ref.json: field 'tensors.x.datatype': expected FP64, got 'FP32'"):
        check_against_model(doc, {"x": "FP64"}, {}, "ref.json")
    with pytest.raises(ReferenceInvalid, match=r"field 'tensors.x': expected one of the model's inputs \['input'\]"):
        check_against_model(doc, {"input": "FP32"}, {}, "ref.json")
    with pytest.raises(ReferenceInvalid, match=r"field 'schema'"):
        parse_reference({**doc, "schema": "v0"}, "ref.json")
    bad = json.loads(json.dumps(doc))
    bad["features"]["x[0]"]["counts"] = [1]
    with pytest.raises(ReferenceInvalid, match=r"field 'features.x\[0\].counts'"):
        parse_reference(bad, "ref.json")


def test_a_loaded_reference_is_used_at_once():
    rng = np.random.default_rng(5)
    ref = build_reference([{"x": rng.normal(size=(1, 10)).astype(np.float32)} for _ in range(1000)], model="m")
    mon = _monitor(reference=ref, window=500)
    _stream(mon, rng, 600, shift=1.0, feature=7)
    assert mon.snapshot()["drift"]["drifted"] == ["x[7]"]


def test_the_reference_cli_and_optimize_write_a_reference_the_server_reads(tmp_path):
    import subprocess
    import sys

    from modelship_server import samples
    from modelship_server.monitoring.reference import load_reference
    from modelship_server.optimize.command import write_reference

    model = tmp_path / "mlp.onnx"
    model.write_bytes(samples.mlp((10, 16, 4)).SerializeToString())
    rng = np.random.default_rng(6)
    np.savez(tmp_path / "val.npz", INPUT0=rng.normal(size=(64, 10)).astype(np.float32))
    out = tmp_path / "ref.json"
    done = subprocess.run([sys.executable, "-m", "modelship_server.monitoring", "reference", "--dataset",
                           str(tmp_path / "val.npz"), "--model", str(model), "--output", str(out), "--name", "mlp"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    ref = load_reference(out)
    assert ref["model"] == "mlp" and ref["samples"] == 64 and ref["features"]["INPUT0[9]"]["count"] == 64
    check_against_model(ref, {"INPUT0": "FP32"}, {"OUTPUT0": "FP32"}, out)
    done = subprocess.run([sys.executable, "-m", "modelship_server.monitoring", "reference", "--dataset",
                           str(tmp_path / "nope.npz"), "--model", str(model), "--output", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "does not exist" in done.stderr
    feeds = [{"INPUT0": rng.normal(size=(1, 10)).astype(np.float32)} for _ in range(8)]
    write_reference(tmp_path, feeds + feeds[:4], "generated (8 inputs, seed 0)")  # halves may be the same feeds
    ref = load_reference(tmp_path / "reference-profile.json")
    assert ref["samples"] == 8 and ref["source"] == "optimize: generated (8 inputs, seed 0)"


# -- the drain's vectorized parts agree with the plain definitions ---------------------------------


def test_vectorized_ks_p_values_equal_the_series_per_feature():
    rng = np.random.default_rng(5)
    d = np.concatenate([[0.0, 0.001, 0.5, 1.0], rng.uniform(0, 0.3, 400)])
    n = np.concatenate([[1000, 0, 1000, 5], rng.integers(0, 3000, 400)])
    m = np.concatenate([[1000, 1000, 0, 5], rng.integers(0, 3000, 400)])
    want = [drift.ks_p_value(float(x), int(a), int(b)) for x, a, b in zip(d, n, m)]
    assert drift.ks_p_values(d, n, m) == pytest.approx(want, abs=1e-12)


def _drift_monitor(rng):
    cfg = MonitoringSettings(enabled=True, window=200, reference_size=10)
    mon = ModelMonitor("m", {"x": "FP32"}, {"y": "FP32"}, True, cfg, None)
    for _ in range(10):  # ten requests of 100 rows: the frozen reference
        mon.observe({"x": rng.normal(size=(100, 10)).astype(np.float32)}, {})
    return mon


def test_the_window_counts_equal_a_histogram_of_the_last_window_and_scores_are_cached_until_it_slides():
    rng = np.random.default_rng(6)
    mon = _drift_monitor(rng)
    d = mon.drift["x"]
    rows = []
    for i in range(37):  # uneven requests: blocks of 20 fill across request boundaries
        x = rng.normal(size=(int(rng.integers(1, 30)), 10)).astype(np.float32)
        if i % 5 == 0:
            x[0, 2] = np.nan  # counted by the stats, not binned
        rows.append(x)
        mon.observe({"x": x}, {})
    allrows = np.concatenate(rows).astype(np.float64)
    window = allrows[:allrows.shape[0] - d.current_n][-d.window:]
    for j, name in enumerate(d.names):
        ref = mon.reference["features"][name]
        h = Histogram(np.array(ref["edges"]))
        h.add(window[:, j])
        assert d.total[j, :len(ref["edges"]) + 1].tolist() == h.counts.tolist(), name
        assert not d.total[j, len(ref["edges"]) + 1:].any()
    first = d.scores
    assert first is not None and d.scores is first  # read twice, scored once
    want = drift.scores(d.ref, np.sum(d.blocks, axis=0), d.valid, d.psi_t, d.p_t)
    got_v, want_v = ([(s.psi, s.ks, s.p_value, s.drifted) for s in sc] for sc in (first, want))
    assert np.allclose(np.array(got_v, float), np.array(want_v, float), rtol=1e-12, atol=1e-12)
    mon.observe({"x": rng.normal(size=(d.block_size, 10)).astype(np.float32)}, {})
    assert d.scores is not first  # the window slid


def test_the_finite_fast_path_keeps_the_statistics_of_the_general_update():
    from modelship_server.monitoring.profile import ColumnStats
    rng = np.random.default_rng(7)
    parts = [rng.normal(3.0, 2.0, size=(int(rng.integers(1, 50)), 4)) for _ in range(20)]
    parts[7][3, 1] = np.inf  # one matrix takes the general path
    fast, slow = ColumnStats(4), ColumnStats(4)
    fast.low = slow.low = np.full(4, -1.0)
    fast.high = slow.high = np.full(4, 6.0)
    for p in parts:
        fast.add(p)
        _general(slow, p)
    allv = np.concatenate(parts)
    for j in range(4):
        v = allv[:, j][np.isfinite(allv[:, j])]
        col = fast.column(j)
        assert col["mean"] == pytest.approx(v.mean()) and col["variance"] == pytest.approx(v.var())
        assert col["out_of_range"] == int(((v < -1) | (v > 6)).sum())
        assert fast.column(j) == pytest.approx(slow.column(j))


def _general(st, m):
    """ColumnStats.add with the fast path skipped: a NaN appended and its count taken back."""
    st.add(np.concatenate([m, np.full((1, m.shape[1]), np.nan)]))
    st.count -= 1
    st.nan -= 1


def test_the_event_loop_drains_in_bounded_slices_and_profiles_every_sampled_request(monkeypatch):
    import asyncio
    from types import SimpleNamespace

    from modelship_server.messages import InferRequest, Tensor
    from modelship_server.monitoring import monitor as monitor_mod

    spec, out = SimpleNamespace(name="x", datatype="FP32"), SimpleNamespace(name="y", datatype="FP32")
    model = SimpleNamespace(name="m", version="1", inputs=[spec], outputs=[out], policy=SimpleNamespace(max_batch_size=8),
                            output_specs={"y": out}, model_path=None)
    rng = np.random.default_rng(8)
    sizes: list[int] = []
    gaps: list[float] = []
    monkeypatch.setenv("MODELSHIP_MONITORING_DRAIN", "loop")

    async def run() -> ModelMonitor:
        hub = monitor_mod.Monitoring(MonitoringSettings(enabled=True, window=200, reference_size=100),
                                     None, asyncio.get_running_loop())
        mon = hub.monitor_for(model)
        real = mon.profile
        mon.profile = lambda cols, n: (sizes.append(n), real(cols, n))  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()
        real_slice = hub._slice

        def spread() -> None:  # with more to do, the next slice is a timer in the future, not call_soon
            began = loop.time()
            real_slice()
            if hub._backlog:
                assert isinstance(hub._timer, asyncio.TimerHandle) and hub._timer.when() > began
                gaps.append(hub._timer.when() - began)
        hub._slice = spread  # type: ignore[method-assign]
        try:
            for _ in range(1000):
                req = InferRequest("m", "", [Tensor("x", "FP32", [1, 4], rng.normal(size=(1, 4)).astype(np.float32))])
                req.id = hub.new_id(model)
                hub.after_infer(model, req, {"y": rng.normal(size=(1, 3)).astype(np.float32)})
            for _ in range(600):  # up to 60 s on a loaded machine
                if mon.profiled >= 1000:
                    break
                await asyncio.sleep(0.1)
        finally:
            hub.close()
        return mon

    mon = asyncio.run(run())
    assert mon.profiled == 1000 and mon.dropped == 0
    assert sum(sizes) == 1000 and max(sizes) <= monitor_mod.SLICE
    assert gaps  # 1000 requests did not fit one slice: they were spread
    assert mon.reference is not None and mon.stats["x"].count == 1000


def test_slice_sizes_settle_at_the_time_budget_and_never_jump(monkeypatch):
    from modelship_server.monitoring import monitor as monitor_mod
    # the sizing as MODELSHIP_MONITORING_SLICE_US=150 / _SLICE_MIN=32 set it (the defaults keep whole slices)
    monkeypatch.setattr(monitor_mod, "SLICE_MIN", 32)
    monkeypatch.setattr(monitor_mod, "SLICE_BUDGET_S", 150e-6)
    budget = monitor_mod.SLICE_BUDGET_S
    for fixed, per in ((0.5 * budget, budget / 80), (0.1 * budget, budget / 500), (2 * budget, budget), (0.0, budget / 40)):
        size, seen = monitor_mod.SLICE_MIN, []
        for _ in range(60):
            took = fixed + per * size
            new = monitor_mod.next_slice_size(size, took)
            assert monitor_mod.SLICE_MIN <= new <= monitor_mod.SLICE and size // 2 <= new <= 2 * size
            size = new
            seen.append(size)
        over = [s for s in seen[-10:] if fixed + per * s > budget]
        settled = max(monitor_mod.SLICE_MIN, min(monitor_mod.SLICE, int((budget - fixed) / per)))
        assert all(abs(s - settled) <= 1 for s in seen[-10:]), (fixed, per, seen)
        assert all(s <= settled + 1 for s in over)
    assert monitor_mod.next_slice_size(64, 100 * budget) == 32  # one preempted slice halves it, no more
    # the pause between slices: the full gap while the backlog clears within a tick, shorter when not
    assert monitor_mod.slice_gap(32, 100, 0.1) == monitor_mod.SLICE_GAP_S
    assert monitor_mod.slice_gap(32, 2000, 0.1) == pytest.approx(0.1 * 32 / 2000)
    assert monitor_mod.slice_gap(32, 8000, 0.1) == monitor_mod.SLICE_GAP_MIN_S
    assert monitor_mod.slice_gap(32, 100, -0.01) == monitor_mod.SLICE_GAP_MIN_S  # behind: still apart


@pytest.mark.parametrize("planes_max", [0, 10**9])
def test_binning_by_planes_or_by_edge_rows_equals_searchsorted_per_feature(monkeypatch, planes_max):
    from modelship_server.monitoring import monitor as monitor_mod
    monkeypatch.setattr(monitor_mod, "PLANES_MAX", planes_max)
    rng = np.random.default_rng(11)
    feats = [{"edges": np.unique(rng.normal(size=int(rng.integers(1, 20)))).tolist()} for _ in range(7)]
    feats.append({"edges": [0.5, 1.5, 2.5]})  # a categorical feature: its values sit between edges
    for f in feats:
        f["counts"] = [1] * (len(f["edges"]) + 1)
    d = monitor_mod.TensorDrift([f"x[{j}]" for j in range(8)], feats, 100, 0.2, 0.01)
    m = rng.normal(size=(40, 8))
    m[:, 7] = rng.integers(0, 4, size=40)
    m[:5, 0] = feats[0]["edges"][0]  # on an edge: the bin below it (edges[i-1] < v <= edges[i])
    m[7, 3], m[9, 4], m[11, 5] = np.nan, np.inf, -np.inf
    for finite in (None, False):
        idx = d.bins(m, finite)
        for j, f in enumerate(feats):
            want = np.searchsorted(np.array(f["edges"]), m[:, j], side="left") + j * d.k
            want[~np.isfinite(m[:, j])] = 8 * d.k
            assert idx[:, j].tolist() == want.tolist(), (planes_max, j)
    fin = rng.normal(size=(40, 8))
    assert d.bins(fin, True).tolist() == d.bins(fin, None).tolist()


def test_the_prediction_store_answers_as_a_plain_fifo_with_ttl_would():
    """The store's lean `put` against the definition: the newest max_entries ids live, none older than
    the TTL; evicted or consumed ids answered `expired` for max_entries more evictions."""
    rng = np.random.default_rng(9)
    now = [0.0]
    ttl, size = 5.0, 8
    store = feedback.PredictionStore(ttl_s=ttl, max_entries=size, clock=lambda: now[0])
    live: list[tuple[str, float]] = []  # oldest first
    gone: list[str] = []

    def forget(rid: str) -> None:  # remembered in the order first forgotten (an OrderedDict's)
        if rid not in gone:
            gone.append(rid)
        del gone[:-size]

    for step in range(3000):
        op = rng.integers(0, 10)
        rid = f"r{int(rng.integers(0, 40))}"
        if op < 5:
            now[0] += float(rng.exponential(0.5))
            store.put(rid, np.array([step]))
            live[:] = [(r, t) for r, t in live if r != rid] + [(rid, now[0])]
            while live and (len(live) > size or now[0] - live[0][1] > ttl):
                forget(live.pop(0)[0])
        elif op < 8:
            outcome, _ = store.lookup(rid)
            hit = next((t for r, t in live if r == rid), None)
            if hit is not None and now[0] - hit > ttl:
                live[:] = [(r, t) for r, t in live if r != rid]
                forget(rid)
                want = feedback.EXPIRED
            else:
                want = feedback.JOINED if hit is not None else feedback.EXPIRED if rid in gone else feedback.UNKNOWN
            assert outcome == want, (step, rid)
        else:
            store.consume(rid)
            if any(r == rid for r, _ in live):
                live[:] = [(r, t) for r, t in live if r != rid]
                forget(rid)
        assert list(store.entries) == [r for r, _ in live], step


def test_a_full_prediction_store_holds_nothing_the_garbage_collector_walks():
    """A (time, prediction) tuple per entry made a full store of 100,000 a cost of every collection
    (and a full one paused the loop ~25 ms): ids, times and predictions are all untracked now."""
    import gc

    store = feedback.PredictionStore(ttl_s=60, max_entries=1000)
    for i in range(3000):
        store.put(f"id-{i}", np.array([i % 7]))
    assert len(store) == 1000 and not gc.is_tracked(store.predictions)
    assert not any(gc.is_tracked(v) for v in store.entries.values())
    assert not any(gc.is_tracked(v) for v in store.predictions.values())
    assert store.lookup("id-2999")[0] == feedback.JOINED and store.lookup("id-1500")[0] == feedback.EXPIRED


def _two_tensor_monitor(fuse: bool, inputs_reference: bool = False) -> ModelMonitor:
    cfg = MonitoringSettings(enabled=True, window=200, reference_size=15)  # requests
    ref = None
    if inputs_reference:  # a loaded reference of the inputs only (as optimize writes): the output apart
        feeds, _ = _two_tensor_stream(np.random.default_rng(3), 400)
        ref = build_reference([feeds], model="m")
    ModelMonitor.fuse = fuse  # a loaded reference is used (and fused) in the constructor
    try:
        mon = ModelMonitor("m", {"x": "FP32", "img": "FP32"}, {"p": "FP32"}, True, cfg, ref)
    finally:
        ModelMonitor.fuse = True
    mon.fuse = fuse  # a frozen one later
    return mon


def _two_tensor_stream(rng, rows: int) -> tuple[dict, dict]:
    x = rng.normal(size=(rows, 6)).astype(np.float32)
    img = rng.normal(size=(rows, 3, 20, 20)).astype(np.float32)  # summarized: .mean and .std per sample
    p = rng.dirichlet(np.ones(4), size=rows).astype(np.float32)  # a classifier: also p.class
    return {"x": x, "img": img}, {"p": p}


@pytest.mark.parametrize("inputs_reference", [False, True])
@pytest.mark.parametrize("split_at", [None, 20])
def test_fused_tensors_profile_exactly_as_tensor_by_tensor(split_at, inputs_reference):
    """A model's tensors fused into one matrix give the same statistics and drift as profiled one
    by one; a slice whose tensors do not line up (here: an input missing) splits the fused state back
    into per-tensor state without losing or changing anything."""
    rngs = np.random.default_rng(7), np.random.default_rng(7)
    mons = _two_tensor_monitor(True, inputs_reference), _two_tensor_monitor(False, inputs_reference)
    for i in range(60):
        for rng, mon in zip(rngs, mons):
            inputs, outputs = _two_tensor_stream(rng, int(rng.integers(1, 40)))
            if i >= 40:
                inputs["x"][:, 1] += 2.0  # drift x[1]
            if i == 5:
                inputs["x"][0, 3] = np.nan  # counted by the stats, not binned
            if i == split_at:
                del inputs["img"]  # one request without a fused tensor: split
            mon.observe_many([(inputs, outputs)])
    fused, plain = mons
    assert plain.fused is None
    if split_at is None:
        assert fused.fused is not None and fused.stats["x"].__class__.__name__ == "_StatsPart"
        assert fused.fused.tensors == (["x", "img"] if inputs_reference else ["x", "img", "p"])
    else:
        assert fused.fused is None and fused.stats["x"].__class__.__name__ == "ColumnStats"
    a, b = fused.snapshot(), plain.snapshot()
    assert a["drift"]["drifted"] == b["drift"]["drifted"] and "x[1]" in a["drift"]["drifted"]
    assert a["drift"]["features"].keys() == b["drift"]["features"].keys()
    for name, fa in a["drift"]["features"].items():
        fb_ = b["drift"]["features"][name]
        assert fa.keys() == fb_.keys(), name
        for k, v in fa.items():
            assert v == (fb_[k] if isinstance(v, str) else pytest.approx(fb_[k], rel=1e-12, abs=1e-12)), (name, k)
    for t, d in fused.drift.items():
        want = plain.drift[t]
        assert d.samples == want.samples and d.slides == want.slides
        if split_at is not None:
            np.testing.assert_array_equal(d.total, want.total)
            np.testing.assert_array_equal(d.current, want.current)
