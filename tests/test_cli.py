"""The `modelship` entry point: every subcommand is listed and reachable, and help never crashes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from modelship.cli import SUBCOMMANDS


def modelship(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelship.cli", *args], capture_output=True, text=True, timeout=60)


def test_top_level_help_lists_every_subcommand():
    result = modelship("--help")
    assert result.returncode == 0
    for name in SUBCOMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_each_subcommand_has_help(name: str):
    result = modelship(name, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: modelship" in result.stdout


def test_bench_gets_its_own_flags():
    result = modelship("bench", "--help")
    assert "--concurrency-range" in result.stdout


def test_no_subcommand_prints_help_and_exits_2():
    result = modelship()
    assert result.returncode == 2 and "<command>" in result.stdout
