"""The models being served: load each version (sessions, config, warm-up), track its state.

Loading is blocking work (ONNX Runtime builds its graph) and runs in a thread,
so the HTTP/gRPC endpoints answer liveness while a large model loads. A
version is READY only after warm-up, and the server is ready only when every
version is.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from modelship.contracts import INPUTS_CONFIG_PARAMETER

from . import datatypes, gpu, repository, runtime
from .batching import Scheduler
from .errors import WARMUP_FAILED, ModelLoadError, ModelNotFound, Unavailable
from .feeds import InputHint, InputSpec, InputsError, check_hints, parse_hints
from .feeds import generate as generate_feeds
from .metrics import Metrics
from .placement import InlineBudget, SwitchInterval
from .repository import BatchingPolicy, TensorSpec
from .stats import ModelStats

log = logging.getLogger(__name__)

LOADING, READY, UNAVAILABLE = "LOADING", "READY", "UNAVAILABLE"


@dataclass(frozen=True)
class LoadOptions:
    runtime: runtime.RuntimeOptions
    default_max_batch_size: int = 4
    max_queue_size: int = 256
    default_timeout_s: float = 0.0
    inline_threshold_s: float = 50e-3
    inline_turn_budget_s: float = 50e-3
    thread_switch_interval_s: float = 500e-6


class ServedModel:
    """One model version: its completed config, metadata, sessions and scheduler."""

    def __init__(self, name: str, version: str, model_path: Path) -> None:
        self.name = name
        self.version = version
        self.model_path = model_path
        self.state = LOADING
        self.reason = ""
        self.failure = ""  # the ModelLoadError reason when state is UNAVAILABLE
        self.config = mc.ModelConfig(name=name)
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.input_specs: dict[str, TensorSpec] = {}
        self.output_specs: dict[str, TensorSpec] = {}
        self.policy = BatchingPolicy(max_batch_size=0, dynamic=False)
        self.scheduler: Scheduler | None = None
        self.sessions: list = []
        self.devices: list[int | None] = []  # each session's CUDA device id (None: CPU)
        self.providers: list[str] = []
        self.stats = ModelStats(name, version)
        self.load_seconds = 0.0
        self.default_timeout_s = 0.0
        self.warm_run_ns: float | None = None  # a batch-1 run time measured at warm-up

    @property
    def ready(self) -> bool:
        return self.state == READY


class Registry:
    """name -> {version -> ServedModel}, plus the loading of a whole repository."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.models: dict[str, dict[str, ServedModel]] = {}
        self.failed: dict[str, str] = {}  # model folders that could not even be read

    def get(self, name: str, version: str = "") -> ServedModel:
        versions = self.models.get(name)
        if not versions:
            if name in self.failed:
                raise Unavailable(f"model '{name}' failed to load: {self.failed[name]}")
            raise ModelNotFound(f"unknown model '{name}'; this server serves {sorted(self.models)}")
        if version:
            model = versions.get(version)
            if model is None:
                raise ModelNotFound(
                    f"unknown version '{version}' of model '{name}'; served versions: {sorted(versions, key=int)}"
                )
        else:
            model = versions[max(versions, key=int)]
        if model.state != READY:
            why = f": {model.reason}" if model.reason else ""
            raise Unavailable(f"model '{name}' version {model.version} is {model.state.lower()}{why}")
        return model

    def find(self, name: str, version: str = "") -> ServedModel | None:
        """Like get() but None for unknown, and whatever the state."""
        versions = self.models.get(name)
        if not versions:
            return None
        if version:
            return versions.get(version)
        return versions[max(versions, key=int)]

    def all(self) -> list[ServedModel]:
        return [m for vs in self.models.values() for m in vs.values()]

    def all_ready(self) -> bool:
        models = self.all()
        return bool(models) and not self.failed and all(m.ready for m in models)

    def discover(self, repo: Path) -> None:
        """Read configs and version folders; register every version as LOADING."""
        for model_dir in repository.list_models(repo):
            try:
                config = repository.read_config(model_dir)
                versions = repository.select_versions(model_dir, config)
            except ModelLoadError as exc:
                log.error("model %s: %s", model_dir.name, exc)
                self.failed[model_dir.name] = str(exc)
                continue
            for v in versions:
                m = ServedModel(v.name, v.version, v.model_path)
                m.config = config
                self.models.setdefault(v.name, {})[v.version] = m

    async def load_all(self, options: LoadOptions) -> None:
        """Load every discovered version, in threads, then start its scheduler."""
        loop = asyncio.get_running_loop()
        availability = runtime.provider_availability()
        # One budget for every model: it bounds how long the one event loop runs models inline.
        inline = InlineBudget(int(options.inline_threshold_s * 1e9), int(options.inline_turn_budget_s * 1e9))
        switch = SwitchInterval(options.thread_switch_interval_s)
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="load") as pool:
            jobs = [
                (m, loop.run_in_executor(pool, _load_version, m, options, availability))
                for m in self.all()
            ]
            for model, job in jobs:
                mm = self.metrics.for_model(model.name, model.version)
                try:
                    await job
                except ModelLoadError as exc:
                    model.state, model.reason, model.failure = UNAVAILABLE, str(exc), exc.reason
                    log.error("model %s version %s: %s", model.name, model.version, exc)
                    mm.ready = 0
                    continue
                except Exception as exc:  # noqa: BLE001 - a bad model must not take the server down
                    model.state, model.reason = UNAVAILABLE, f"{type(exc).__name__}: {exc}"
                    model.failure = "ModelLoadFailed"
                    log.exception("model %s version %s failed to load", model.name, model.version)
                    mm.ready = 0
                    continue
                model.scheduler = Scheduler(
                    name=model.name,
                    version=model.version,
                    policy=model.policy,
                    runners=[_runner(s, model, d) for s, d in zip(model.sessions, model.devices)],
                    output_names=[o.name for o in model.outputs],
                    max_queue_size=options.max_queue_size,
                    metrics=mm,
                    stats=model.stats,
                    inline_budget=inline,
                    switch_interval=switch,
                )
                model.scheduler.start(run_ns_hint=model.warm_run_ns)
                model.state = READY
                mm.ready = 1
                mm.load_duration = model.load_seconds
                log.info(
                    "model %s version %s ready in %.2f s (%d instance(s), providers %s, max_batch_size %d, dynamic batching %s)",
                    model.name, model.version, model.load_seconds, len(model.sessions),
                    model.providers, model.policy.max_batch_size, "on" if model.policy.dynamic else "off",
                )

    async def stop(self) -> None:
        for m in self.all():
            if m.scheduler is not None:
                await m.scheduler.stop()


