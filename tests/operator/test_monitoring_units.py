"""Monitoring in the operator, the pure parts: parsing the pods' monitoring series, deciding
DataDrift / QualityDegraded / CaptureDropping, settling (no writes in steady state), the API's
checks and the render. Table-driven; the metrics text is what prometheus_client writes for the
contract's names (contracts.py, "monitoring"), generated here from a real registry."""

from __future__ import annotations

import math
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from modelship import contracts
from modelship.api.v1alpha1 import ModelService, QualityMetric
from modelship.autoscale.monitoring import parse
from modelship.render import render_children
from modelship.status import conditions as c
from modelship.status import monitoring as m
from msvc_samples import SHA, body

PLAIN = {"model": {"uri": "https://h.example/m.onnx", "sha256": SHA, "name": "clf"}}


def msvc(**monitoring: Any) -> ModelService:
    spec = {**PLAIN, "monitoring": {"enabled": True, "window": 100, **monitoring}}
    return ModelService.from_body(body(spec=spec))


def metrics_text(*, reference: float = 500, tensors: dict[str, tuple[float, float, float]] | None = None,
                 quality: dict[str, float] | None = None, labels: float = 0, written: float = 0, dropped: float = 0,
                 model: str = "clf") -> str:
    """A real prometheus_client exposition of the contract's series; tensors: name -> (psi, ks, window)."""
    registry = CollectorRegistry()
    score = Gauge(contracts.DRIFT_SCORE_METRIC, "drift", ["model", "tensor", "test"], registry=registry)
    window = Gauge(contracts.DRIFT_WINDOW_METRIC, "window", ["model", "tensor"], registry=registry)
    ref = Gauge(contracts.DRIFT_REFERENCE_METRIC, "reference", ["model"], registry=registry)
    qual = Gauge(contracts.QUALITY_METRIC, "quality", ["model", "metric"], registry=registry)
    lab = Gauge(contracts.QUALITY_LABELS_METRIC, "labels", ["model"], registry=registry)
    cap = Counter(contracts.CAPTURE_METRIC, "capture", ["model", "outcome"], registry=registry)
    other = Gauge(contracts.DRIFT_REFERENCE_METRIC + "_other", "noise", ["model"], registry=registry)
    other.labels(model=model).set(7)
    ref.labels(model=model).set(reference)
    ref.labels(model="someone-else").set(99999)
    for name, (psi, ks, n) in (tensors or {}).items():
        score.labels(model=model, tensor=name, test="psi").set(psi)
        score.labels(model=model, tensor=name, test="ks").set(ks)
        window.labels(model=model, tensor=name).set(n)
    for metric, value in (quality or {}).items():
        qual.labels(model=model, metric=metric).set(value)
    lab.labels(model=model).set(labels)
    cap.labels(model=model, outcome="written").inc(written)
    cap.labels(model=model, outcome="dropped").inc(dropped)
    return generate_latest(registry).decode()


def test_quality_metrics_match_the_contract() -> None:
    assert tuple(QualityMetric.__args__) == contracts.QUALITY_METRICS  # type: ignore[attr-defined]


def test_parse_reads_the_contract_series_of_one_model() -> None:
    text = metrics_text(tensors={"x": (0.5, 0.2, 100), "y": (0.01, 0.03, 40)}, quality={"accuracy": 0.9, "f1_macro": 0.8},
                        labels=150, written=12, dropped=3)
    reading = parse(text, model="clf")
    assert reading.reference_samples == 500
    assert reading.tensors == (m.TensorReading("x", window=100, psi=0.5, ks=0.2),
                               m.TensorReading("y", window=40, psi=0.01, ks=0.03))
    assert reading.quality == {"accuracy": 0.9, "f1_macro": 0.8}
    assert (reading.quality_labels, reading.written, reading.dropped) == (150, 12, 3)


def test_parse_a_server_without_monitoring_is_an_empty_reading() -> None:
    reading = parse("# HELP x y\n# TYPE x gauge\nx 1\n", model="clf")
    assert reading == m.PodReading()


