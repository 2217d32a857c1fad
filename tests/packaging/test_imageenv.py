"""The cache key of an image's environment: it moves with the lock, the wheel's sources and the
Python, and with nothing else (bytecode caches, files the wheel does not hold)."""

from __future__ import annotations

import shutil
from pathlib import Path

from modelship.devcluster import imageenv


def _checkout(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for relative in imageenv.WHEEL_SOURCES:
        source = imageenv.source_root() / relative
        if source.is_file():
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / relative)
        else:
            shutil.copytree(source, root / relative, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_the_sources_digest_moves_with_a_source_edit_only(tmp_path: Path) -> None:
    root = _checkout(tmp_path)
    before = imageenv.sources_digest(root)
    (root / "operator" / "modelship" / "__pycache__").mkdir(exist_ok=True)
    (root / "operator" / "modelship" / "__pycache__" / "cli.cpython-311.pyc").write_bytes(b"\0")
    (root / "docs").mkdir()
    (root / "docs" / "notes.md").write_text("not in the wheel")
    assert imageenv.sources_digest(root) == before
    cli = root / "operator" / "modelship" / "cli.py"
    cli.write_text(cli.read_text() + "\n# an edit\n")
    assert imageenv.sources_digest(root) != before


def test_the_key_names_lock_sources_and_python() -> None:
    key = imageenv.env_key(b"lock", "sources", "3.11.7")
    assert len({key, imageenv.env_key(b"lock2", "sources", "3.11.7"), imageenv.env_key(b"lock", "other", "3.11.7"),
                imageenv.env_key(b"lock", "sources", "3.12.1")}) == 4
    assert imageenv.env_key(b"lock", "sources", "3.11.7") == key


def test_each_image_names_a_committed_lock() -> None:
    root = imageenv.source_root()
    assert (root / imageenv.SERVER.lock).is_file() and (root / imageenv.OPERATOR.lock).is_file()