def _runner(session, model: ServedModel, device_id: int | None = None):
    names = [o.name for o in model.outputs]
    bytes_inputs = [i.name for i in model.inputs if i.datatype == "BYTES"]
    bytes_outputs = any(o.datatype == "BYTES" for o in model.outputs)
    run = session.run
    if gpu.first_provider(session) != "CPUExecutionProvider" and not bytes_inputs and not bytes_outputs:
        return gpu.bound_runner(session, names, device_id)  # outputs stay on the GPU until one copy back
    if not bytes_inputs:
        direct = _direct_run(session)
        if direct is not None:
            return lambda feeds: direct(names, feeds, None)
        return lambda feeds: run(names, feeds)

    def run_with_strings(feeds):
        # ORT wants str elements for string tensors; the wire gives bytes.
        feeds = dict(feeds)
        for n in bytes_inputs:
            if n in feeds:
                a = feeds[n]
                feeds[n] = np.array([v.decode() if isinstance(v, bytes) else v for v in a.ravel()], dtype=object).reshape(a.shape)
        return run(names, feeds)

    return run_with_strings


def _direct_run(session):
    """The session's native run, without the Python wrapper's per-call checks (~3-5 µs a call,
    a tenth of a small model's whole gRPC path): input names and required inputs are checked
    by validation.check_request before a request is queued, we never pass OrtValues, and a CPU
    session has no provider to fall back from. None when this onnxruntime has no such method."""
    native = getattr(session, "_sess", None)
    run = getattr(native, "run", None)
    return run if callable(run) else None


