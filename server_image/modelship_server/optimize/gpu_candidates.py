"""GPU candidates of the search, decided by pure functions: which ones, with which TensorRT
optimization profile, and what a provider failure means.

TensorRT's engines are built for a range of input shapes (an optimization profile: min, opt,
max per input). The range comes from what the user declared (spec.model.inputs minShape /
maxShape / shape) and the batch range served (1 to the capacity step's maximum batch). A
profile outside that range would either refuse real requests or waste build time on shapes
never seen. Where a dynamic dimension has no declared bounds, no profile is given and ONNX
Runtime builds an engine for each new shape as it comes (slow first calls, said in the reason).

ONNX Runtime falls back quietly when a provider cannot be created (it logs and retries with the
rest of the list), and TensorRT hands the nodes it does not support to CUDA. So a candidate
whose session came up without the provider it was about is skipped with the reason, not timed as
if it were that provider.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

from modelship_server.feeds import InputHint, InputSpec

TRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

Profile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]  # name -> (min, opt, max)


def tensorrt_profile(specs: Sequence[InputSpec], hints: Sequence[InputHint],
                     max_batch: int) -> tuple[Profile | None, str]:
    """(profile, why): min/opt/max shapes for every input, or None and the reason.

    A dynamic first dimension is the batch: 1 to `max_batch` (opt: the declared typical
    shape's, else 1), unless minShape/maxShape declare it. Other dynamic dimensions need a
    declared minShape and maxShape (or a fixed `shape`)."""
    by_name = {h.name: h for h in hints}
    profile: Profile = {}
    for spec in specs:
        hint = by_name.get(spec.name)
        typical = hint.typical() if hint else None
        lo_decl = hint.min_shape if hint else None
        hi_decl = hint.max_shape if hint else None
        lows: list[int] = []
        opts: list[int] = []
        highs: list[int] = []
        for axis, dim in enumerate(spec.shape):
            if dim is not None:
                lows.append(dim)
                opts.append(dim)
                highs.append(dim)
                continue
            lo = lo_decl[axis] if lo_decl else None
            hi = hi_decl[axis] if hi_decl else None
            opt = typical[axis] if typical else None
            if axis == 0:
                lo = 1 if lo is None else lo
                hi = max(max_batch, lo) if hi is None else hi
                opt = lo if opt is None else opt
            elif lo is None or hi is None:
                if hint is not None and hint.shape is not None:
                    lo = hi = hint.shape[axis]
                else:
                    return None, (f"input {spec.name} axis {axis} is dynamic and has no minShape/maxShape in "
                                  "spec.model.inputs: TensorRT builds an engine per new shape at run time")
            opt = lo if opt is None else opt
            if not lo <= opt <= hi:
                opt = min(max(opt, lo), hi)
            lows.append(lo)
            opts.append(opt)
            highs.append(hi)
        profile[spec.name] = (tuple(lows), tuple(opts), tuple(highs))
    return profile, "optimization profile from the declared shapes and batch 1.." + str(max_batch)


def profile_options(profile: Profile | None) -> dict[str, str]:
    """ORT's TensorRT options for a profile: `name:1x3x224x224,other:...` per bound."""
    if not profile:
        return {}

    def text(which: int) -> str:
        return ",".join(f"{name}:{'x'.join(str(d) for d in shapes[which])}" for name, shapes in profile.items())

    return {"trt_profile_min_shapes": text(0), "trt_profile_opt_shapes": text(1), "trt_profile_max_shapes": text(2)}


def tensorrt_options(fp16: bool, profile: Profile | None) -> dict[str, str]:
    """The TensorRT provider's options of a candidate (the engine cache folder is added where
    the session opens, under the work folder: candidates.open_session)."""
    options = {"trt_fp16_enable": "True" if fp16 else "False", "trt_engine_cache_enable": "True",
               "trt_max_workspace_size": str(2 << 30)}
    options.update(profile_options(profile))
    return options


def gpu_plan(availability: Mapping[str, str | None]) -> tuple[list[str], list[tuple[str, str]]]:
    """Which GPU candidates to build given provider availability (runtime.provider_availability):
    (names to build, [(name, why skipped)]). Pure, table-tested."""
    cuda, trt = availability.get("cuda", "not checked"), availability.get("tensorrt", "not checked")
    build: list[str] = []
    skipped: list[tuple[str, str]] = []
    if cuda is None:
        build.append("fp16-cuda")
    else:
        skipped.append(("fp16-cuda", f"no CUDA provider: {cuda}"))
    if trt is None and cuda is None:
        build += ["tensorrt-fp32", "tensorrt-fp16"]
    else:
        why = f"no TensorRT provider: {trt}" if trt is not None else f"TensorRT needs CUDA, which is unusable: {cuda}"
        skipped += [("tensorrt-fp32", why), ("tensorrt-fp16", why)]
    return build, skipped


_OP_PATTERNS = (
    re.compile(r"[Nn]o (?:importer|converter) registered for op:?\s*'?(\w+)"),
    re.compile(r"[Uu]nsupported (?:ONNX )?(?:data type|operator|op)[^']*'?(\w+)'?"),
    re.compile(r"\bop(?:_type)?[= ]'?(\w+)'? (?:is )?not supported"),
    re.compile(r"[Cc]ould not find an implementation for (\w+)"),
)


def explain_failure(provider: str, message: str) -> str:
    """One line on why a GPU candidate's session failed: the op when the message names one,
    a missing library when it says so, else the message's first line."""
    first = next((line.strip() for line in message.splitlines() if line.strip()), type(message).__name__)[:240]
    short = "TensorRT" if provider == TRT else "CUDA" if provider == CUDA else provider
    for pattern in _OP_PATTERNS:
        match = pattern.search(message)
        if match:
            return f"{short} does not support op {match.group(1)}: {first}"
    lib = re.search(r"(lib[\w.+-]+\.so[\w.]*)", message)
    if lib and re.search(r"cannot open|not found|No such file|failed to load|cannot be loaded", message, re.I):
        return f"{short} library missing: {lib.group(1)} ({first})"
    return f"{short} session failed: {first}"


def fallback_reason(wanted: str, got: Sequence[str]) -> str | None:
    """None when the session runs on `wanted`; else why the candidate is not what it claims
    (ORT created the session with the remaining providers instead)."""
    if wanted in got:
        return None
    short = "TensorRT" if wanted == TRT else "CUDA" if wanted == CUDA else wanted
    return f"{short} provider did not load (ONNX Runtime fell back to {', '.join(got) or 'nothing'}); " \
           "see the pod's log for ONNX Runtime's own message"
