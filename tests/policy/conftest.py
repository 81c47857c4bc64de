"""Shared fixtures: the shipped example policy, and a way to write small policies to disk."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from schoolgate.policy.engine import CompiledPolicy
from schoolgate.policy.loader import load_policy

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "policy.example.toml"


@pytest.fixture(scope="session")
def example() -> CompiledPolicy:
    return load_policy(EXAMPLE)


@pytest.fixture
def write_policy(tmp_path: Path) -> Callable[..., Path]:
    """Write a policy (and optional list files) into a temporary folder; return its path."""

    def write(text: str, name: str = "policy.toml", files: dict[str, str] | None = None) -> Path:
        for file, content in (files or {}).items():
            target = tmp_path / file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content, encoding="utf-8")
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write