def test_parse_refuses_what_is_not_prometheus_text() -> None:
    from modelship.autoscale.signals import MetricsError

    with pytest.raises(MetricsError, match="not Prometheus text"):
        parse("this is {not metrics", model="clf")


@pytest.mark.parametrize(("d", "n", "m_", "low", "high"), [
    (0.0, 1000, 1000, 1.0, 1.0),
    (0.02, 1000, 1000, 0.9, 1.0),      # within noise
    (0.08, 1000, 1000, 0.002, 0.005),  # lambda = 1.80: p = 2 exp(-2 lambda^2) = 0.0031 (next terms negligible)
    (0.3, 1000, 1000, 0.0, 1e-30),
])
def test_ks_p_value(d: float, n: float, m_: float, low: float, high: float) -> None:
    assert low <= m.ks_p_value(d, n, m_) <= high


R = m.PodReading
T = m.TensorReading


@pytest.mark.parametrize(("pods", "status", "reason", "named"), [
    ({}, c.UNKNOWN, m.NOT_MEASURED, None),
    ({"p0": None}, c.UNKNOWN, m.NOT_MEASURED, None),
    ({"p0": R(reference_samples=0, tensors=(T("x", 100, 0.9, 0.5),))}, c.UNKNOWN, m.REFERENCE_NOT_READY, None),
    ({"p0": R(reference_samples=1000, tensors=(T("x", 50, 0.9, 0.5),))}, c.UNKNOWN, m.WINDOW_NOT_FULL, None),
    ({"p0": R(1000, (T("x", 100, 0.05, 0.03), T("y", 100, 0.1, 0.04)))}, c.FALSE, m.NO_DRIFT, None),
    # PSI high but KS says the same distribution: both tests must agree
    ({"p0": R(1000, (T("x", 100, 0.5, 0.01),))}, c.FALSE, m.NO_DRIFT, None),
    ({"p0": R(1000, (T("x", 100, 0.05, 0.03), T("feat_3", 100, 0.8, 0.4)))}, c.TRUE, m.DRIFT_DETECTED, "feat_3"),
    # PSI only (no KS series): PSI decides
    ({"p0": R(1000, (T("x", 100, 0.3, None),))}, c.TRUE, m.DRIFT_DETECTED, "x"),
    # one pod drifted, one not, one not full: drift
    ({"p0": R(1000, (T("x", 100, 0.01, 0.02),)), "p1": R(1000, (T("x", 100, 0.9, 0.5),)),
      "p2": R(1000, (T("x", 10, 0.0, 0.0),))}, c.TRUE, m.DRIFT_DETECTED, "x"),
])
def test_drift_decision(pods: dict[str, m.PodReading | None], status: str, reason: str, named: str | None) -> None:
    view = m.decide(msvc(), pods)
    assert (view.drift.status, view.drift.reason) == (status, reason), view.drift.message
    if named is not None:
        assert named in view.drift.message and view.top[0].tensor == named and view.top[0].drifted


def test_a_verdict_stands_while_nothing_new_can_be_judged() -> None:
    service = msvc()
    drifted = m.decide(service, {"p0": R(1000, (T("x", 100, 0.9, 0.5),))})
    assert drifted.drift.status == c.TRUE
    restarted = m.decide(service, {"p0": R(1000, (T("x", 3, 0.0, 0.0),))}, previous=drifted)
    assert restarted.drift == drifted.drift
    back = m.decide(service, {"p0": R(1000, (T("x", 100, 0.01, 0.01),))}, previous=restarted)
    assert back.drift.status == c.FALSE


def test_top_lists_the_most_drifted_first_and_at_most_top() -> None:
    tensors = tuple(T(f"t{i}", 100, 0.1 * i, 0.05 * i) for i in range(8))
    view = m.decide(msvc(drift={"top": 2}), {"p0": R(1000, tensors)})
    assert [e.tensor for e in view.top] == ["t7", "t6"]
    assert m.fields(view)["monitoring"]["drift"][0] == {"tensor": "t7", "psi": 0.7, "drifted": True,
                                                      "pValue": float(f"{view.top[0].p_value:.1e}")}


