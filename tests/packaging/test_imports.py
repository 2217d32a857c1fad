"""Each image's venv imports every third-party module its code imports, anywhere in a function
or at module level (the walk is imports.py); the development venv imports all of them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import imports


def _failures(python: str | Path, modules: list[str]) -> dict[str, str]:
    modules = [m for m in modules if not m.endswith("__main__")]  # importing those runs them; walked only
    out = subprocess.run([str(python), "-c", imports.CHECK_SCRIPT, json.dumps(modules)], capture_output=True,
                         text=True, timeout=300, cwd="/")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("image", sorted(imports.ENTRIES))
def test_the_image_venv_imports_what_its_code_imports(image: str, request: pytest.FixtureRequest) -> None:
    env = request.getfixturevalue(f"{image}_env")
    needed = imports.third_party(imports.ENTRIES[image], imports.MODULE_LEVEL_ONLY[image])
    assert "pydantic" in needed  # the walk reached the code (a walk that finds nothing proves nothing)
    modules = sorted(needed) + list(imports.ENTRIES[image])
    failed = _failures(env / "bin" / "python", modules)
    assert not failed, "\n".join(f"{name}: {why} (imported by {sorted(needed.get(name, ()))})"
                                 for name, why in failed.items())


def test_the_development_venv_imports_everything() -> None:
    needed = imports.third_party(imports.every_module())
    assert not _failures(sys.executable, sorted(needed) + list(imports.every_module()))


def test_the_operator_image_holds_no_inference_runtime(operator_env: Path) -> None:
    """The check can fail: the operator image lacks the server's packages, and says so."""
    failed = _failures(operator_env / "bin" / "python", ["onnxruntime", "modelship_server.runtime"])
    assert set(failed) == {"onnxruntime", "modelship_server.runtime"}
    assert "No module named 'onnxruntime'" in failed["onnxruntime"]


def test_the_walk_follows_imports_inside_functions_and_skips_type_checking(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("from typing import TYPE_CHECKING\nimport yaml\nif TYPE_CHECKING:\n    import numpy\n"
                      "def run():\n    import kopf\n    from .sibling import x\n")
    assert imports.imports_of("modelship.mod", source) == {"typing", "yaml", "kopf", "modelship.sibling"}
    assert imports.imports_of("modelship.mod", source, module_level_only=True) == {"typing", "yaml"}
    # the operator's own metrics: the import that broke the operator image
    assert "modelship.controller.metrics" in imports.third_party(("modelship.run_command",))["prometheus_client"]
