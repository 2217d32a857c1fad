"""Re-applying a chosen recipe in a serving pod, instead of storing the optimized file.

The optimize Job records the recipe and the sha256 of the file it produced. A serving pod's
init step fetches the original (which it does anyway), rebuilds that one variant with the same
calibration inputs, and serves it only if the digest matches. Why not an artifact store: the
model URI may be read-only (https), the local cluster has none, and a digest check proves the
pod serves exactly the file that passed the accuracy gate. The builds are deterministic for a
given ONNX Runtime version and CPU (tests check this for every recipe kind); the Job runs on the
same hardware class as serving, and a mismatch fails loudly rather than serving something else.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pydantic

from .candidates import Recipe, build
from .inputs import Feed

EXIT_DIGEST_MISMATCH = 3


class DigestMismatch(Exception):
    """The rebuilt file differs from the one the Job measured; the message says how to fix it."""


def parse_recipe(text: str) -> Recipe:
    """The --apply-recipe JSON as a Recipe; ValueError naming what is wrong."""
    try:
        return Recipe.model_validate(json.loads(text))
    except (json.JSONDecodeError, pydantic.ValidationError) as exc:
        first = str(exc).strip().splitlines()
        raise ValueError(f"--apply-recipe is not a recipe from an optimize report "
                         f"({first[0] if first else type(exc).__name__}); got {text[:120]!r}") from None


def args_for(recipe: Recipe, sha256: str, samples: int, seed: int, dataset: Path | None,
             inputs: str | None = None) -> list[str]:
    """The flags that make `modelship optimize` rebuild this recipe (recorded in the report).
    A calibrated recipe rebuilds from the same inputs: the dataset, else the declared inputs
    the calibration feeds were generated from."""
    args = ["--apply-recipe", recipe.model_dump_json(), "--expect-sha256", sha256,
            "--samples", str(samples), "--seed", str(seed)]
    calibrated = recipe.kind == "static_int8" or recipe.float_fraction > 0
    if dataset is not None and calibrated:
        args += ["--dataset", str(dataset)]
    elif inputs and calibrated:
        args += ["--inputs", inputs]
    return args


def apply(model: Path, output_dir: Path, recipe: Recipe, expected_sha256: str,
          calibration: list[Feed]) -> str:
    """Build `recipe` from `model` into output_dir/model.onnx if its digest is the expected one.

    The file is replaced atomically, and only after the check, so a mismatch leaves the
    original in place and a half-written variant is never served.
    """
    from .search import sha256_file

    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="modelship-apply-", dir=output_dir) as tmp:
        built = build(recipe, model, Path(tmp), calibration)
        actual = sha256_file(built)
        if actual != expected_sha256.lower():
            raise DigestMismatch(
                f"rebuilding variant {recipe.name} gave sha256 {actual}, but the optimize Job measured "
                f"{expected_sha256.lower()}; the serving node differs from the one that optimized "
                "(CPU features or ONNX Runtime version): run the optimize Job on the same node type, "
                "or disable optimization for this service")
        os.replace(built, output_dir / "model.onnx")
    return actual
