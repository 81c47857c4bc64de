"""ruff and mypy are part of the suite: a lint or type error fails the build like a test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def test_ruff_is_clean(repo_root: Path) -> None:
    result = subprocess.run([_bin("ruff"), "check", "--no-cache", "."], cwd=repo_root, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean(repo_root: Path) -> None:
    script = str(repo_root / ".ci/mypy-tree.sh")
    result = subprocess.run(["bash", script], cwd=repo_root, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