@pytest.mark.parametrize(("quality", "readings", "status", "reason", "value"), [
    ({"minimum": 0.9, "minLabels": 100}, {"p0": R(quality={"accuracy": 0.5}, quality_labels=50)},
     c.UNKNOWN, m.NOT_ENOUGH_LABELS, 0.5),
    ({"minimum": 0.9, "minLabels": 100}, {"p0": R(quality={"accuracy": 0.5}, quality_labels=150)},
     c.TRUE, m.BELOW_MINIMUM, 0.5),
    ({"minimum": 0.9, "minLabels": 100}, {"p0": R(quality={"accuracy": 0.95}, quality_labels=150)},
     c.FALSE, m.WITHIN_BOUND, 0.95),
    # label-weighted over pods: (0.6*100 + 1.0*300) / 400 = 0.9
    ({"minimum": 0.9, "minLabels": 100}, {"p0": R(quality={"accuracy": 0.6}, quality_labels=100),
                                          "p1": R(quality={"accuracy": 1.0}, quality_labels=300)},
     c.FALSE, m.WITHIN_BOUND, 0.9),
    ({"metric": "rmse", "maximum": 2.0, "minLabels": 10}, {"p0": R(quality={"rmse": 3.5, "mae": 1}, quality_labels=20)},
     c.TRUE, m.ABOVE_MAXIMUM, 3.5),
    ({"metric": "f1_macro", "minimum": 0.5, "minLabels": 10}, {"p0": R(quality={"accuracy": 0.1, "f1_macro": 0.7},
                                                                       quality_labels=20)},
     c.FALSE, m.WITHIN_BOUND, 0.7),
])
def test_quality_decision(quality: dict[str, Any], readings: dict[str, m.PodReading], status: str, reason: str,
                          value: float) -> None:
    view = m.decide(msvc(quality=quality), readings)
    assert view.quality is not None
    assert (view.quality.status, view.quality.reason) == (status, reason), view.quality.message
    assert view.quality_value == pytest.approx(value)


def test_quality_turns_back_when_labels_are_good_again() -> None:
    service = msvc(quality={"minimum": 0.8, "minLabels": 10})
    bad = m.decide(service, {"p0": R(quality={"accuracy": 0.2}, quality_labels=50)})
    few = m.decide(service, {"p0": R(quality={"accuracy": 0.9}, quality_labels=2)}, previous=bad)
    good = m.decide(service, {"p0": R(quality={"accuracy": 0.9}, quality_labels=50)}, previous=few)
    assert [v.quality.status for v in (bad, few, good) if v.quality] == [c.TRUE, c.TRUE, c.FALSE]


@pytest.mark.parametrize(("before", "now", "status", "reason"), [
    ({}, {"p0": R(written=0, dropped=0)}, c.FALSE, m.NO_RECORDS),
    ({"p0": (10, 0)}, {"p0": R(written=20, dropped=0)}, c.FALSE, m.WRITING),
    ({"p0": (10, 0)}, {"p0": R(written=10, dropped=4)}, c.TRUE, m.RECORDS_DROPPED),
    ({"p0": (10, 4)}, {"p0": R(written=30, dropped=4)}, c.FALSE, m.WRITING),
    ({"p0": (500, 40)}, {"p0": R(written=5, dropped=0)}, c.FALSE, m.WRITING),  # restarted: counters start over
])
def test_capture_decision(before: dict[str, tuple[float, float]], now: dict[str, m.PodReading], status: str,
                          reason: str) -> None:
    view = m.decide(msvc(capture={"sink": "emptyDir"}), now, previous_counters=before)
    assert view.capture is not None and (view.capture.status, view.capture.reason) == (status, reason)


@pytest.mark.parametrize(("count", "bucketed"), [(0, 0), (0.5, 0), (1, 1), (3, 2), (7, 5), (10, 10), (19, 10),
                                                 (20, 20), (499, 200), (12345, 10000), (60000, 50000)])
