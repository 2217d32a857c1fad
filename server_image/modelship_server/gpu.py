"""GPU serving decisions as pure functions: which device each session runs on, the provider
options for it, and the I/O-bound runner that keeps a CUDA session's outputs on the device
until the one copy back.

Kubernetes' NVIDIA device plugin gives a container its GPUs through `CUDA_VISIBLE_DEVICES`
(indices, `GPU-<uuid>` or, for MIG slices, `MIG-<uuid>`); CUDA renumbers what is visible from
0, so a config's `gpus: [n]` means the n-th *visible* device. Nothing here needs a GPU to be
decided, so it is unit-tested on CPU (tests/server/test_gpu_units.py); what needs one is in
tests/server/test_gpu.py and benchmarks/gpu_check.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc


@dataclasses.dataclass(frozen=True)
class VisibleDevices:
    """What `CUDA_VISIBLE_DEVICES` says; `count` None: unset, every device of the node is visible."""

    ids: tuple[str, ...] | None
    problem: str | None = None  # a value CUDA would read as "no devices", said in words

    @property
    def count(self) -> int | None:
        return None if self.ids is None else len(self.ids)

    @property
    def mig(self) -> bool:
        return bool(self.ids) and all(i.startswith("MIG-") for i in self.ids or ())


def visible_devices(env: Mapping[str, str]) -> VisibleDevices:
    """Parse `CUDA_VISIBLE_DEVICES` as CUDA does: a comma list; an empty value, `NoDevFiles`
    or `void` hides every device; CUDA stops at the first entry it cannot read."""
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return VisibleDevices(None)
    value = raw.strip()
    if value in ("", "NoDevFiles", "void", "none"):
        return VisibleDevices((), problem=f"CUDA_VISIBLE_DEVICES={raw!r} hides every GPU")
    ids: list[str] = []
    for item in (part.strip() for part in value.split(",")):
        if not item or not (item.isdigit() or item.startswith(("GPU-", "MIG-"))):
            problem = f"CUDA_VISIBLE_DEVICES entry {item!r} is neither an index nor a GPU-/MIG- UUID; CUDA ignores it " \
                      "and every entry after it"
            return VisibleDevices(tuple(ids), problem=problem)
        ids.append(item)
    return VisibleDevices(tuple(ids))


def session_devices(config: mc.ModelConfig, visible: VisibleDevices) -> list[int | None]:
    """The CUDA device id of each session, one entry per instance, in config order.

    As Triton places instances: a KIND_GPU (or KIND_AUTO) group with `gpus` puts `count`
    instances on each listed device; without `gpus`, `count` on each visible device (one
    device when visibility is unknown: unset, the node's count is not ours to guess).
    KIND_CPU groups get None. ValueError, naming the group, for a device that is not visible.
    """
    devices: list[int | None] = []
    for group in config.instance_group or [mc.ModelInstanceGroup(count=1)]:
        count = max(group.count, 1)
        if group.kind == mc.ModelInstanceGroup.KIND_CPU:
            devices += [None] * count
            continue
        listed = list(group.gpus)
        if not listed:
            listed = list(range(visible.count if visible.count else 1))
        for gpu in listed:
            if visible.count is not None and not 0 <= gpu < visible.count:
                name = group.name or "unnamed"
                raise ValueError(f"instance_group {name!r} asks for gpus [{gpu}], but the container sees "
                                 f"{visible.count} GPU(s) (CUDA_VISIBLE_DEVICES={','.join(visible.ids or ()) or 'empty'}); "
                                 f"gpus index the visible devices from 0")
            devices += [gpu] * count
    return devices


def cuda_options(device_id: int | None, *, arena_extend: str = "kSameAsRequested") -> dict[str, str]:
    """CUDA provider options for one session. `kSameAsRequested` grows the arena by what a
    call needs rather than doubling it, so several sessions share a GPU (or a MIG slice)
    without one reserving the others' memory."""
    options = {"arena_extend_strategy": arena_extend, "cudnn_conv_algo_search": "HEURISTIC"}
    if device_id is not None:
        options["device_id"] = str(device_id)
    return options


def on_device(providers: Sequence[Any], device_id: int | None) -> list[Any]:
    """The same provider list with every GPU provider's device_id set to `device_id`."""
    out: list[Any] = []
    for provider in providers:
        name, options = (provider, {}) if isinstance(provider, str) else (provider[0], dict(provider[1]))
        if name in ("CUDAExecutionProvider", "TensorrtExecutionProvider") and device_id is not None:
            options["device_id"] = str(device_id)
        out.append((name, options) if options else name)
    return out


def first_provider(session: Any) -> str:
    providers = session.get_providers()
    return providers[0] if providers else "CPUExecutionProvider"


def bound_runner(session: Any, output_names: list[str], device_id: int | None) -> Callable[[dict], list]:
    """A runner that binds outputs on the session's device (ORT's io_binding): the result
    is copied to the host once, after the whole graph ran, and ORT allocates the outputs in
    its device arena instead of per call on the host. Inputs are bound from host memory;
    ORT copies them to the device once. On a CPU session the same code binds to host memory,
    which is how it is tested without a GPU."""
    device = "cuda" if first_provider(session) in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"
    index = device_id or 0

    def run(feeds: dict) -> list:
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in output_names:
            binding.bind_output(name, device, index)
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    return run
