"""The tree stays clean by the tools people use: ruff (lint and format, configured in pyproject.toml) and
clang-format (csrc/, configured in .clang-format). The `test` extra installs the pinned versions; a tool
that is not installed is skipped with the reason, so a bare checkout can still run the other tests."""

import glob
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool(name):
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install '.[test]' installs it)")
    return path


def _run(args):
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    return result.returncode, (result.stdout + result.stderr)[-6000:]


def test_ruff_check():
    code, output = _run([_tool("ruff"), "check", "--no-cache", "."])
    assert code == 0, f"ruff check found problems (fix them, or `ruff check --fix .`):\n{output}"


def test_ruff_format():
    code, output = _run([_tool("ruff"), "format", "--check", "--no-cache", "."])
    assert code == 0, f"files ruff format would change (run `ruff format .`):\n{output}"


def cpp_sources():
    patterns = ("csrc/*.cpp", "csrc/*.h", "csrc/cpu/*.cpp", "csrc/cpu/*.h", "csrc/cuda/*.cu", "csrc/cuda/*.cuh")
    return sorted(p for pattern in patterns for p in glob.glob(os.path.join(ROOT, pattern)))


def test_clang_format():
    sources = cpp_sources()
    assert len(sources) >= 12, f"expected the extension's sources under csrc/, found {sources}"
    code, output = _run([_tool("clang-format"), "--dry-run", "-Werror", *sources])
    assert code == 0, f"files clang-format would change (run `clang-format -i` on them):\n{output}"
