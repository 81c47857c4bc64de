"""Loading policy files from disk (reloading them is schoolgate.live's, tested in tests/live)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from schoolgate.policy import Client, Role, Target, Verdict, decide
from schoolgate.policy.loader import load_policy
from schoolgate.tomlpos import ConfigError

POLICY = """\
[school]
id = "t"
name = "T"
timezone = "Europe/London"
block_ipv4 = "10.0.0.1"

[calendar]
terms = [{ start = 2026-09-03, end = 2026-12-18 }]

[lists.blocked]
file = "lists/blocked.txt"
format = "plain"

[[rules]]
id = "blocked"
clause = "c"
reason = "on the list"
lists = ["blocked"]
action = "block"
"""
NOW = datetime(2026, 11, 23, 11, tzinfo=UTC)
CLIENT = Client(ip="10.0.0.5", role=Role.PUPIL, person_id="P1")


def test_absolute_list_paths(write_policy: Callable[..., Path], tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("abs.example\n", encoding="utf-8")
    path = write_policy(POLICY.replace('"lists/blocked.txt"', f'"{elsewhere}"'))
    policy = load_policy(path)
    assert decide(policy, CLIENT, Target("abs.example"), NOW).verdict is Verdict.BLOCK


def test_policy_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_bytes(b'[school]\nname = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_policy(path)
