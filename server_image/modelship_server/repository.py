"""The model repository in Triton's layout and its `config.pbtxt`, parsed and completed.

    <repo>/<model>/config.pbtxt          optional, Triton's ModelConfig text format
    <repo>/<model>/<version>/model.onnx  one folder per integer version

The config is parsed with the ModelConfig protobuf shipped in tritonclient, so a
repository that Triton serves is served here unchanged. What the config leaves
out (inputs, outputs, batching) is filled in from the ONNX model, as Triton's
auto-complete does; what it states is checked against the model.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from . import batchability, datatypes
from .errors import BATCHING_NOT_SUPPORTED, ModelLoadError

log = logging.getLogger(__name__)

DEFAULT_MODEL_FILENAME = "model.onnx"


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One input or output as clients see it; `dims` exclude the batch dimension."""

    name: str
    datatype: str
    dims: tuple[int, ...]  # -1 means any size
    optional: bool = False

    def shape(self, max_batch_size: int) -> list[int]:
        """The full shape a client sends, with a leading -1 when the model batches."""
        return ([-1] if max_batch_size > 0 else []) + list(self.dims)


@dataclasses.dataclass(frozen=True)
class BatchingPolicy:
    """How the scheduler forms batches and bounds its queue (from dynamic_batching)."""

    max_batch_size: int  # 0: the model does not batch; requests run one by one
    dynamic: bool  # dynamic_batching present: concatenate queued requests
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_s: float = 0.0
    max_queue_size: int = 0  # 0: use the server default
    default_timeout_s: float = 0.0  # 0: no timeout unless the request sets one


@dataclasses.dataclass(frozen=True)
class ModelVersionDir:
    name: str
    version: str
    model_path: Path


def read_config(model_dir: Path) -> mc.ModelConfig:
    """Parse `config.pbtxt` if present; an empty config otherwise."""
    config = mc.ModelConfig()
    path = model_dir / "config.pbtxt"
    if path.is_file():
        try:
            text_format.Parse(path.read_text(), config)
        except text_format.ParseError as exc:
            raise ModelLoadError(f"{path}: not a valid Triton model config: {exc}") from None
    if config.name and config.name != model_dir.name:
        raise ModelLoadError(
            f"{path}: name {config.name!r} does not match the model folder {model_dir.name!r}"
        )
    config.name = model_dir.name
    if config.backend and config.backend not in ("onnxruntime",):
        raise ModelLoadError(
            f"{path}: backend {config.backend!r} is not served here; this server runs 'onnxruntime'"
        )
    if config.platform and config.platform != "onnxruntime_onnx":
        raise ModelLoadError(
            f"{path}: platform {config.platform!r} is not served here; expected 'onnxruntime_onnx'"
        )
    config.platform = "onnxruntime_onnx"
    config.backend = "onnxruntime"
    return config


def states_max_batch_size(model_dir: Path) -> bool:
    """Whether config.pbtxt sets max_batch_size, even to 0 (proto3 cannot tell 0 from unset)."""
    path = model_dir / "config.pbtxt"
    return path.is_file() and re.search(r"(?m)^\s*max_batch_size\s*:", path.read_text()) is not None


def list_models(repository: Path) -> list[Path]:
    """Model folders of a repository (hidden folders are skipped)."""
    return sorted(
        p for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")
    )


def select_versions(model_dir: Path, config: mc.ModelConfig) -> list[ModelVersionDir]:
    """The versions to serve under the config's version_policy (default: latest 1)."""
    filename = config.default_model_filename or DEFAULT_MODEL_FILENAME
    found = sorted(
        (int(p.name), p)
        for p in model_dir.iterdir()
        if p.is_dir() and p.name.isdigit() and (p / filename).is_file()
    )
    if not found:
        raise ModelLoadError(
            f"{model_dir}: no version folder with {filename} (expected {model_dir}/<version>/{filename})"
        )
    policy = config.version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        chosen = found
    elif kind == "specific":
        wanted = set(policy.specific.versions)
        chosen = [(v, p) for v, p in found if v in wanted]
        missing = wanted - {v for v, _ in chosen}
        if missing:
            raise ModelLoadError(
                f"{model_dir}: version_policy asks for versions {sorted(missing)} "
                f"but only {[v for v, _ in found]} exist"
            )
    else:
        n = policy.latest.num_versions if kind == "latest" and policy.latest.num_versions else 1
        chosen = found[-n:]
    return [ModelVersionDir(model_dir.name, str(v), p / filename) for v, p in chosen]


def _onnx_dims(shape: list) -> tuple[int, ...]:
    # ORT reports symbolic or unknown dims as str / None: both are "any size".
    return batchability.dims_of(shape)


def model_tensors(config: mc.ModelConfig, onnx_inputs: list, onnx_outputs: list) -> list[batchability.Tensor]:
    """The tensors a batch is stacked on and split along: every model input, and the outputs
    the config serves (all of them when it declares none)."""
    served = {o.name for o in config.output}
    return [batchability.Tensor(t.name, "input", _onnx_dims(t.shape)) for t in onnx_inputs] + [
        batchability.Tensor(t.name, "output", _onnx_dims(t.shape))
        for t in onnx_outputs if not served or t.name in served
    ]