def test_bucket(count: float, bucketed: int) -> None:
    assert m.bucket(count) == bucketed


def test_settle_keeps_the_view_while_scores_wobble() -> None:
    service = msvc(quality={"minimum": 0.5, "minLabels": 10})
    first = m.decide(service, {"p0": R(1000, (T("x", 100, 0.10, 0.03),), {"accuracy": 0.90}, 30)})
    wobble = m.decide(service, {"p0": R(1000, (T("x", 100, 0.12, 0.04),), {"accuracy": 0.905}, 30)}, previous=first)
    assert m.settle(first, wobble) is first
    moved = m.decide(service, {"p0": R(1000, (T("x", 100, 0.17, 0.04),), {"accuracy": 0.90}, 30)}, previous=first)
    assert m.settle(first, moved) is moved
    more_labels = m.decide(service, {"p0": R(1000, (T("x", 100, 0.10, 0.03),), {"accuracy": 0.90}, 50)}, previous=first)
    assert m.settle(first, more_labels) is more_labels  # 30 -> 50 crosses the 20 bucket


def test_conditions_with_monitoring_turned_off_go_false_not_away() -> None:
    off = ModelService.from_body(body(spec=PLAIN))
    assert m.conditions(off, None, None) == []
    previous = [{"type": m.DATA_DRIFT, "status": "True"}, {"type": "Ready", "status": "True"}]
    assert m.conditions(off, None, previous) == [
        c.ConditionSpec(m.DATA_DRIFT, c.FALSE, m.MONITORING_DISABLED, "spec.monitoring.enabled is false")]
    assert m.fields(None) == {"monitoring": None}


def test_conditions_before_the_first_measurement() -> None:
    specs = m.conditions(msvc(quality={"minimum": 0.5}), None, None)
    assert [(s.type, s.status, s.reason) for s in specs] == [(m.DATA_DRIFT, c.UNKNOWN, m.NOT_MEASURED),
                                                            (m.QUALITY_DEGRADED, c.UNKNOWN, m.NOT_MEASURED)]


def test_drift_true_is_a_warning() -> None:
    view = m.decide(msvc(), {"p0": R(1000, (T("x", 100, 0.9, 0.5),))})
    drift = m.conditions(msvc(), view, None)[0]
    assert drift.status == c.TRUE and drift.warning


# --- API ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "message"), [
    ({"runtime": "triton", "monitoring": {"enabled": True}}, "spec.monitoring needs runtime onnxruntime"),
    ({"monitoring": {"enabled": True, "reference": {"fromDataset": True}}}, "fromDataset needs spec.optimization.dataset"),
    ({"monitoring": {"quality": {"metric": "accuracy"}}}, "quality.minimum is required for metric accuracy"),
    ({"monitoring": {"quality": {"metric": "mae", "minimum": 0.5}}}, "quality.minimum does not apply to metric mae"),
    ({"monitoring": {"quality": {"metric": "top5", "minimum": 0.5}}}, "metric"),
    ({"monitoring": {"capture": {"sink": "ftp://x/y"}}}, "sink"),
    ({"monitoring": {"capture": {"sink": "pvc://claim/../etc"}}}, "must stay inside its claim"),
    ({"monitoring": {"window": 5}}, "window"),
])
def test_api_refuses_bad_monitoring_specs(spec: dict[str, Any], message: str) -> None:
    import pydantic

    with pytest.raises(pydantic.ValidationError, match=message):
        ModelService.from_body(body(spec={**PLAIN, **spec}))


def test_enabled_alone_is_useful() -> None:
    service = ModelService.from_body(body(spec={**PLAIN, "monitoring": {"enabled": True}}))
    mon = service.spec.monitoring
    assert (mon.sample_rate, mon.window, mon.drift.psi_threshold, mon.drift.p_value) == (1.0, 1000, 0.2, 0.01)
    assert not service.spec.monitoring_reference_from_dataset
    assert m.reference_source(service) == "first 1000 sampled requests of each pod"


# --- render ---------------------------------------------------------------------------------


