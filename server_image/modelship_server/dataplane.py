"""The protocol-independent data plane: health, metadata, config, statistics, inference.

REST and gRPC are thin adapters over this class: they decode, call one method,
encode. Everything that decides an answer (which model, is it ready, is the
input valid, what went wrong) lives here or below, once.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from tritonclient.grpc import model_config_pb2 as mc

from . import __version__, validation
from .errors import InvalidInput, ServingError, Unsupported
from .messages import InferRequest, InferResponse, Tensor
from .metrics import Metrics, ModelMetrics
from .registry import Registry, ServedModel
from .tracing import OFF_SETTING, Tracer

if TYPE_CHECKING:
    from .mirror import Mirror
    from .monitoring.monitor import Monitoring

log = logging.getLogger(__name__)

SERVER_NAME = "modelship"
EXTENSIONS = ["binary_tensor_data", "statistics", "model_configuration", "model_repository", "schedule_policy", "trace"]

_perf = time.perf_counter


class DataPlane:
    def __init__(self, registry: Registry, metrics: Metrics, tracer: Tracer | None = None) -> None:
        self.registry = registry
        self.metrics = metrics
        self.tracer = tracer
        self.draining = False
        self.inflight = 0
        self._model_metrics: dict[tuple[str, str], ModelMetrics] = {}
        self.monitoring: Monitoring | None = None  # set by the server with --monitoring
        self.mirror: Mirror | None = None  # set by the server with --mirror-to

    # -- health and metadata -----------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Every model loaded, not draining, and monitoring (when on) able to take samples."""
        mon = self.monitoring
        return not self.draining and self.registry.all_ready() and (mon is None or mon.ready)

    def server_metadata(self) -> dict:
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    def model_ready(self, name: str, version: str = "") -> bool:
        """Never raises: an unknown model is simply not ready (as Triton answers)."""
        m = self.registry.find(name, version)
        return bool(m is not None and m.ready and not self.draining)

    def model_ready_status(self, name: str, version: str = "") -> int:
        """HTTP's answer to a model readiness probe: 200 ready, 503 known but not ready, 404 unknown."""
        if self.model_ready(name, version):
            return 200
        return 404 if self.registry.find(name, version) is None else 503

    def check_model(self, name: str, version: str = "", protocol: str = "http") -> None:
        """Raise the precise 404 / 503 for a model that cannot take a request now, before its body is decoded.

        A full queue is answered here too: shedding before decoding keeps the CPU for
        the requests already admitted, so goodput holds under overload.
        """
        model = self.registry.get(name, version)
        try:
            model.scheduler.check_room()
        except ServingError as exc:
            self.count_rejected(name, version, protocol, exc)
            raise

    def count_rejected(self, name: str, version: str, protocol: str, exc: ServingError) -> None:
        """Count a request refused while decoding (before `infer`) under its model, by its outcome."""
        m = self.registry.find(name, version)
        if m is not None:
            self._metrics_for(m).requests[(protocol, exc.outcome)] += 1
            m.stats.request_done(False, 0)

    def model(self, name: str, version: str = "") -> ServedModel:
        """A known model in any state (metadata and config are answered while loading)."""
        m = self.registry.find(name, version)
        if m is None:
            self.registry.get(name, version)  # raises the precise 404 / 503
        return m

    def model_metadata(self, name: str, version: str = "") -> dict:
        m = self.model(name, version)
        mbs = m.policy.max_batch_size
        return {
            "name": m.name,
            "versions": sorted(self.registry.models[m.name], key=int),
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape(mbs)} for t in m.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape(mbs)} for t in m.outputs],
        }

    def model_config(self, name: str, version: str = "") -> mc.ModelConfig:
        return self.model(name, version).config

    def repository_index(self, ready_only: bool = False) -> list[dict]:
        out = []
        for m in sorted(self.registry.all(), key=lambda m: (m.name, int(m.version))):
            if ready_only and not m.ready:
                continue
            out.append({"name": m.name, "version": m.version, "state": m.state, "reason": m.reason})
        if not ready_only:
            for name, reason in sorted(self.registry.failed.items()):
                out.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": reason})
        return out

    def statistics(self, name: str = "", version: str = "") -> list:
        if name:
            if version:
                return [self.model(name, version).stats]
            self.model(name)  # 404 for unknown
            return [m.stats for m in sorted(self.registry.models[name].values(), key=lambda m: int(m.version))]
        return [m.stats for m in self.registry.all()]

    def trace_setting(self, name: str = "", changes: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
        """Triton's trace extension: read (no changes) or change the server-wide trace settings.

        Settings are server-wide: a model's settings are the server's (a model name is checked,
        then answered with them); changing them for one model alone is refused, as is turning
        tracing on in a server started without it (there is no exporter to send spans to).
        """
        if name:
            self.model(name)  # 404 for an unknown model
            if changes:
                raise InvalidInput("trace settings are server-wide on this server: send the change without a model name")
        tracer = self.tracer
        if tracer is None:
            if changes:
                raise InvalidInput("tracing is off on this server; start it with --trace-config mode=opentelemetry "
                                   "(spec.tracing.enabled in a ModelService) to change trace settings")
            return dict(OFF_SETTING)
        if not changes:
            return tracer.setting()
        try:
            return tracer.update(changes)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None

    # -- inference ------------------------------------------------------------

    def _metrics_for(self, m: ServedModel) -> ModelMetrics:
        key = (m.name, m.version)
        mm = self._model_metrics.get(key)
        if mm is None:
            mm = self._model_metrics[key] = self.metrics.for_model(m.name, m.version)
        return mm

    async def infer(self, request: InferRequest) -> InferResponse:
        model = self.registry.get(request.model, request.version)
        mm = self._metrics_for(model)
        start = _perf()
        self.inflight += 1
        mm.inflight += 1
        outcome = "success"
        mon = self.monitoring
        try:
            if self.mirror is not None:
                self.mirror.refuse_mirrored(request.id)
            feeds, batch = validation.check_request(request, model)
            timeout = request.timeout_s or model.default_timeout_s or None
            outputs = await model.scheduler.submit(feeds, batch, timeout, request.trace)
            if mon is not None:
                if not request.id:  # the OIP id feedback refers to: made here, returned in the response
                    request.id = mon.new_id(model)
                mon.after_infer(model, request, outputs)
            if self.mirror is not None:  # queued for the senders; never waits, never raises
                self.mirror.offer(model.name, model.version, request.id,
                                  {t.name: (t.datatype, t.data) for t in request.inputs}, outputs,
                                  authorization=request.authorization)
            return self._response(request, model, outputs)
        except ServingError as exc:
            outcome = exc.outcome
            raise
        except Exception as exc:  # a bug, not the client's fault: say so, keep serving
            outcome = "error"
            log.exception("model %s: unexpected error", model.name)
            raise ServingError(f"internal error while serving model '{model.name}': {type(exc).__name__}: {exc}") from None
        finally:
            elapsed = _perf() - start
            self.inflight -= 1
            mm.inflight -= 1
            mm.requests[(request.protocol, outcome)] += 1
            mm.request_duration[request.protocol].observe(elapsed)
            model.stats.request_done(outcome == "success", int(elapsed * 1e9))

    # -- monitoring -------------------------------------------------------------

    def _monitoring(self) -> Monitoring:
        if self.monitoring is None:
            raise Unsupported("monitoring is off on this server: start it with --monitoring")
        return self.monitoring

    def monitoring_snapshot(self, name: str, version: str = "") -> dict:
        mon = self._monitoring()
        return mon.snapshot(self.model(name, version))

    def feedback(self, name: str, version: str, items: list) -> list[dict]:
        """Join labels to predictions; one result per item (outcome, and error when not joined)."""
        mon = self._monitoring()
        return mon.feedback(self.model(name, version), items)

    def forward_target(self, name: str, request_id: object) -> str | None:
        mon = self.monitoring
        return mon.forward_target(name, request_id) if mon is not None else None

    def forwarded(self, name: str, version: str, count: int) -> None:
        self._monitoring().forwarded(self.model(name, version), count)

    def _response(self, request: InferRequest, model: ServedModel, outputs: dict) -> InferResponse:
        specs = model.output_specs
        if request.outputs is None:
            names = [o.name for o in model.outputs]
            binary = [request.binary_output] * len(names)
        else:
            names = [o.name for o in request.outputs]
            binary = [o.binary if o.binary is not None else request.binary_output for o in request.outputs]
        tensors = []
        for n in names:
            arr = outputs[n]
            tensors.append(Tensor(n, specs[n].datatype, list(arr.shape), arr))
        return InferResponse(model.name, model.version, request.id, tensors, binary)