def complete_config(
    config: mc.ModelConfig,
    onnx_inputs: list,
    onnx_outputs: list,
    *,
    default_max_batch_size: int,
    batching_stated: bool = False,
) -> mc.ModelConfig:
    """Fill in what the config leaves out from the ONNX model's I/O, and check the rest.

    `onnx_inputs` / `onnx_outputs` are ORT NodeArg lists (name, type, shape).
    Triton's rules: a config that sets max_batch_size > 0 means every tensor
    has a leading batch dimension that `dims` leave out, and one that says so
    against the model is a load failure (BatchingNotSupported), never a model
    that loads and then refuses every request; when the config says nothing,
    the model batches if every input and output has a variable first dimension
    (`batchability`), and then gets dynamic batching with default settings.
    """
    where = f"model {config.name!r}"
    problem = batchability.batch_problem(model_tensors(config, onnx_inputs, onnx_outputs))
    if not batching_stated and not config.max_batch_size and not config.input and not config.output:
        if problem is None and default_max_batch_size > 0:
            config.max_batch_size = default_max_batch_size
            if not config.HasField("dynamic_batching") and not config.HasField("sequence_batching"):
                config.dynamic_batching.SetInParent()
    mbs = config.max_batch_size
    if mbs < 0:
        raise ModelLoadError(f"{where}: max_batch_size must be >= 0, got {mbs}")
    if mbs > 0 and problem is not None:
        raise ModelLoadError(
            f"{where}: config.pbtxt sets max_batch_size {mbs}, but the model cannot batch: {problem}. "
            "Set max_batch_size: 0 (and remove dynamic_batching) to serve it one request at a time",
            reason=BATCHING_NOT_SUPPORTED,
        )

    for kind, declared, actual in (
        ("input", config.input, onnx_inputs),
        ("output", config.output, onnx_outputs),
    ):
        by_name = {t.name: t for t in actual}
        for d in declared:
            t = by_name.get(d.name)
            if t is None:
                raise ModelLoadError(
                    f"{where}: config {kind} {d.name!r} is not in the ONNX model; "
                    f"its {kind}s are {sorted(by_name)}"
                )
            want = datatypes.from_config(mc.DataType.Name(d.data_type))
            have = datatypes.from_ort(t.type)
            if want != have:
                raise ModelLoadError(
                    f"{where}: config {kind} {d.name!r} has data_type {datatypes.to_config(want)} "
                    f"but the ONNX model has {datatypes.to_config(have)}"
                )
            dims = _onnx_dims(t.shape)
            if mbs > 0:
                if not dims:
                    raise ModelLoadError(
                        f"{where}: max_batch_size is {mbs} but ONNX {kind} {d.name!r} has no batch dimension"
                    )
                dims = dims[1:]
            if d.HasField("reshape"):
                continue  # the config reshapes; trust its dims as Triton does
            if len(d.dims) != len(dims) or any(
                a != b and a != -1 and b != -1 for a, b in zip(d.dims, dims)
            ):
                raise ModelLoadError(
                    f"{where}: config {kind} {d.name!r} has dims {list(d.dims)} but the ONNX model has "
                    f"{list(dims)}" + (" (after the batch dimension)" if mbs > 0 else "")
                )
        if not declared:
            for t in actual:
                dims = _onnx_dims(t.shape)
                if mbs > 0:
                    dims = dims[1:]
                entry = declared.add()
                entry.name = t.name
                entry.data_type = mc.DataType.Value(datatypes.to_config(datatypes.from_ort(t.type)))
                entry.dims.extend(dims)
        else:
            names = {d.name for d in declared}
            if kind == "input":
                missing = [t.name for t in actual if t.name not in names]
                if missing:
                    raise ModelLoadError(
                        f"{where}: the ONNX model needs inputs {missing} that the config does not declare"
                    )
    if not config.instance_group:
        group = config.instance_group.add()
        group.count = 1
        group.kind = mc.ModelInstanceGroup.KIND_AUTO
    for group in config.instance_group:
        if group.count <= 0:
            group.count = 1
    return config


def tensor_specs(config: mc.ModelConfig) -> tuple[list[TensorSpec], list[TensorSpec]]:
    def spec(t, optional: bool) -> TensorSpec:
        return TensorSpec(
            t.name, datatypes.from_config(mc.DataType.Name(t.data_type)), tuple(t.dims), optional
        )

    return (
        [spec(t, t.optional) for t in config.input],
        [spec(t, False) for t in config.output],
    )


def batching_policy(config: mc.ModelConfig) -> BatchingPolicy:
    dyn = config.dynamic_batching if config.HasField("dynamic_batching") else None
    mbs = config.max_batch_size
    if dyn is None or mbs == 0:
        return BatchingPolicy(max_batch_size=mbs, dynamic=False)
    bad = [b for b in dyn.preferred_batch_size if b <= 0 or b > mbs]
    if bad:
        raise ModelLoadError(
            f"model {config.name!r}: preferred_batch_size {bad} must be between 1 and max_batch_size {mbs}"
        )
    queue = dyn.default_queue_policy
    return BatchingPolicy(
        max_batch_size=mbs,
        dynamic=True,
        preferred_batch_sizes=tuple(sorted(set(dyn.preferred_batch_size))),
        max_queue_delay_s=dyn.max_queue_delay_microseconds / 1e6,
        max_queue_size=queue.max_queue_size,
        default_timeout_s=queue.default_timeout_microseconds / 1e6,
    )


def config_parameter(config: mc.ModelConfig, key: str) -> str | None:
    """A `parameters { key: ... value: { string_value: ... } }` entry, as Triton's ORT backend reads them."""
    if key in config.parameters:
        return config.parameters[key].string_value
    return None


def check_repository(path: str) -> Path:
    """The repository path, or a ValueError saying what is wrong with it."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"model repository {path!r} does not exist")
    if not p.is_dir():
        raise ValueError(f"model repository {path!r} is not a directory")
    if not os.access(p, os.R_OK | os.X_OK):
        raise ValueError(f"model repository {path!r} is not readable")
    return p