def _pod(spec: dict[str, Any]) -> dict[str, Any]:
    objects = render_children(ModelService.from_body(body(spec=spec))).objects
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    return deployment["spec"]["template"]["spec"]


def _server(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c_ for c_ in pod["containers"] if c_["name"] == "server")


def test_render_without_monitoring_adds_nothing() -> None:
    pod = _pod(PLAIN)
    assert not any(a.startswith("--monitoring") or a.startswith("--capture") for a in _server(pod)["command"])
    assert "env" not in _server(pod) and "envFrom" not in _server(pod)
    assert "build-reference" not in [i["name"] for i in pod["initContainers"]]


def test_render_first_requests_reference() -> None:
    pod = _pod({**PLAIN, "monitoring": {"enabled": True, "sampleRate": 0.5, "reference": {"firstRequests": 200}}})
    command = _server(pod)["command"]
    joined = " ".join(command)
    assert "--monitoring --monitoring-sample-rate 0.5 --monitoring-window 1000" in joined
    assert "--drift-psi-threshold 0.2 --drift-p-value 0.01 --monitoring-reference-size 200" in joined
    assert "build-reference" not in [i["name"] for i in pod["initContainers"]]
    assert _server(pod)["env"] == [{"name": "MODELSHIP_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]


def test_render_dataset_reference_profiles_it_in_an_init_step() -> None:
    dataset = {"uri": "s3://bucket-1/data.npz", "sha256": "d" * 64}
    spec = {**PLAIN, "model": {**PLAIN["model"], "credentials": {"secretName": "s3"}},
            "optimization": {"enabled": True, "dataset": dataset}, "monitoring": {"enabled": True}}
    pod = _pod(spec)
    inits = {i["name"]: i for i in pod["initContainers"]}
    assert list(inits)[-1] == "build-reference" or list(inits)[-2:] == ["build-reference"]
    fetch = inits["fetch-dataset"]
    assert "--uri=s3://bucket-1/data.npz" in fetch["args"] and fetch["envFrom"] == [{"secretRef": {"name": "s3"}}]
    build = inits["build-reference"]
    assert build["args"] == ["reference", "--dataset", "/dataset/dataset.npz", "--model", "/models/clf/1/model.onnx",
                             "--output", "/monitoring/reference.json"]
    server = _server(pod)
    assert "--monitoring-reference" in server["command"] and "/monitoring/reference.json" in server["command"]
    assert {"name": "monitoring", "mountPath": "/monitoring", "readOnly": True} in server["volumeMounts"]
    assert [v["name"] for v in pod["volumes"]].count("dataset") == 1
    from test_render import assert_restricted

    assert_restricted(pod)


def test_render_dataset_reference_can_be_turned_off() -> None:
    spec = {**PLAIN, "optimization": {"enabled": True, "dataset": {"uri": "s3://bucket-1/d.npz", "sha256": "d" * 64}},
            "monitoring": {"enabled": True, "reference": {"fromDataset": False}}}
    assert "--monitoring-reference-size" in _server(_pod(spec))["command"]


@pytest.mark.parametrize(("sink", "flag", "volume"), [
    ("emptyDir", ["--capture-dir", "/capture"], {"name": "capture", "emptyDir": {"sizeLimit": "1Gi"}}),
    ("pvc://records/svc-a", ["--capture-dir", "/capture/svc-a"],
     {"name": "capture", "persistentVolumeClaim": {"claimName": "records"}}),
    ("s3://bucket-1/capture", ["--capture-uri", "s3://bucket-1/capture"], None),
])
def test_render_capture_sinks(sink: str, flag: list[str], volume: dict[str, Any] | None) -> None:
    spec = {**PLAIN, "model": {**PLAIN["model"], "credentials": {"secretName": "model-s3"}},
            "monitoring": {"enabled": True, "capture": {"sink": sink, "sampleRate": 0.25, "batchSize": 10}}}
    pod = _pod(spec)
    server = _server(pod)
    joined = " ".join(server["command"])
    assert " ".join(flag) in joined and "--capture-sample-rate 0.25 --capture-batch-size 10" in joined
    if volume is None:
        assert server["envFrom"] == [{"secretRef": {"name": "model-s3"}}]
        assert not any(v["name"] == "capture" for v in pod["volumes"])
    else:
        assert volume in pod["volumes"] and "envFrom" not in server
        assert {"name": "capture", "mountPath": "/capture"} in server["volumeMounts"]


def test_render_capture_credentials_override_the_models() -> None:
    spec = {**PLAIN, "model": {**PLAIN["model"], "credentials": {"secretName": "model-s3"}},
            "monitoring": {"enabled": True, "capture": {"sink": "s3://bucket-1/c", "credentials": {"secretName": "cap"}}}}
    assert _server(_pod(spec))["envFrom"] == [{"secretRef": {"name": "cap"}}]


def test_ks_p_value_is_finite_for_extremes() -> None:
    for d in (1e-9, 0.5, 1.0):
        assert math.isfinite(m.ks_p_value(d, 1e6, 1e6))


def test_a_dataset_that_cannot_be_profiled_is_named_in_ready() -> None:
    from modelship.status.diagnosis import diagnose
    from pods import pod, terminated

    line = "error: dataset.npz: input 'age' expects [batch, 2], the array 'age' is [100, 3]"
    problem = diagnose([pod(init=[terminated("fetch-model", 0), terminated("fetch-dataset", 0),
                                  terminated("build-reference", 2, line)])])
    assert problem is not None and problem.reason == "ReferenceBuildFailed"
    assert "exit code 2" in problem.message and line in problem.message and "fromDataset: false" in problem.message


# --- chart ----------------------------------------------------------------------------------


def test_the_chart_alerts_on_each_monitoring_condition_and_graphs_the_contract_series() -> None:
    """The PrometheusRule and the dashboard, as helm renders them with both turned on."""
    import json as json_

    from test_chart import _rendered

    documents = _rendered("--set", "prometheusRule.enabled=true", "--set", "grafanaDashboard.enabled=true")
    rule = next(d for d in documents if d["kind"] == "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    for condition_, alert in ((m.DATA_DRIFT, "ModelServiceDataDrift"), (m.QUALITY_DEGRADED, "ModelServiceQualityDegraded"),
                              (m.CAPTURE_DROPPING, "ModelServiceCaptureDropping")):
        assert f'condition="{condition_}"' in alerts[alert]["expr"] and alerts[alert]["for"] == "5m", alerts[alert]
    config = next(d for d in documents if d["kind"] == "ConfigMap" and "modelship-monitoring.json" in d.get("data", {}))
    dashboard = json_.loads(config["data"]["modelship-monitoring.json"])
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for name in (contracts.DRIFT_SCORE_METRIC, contracts.DRIFT_WINDOW_METRIC, contracts.DRIFT_REFERENCE_METRIC,
                 contracts.QUALITY_METRIC, contracts.QUALITY_LABELS_METRIC, f"{contracts.FEEDBACK_METRIC}_total",
                 f"{contracts.CAPTURE_METRIC}_total", "modelship_operator_monitoring_condition"):
        assert name in exprs, name


def test_the_operator_gauge_follows_the_conditions() -> None:
    from modelship.controller.metrics import OperatorMetrics

    metrics = OperatorMetrics()
    key = ("ns", "svc")
    metrics.observe_monitoring(key, {m.DATA_DRIFT: "True", m.QUALITY_DEGRADED: "False", m.CAPTURE_DROPPING: None})

    def value(condition_: str) -> float | None:
        return metrics.registry.get_sample_value("modelship_operator_monitoring_condition",
                                                 {"namespace": "ns", "modelservice": "svc", "condition": condition_})

    assert (value(m.DATA_DRIFT), value(m.QUALITY_DEGRADED), value(m.CAPTURE_DROPPING)) == (1.0, 0.0, None)
    metrics.observe_monitoring(key, {m.DATA_DRIFT: None})
    assert value(m.DATA_DRIFT) is None
    metrics.forget(key)
    assert value(m.QUALITY_DEGRADED) is None