def _load_version(model: ServedModel, options: LoadOptions, availability: dict) -> None:
    """Blocking: build sessions, complete the config, warm every session up."""
    start = time.perf_counter()
    config = mc.ModelConfig()
    config.CopyFrom(model.config)
    providers, why = runtime.choose_providers(config, options.runtime, availability)
    try:
        devices = gpu.session_devices(config, gpu.visible_devices(os.environ))
    except ValueError as exc:
        raise ModelLoadError(f"{model.model_path}: {exc}") from None
    first = runtime.create_session(model.model_path, config, options.runtime, gpu.on_device(providers, devices[0]))
    config = repository.complete_config(
        config, first.get_inputs(), first.get_outputs(),
        default_max_batch_size=options.default_max_batch_size,
        batching_stated=repository.states_max_batch_size(model.model_path.parent.parent),
    )
    model.config = config
    model.inputs, model.outputs = repository.tensor_specs(config)
    model.input_specs = {t.name: t for t in model.inputs}
    model.output_specs = {t.name: t for t in model.outputs}
    model.policy = repository.batching_policy(config)
    model.default_timeout_s = model.policy.default_timeout_s or options.default_timeout_s
    # One session per instance, each on its instance group's GPU (gpu.session_devices: Triton's
    # placement); the completed config may have more instances than the first guess only if
    # complete_config added a group, so the placement is recomputed on it.
    devices = gpu.session_devices(config, gpu.visible_devices(os.environ))
    sessions = [first] + [
        runtime.create_session(model.model_path, config, options.runtime, gpu.on_device(providers, device))
        for device in devices[1:]
    ]
    model.sessions = sessions
    model.devices = devices
    model.providers = first.get_providers()
    on_gpu = any(p in model.providers for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider"))
    for group in config.instance_group:  # report what KIND_AUTO became, as Triton does
        if group.kind == mc.ModelInstanceGroup.KIND_AUTO:
            group.kind = mc.ModelInstanceGroup.KIND_GPU if on_gpu else mc.ModelInstanceGroup.KIND_CPU
    log.info("model %s version %s: execution providers %s (%s)", model.name, model.version, model.providers, why)
    warm_up(model, sessions)
    model.load_seconds = time.perf_counter() - start


def warm_up(model: ServedModel, sessions: list) -> None:
    """Run every warm-up feed on every session; a failure is a load failure (WarmupFailed).

    Ready means the model answers: a model that cannot answer its own warm-up would
    otherwise be reported ready and then fail every request. The error names the feed's
    shapes, so the fix (model_warmup in config.pbtxt, or the shapes declared for the
    model) is clear."""
    names = [o.name for o in model.outputs]
    for index, feeds in enumerate(warmup_feeds(model)):
        for s in sessions:
            try:
                s.run(names, feeds)
                if model.warm_run_ns is None:  # time a second, warm run of the first sample
                    t = time.perf_counter_ns()
                    s.run(names, feeds)
                    model.warm_run_ns = time.perf_counter_ns() - t
            except Exception as exc:  # noqa: BLE001 - whatever ORT raises, the model cannot answer
                shapes = ", ".join(f"{n} {list(np.shape(a))}" for n, a in feeds.items())
                source = "the config's model_warmup sample" if model.config.model_warmup else "generated inputs"
                detail = " ".join(f"{type(exc).__name__}: {exc}".split())
                if model.config.model_warmup:
                    fix = ""
                elif index > 0 and model.policy.max_batch_size > 1:  # batch 1 answered, a full batch did not
                    fix = ("; it answered a batch of 1, so it may not batch as its dims claim: turn batching off "
                           "(max_batch_size: 0, or spec.batching.enabled: false)")
                else:
                    fix = ("; give the model inputs it answers: model_warmup samples in config.pbtxt, or the typical "
                           "shapes and values of its inputs where the deployment declares them")
                raise ModelLoadError(
                    f"model {model.name!r} version {model.version}: warm-up inference failed on {source} "
                    f"({shapes}): {detail}{fix}",
                    reason=WARMUP_FAILED,
                ) from None


def warmup_feeds(model: ServedModel) -> list[dict[str, np.ndarray]]:
    """Config `model_warmup` samples if any, else the declared inputs (else zeros) at batch 1,
    at max_batch_size and at the declared maxShape."""
    config = model.config
    feeds_list = []
    mbs = model.policy.max_batch_size
    if config.model_warmup:
        for w in config.model_warmup:
            feeds = {}
            for name, spec in w.inputs.items():
                dtype = datatypes.to_numpy(datatypes.from_config(mc.DataType.Name(spec.data_type)))
                shape = ([max(w.batch_size, 1)] if mbs > 0 else []) + [max(d, 1) for d in spec.dims]
                if spec.input_data_file:
                    raw = (model.model_path.parent.parent / "warmup" / spec.input_data_file).read_bytes()
                    arr = np.frombuffer(raw, dtype=dtype)[: int(np.prod(shape))].reshape(shape)
                elif spec.random_data and dtype.kind == "f":
                    arr = np.random.default_rng(0).random(shape).astype(dtype)
                else:
                    arr = np.zeros(shape, dtype=dtype)
                feeds[name] = arr
            feeds_list.extend([feeds] * max(w.count, 1))
        return feeds_list
    # Declared inputs (feeds.py) give the shapes and values the model will see; without
    # them, zeros with free dimensions as 1. At batch 1, at max_batch_size, and at the
    # declared maxShape, so the largest request the user expects has run once before Ready.
    specs = [InputSpec(t.name, np.dtype(object) if t.datatype == "BYTES" else datatypes.to_numpy(t.datatype),
                             tuple(None if d < 0 else d for d in t.shape(mbs)))
             for t in model.inputs]
    hints = declared_inputs(model, specs)
    sizes = [1, mbs] if mbs > 1 else [1] if mbs == 1 else [None]
    for b in sizes:
        feeds_list += generate_feeds(specs, hints, 1, batch=b, zeros=True)
    if any(h.max_shape is not None for h in hints):
        feeds_list += generate_feeds(specs, hints, 1, batch=None, which="maxShape", zeros=True)
    return feeds_list


def declared_inputs(model: ServedModel, specs: list[InputSpec]) -> list[InputHint]:
    """The config's `modelship_inputs` parameter (what spec.model.inputs declares), checked
    against the model; a contradiction fails the load with the input, expected and actual."""
    text = repository.config_parameter(model.config, INPUTS_CONFIG_PARAMETER)
    try:
        hints = parse_hints(text, where=f"config parameter {INPUTS_CONFIG_PARAMETER}")
        check_hints(specs, hints)
    except InputsError as exc:
        raise ModelLoadError(f"model {model.name}: {exc}") from None
    return hints
