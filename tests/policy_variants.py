"""Policies derived from the example for tests that need one thing more.

A test module takes this as `sys.modules["schoolgate_tests_policy_variants"]` (see
tests/conftest.py: under pytest's importlib mode no test folder is on sys.path).
"""

from __future__ import annotations

import re
from pathlib import Path

GAMES = """

# (test) A local category the school blocks for pupils, which a teacher may open for a lesson.
[categories.games]
name = "Games"
description = "Online games: not for lessons, unless a teacher opens one for their class."

[lists.games]
format = "plain"
file = "games.txt"
category = "games"

[[rules]]
id = "pupils-no-games"
clause = "Online Safety Policy §6"
reason = "games are not for lessons"
roles = ["pupil"]
categories = ["games"]
action = "block"
"""
GAMES_LISTED = ("coolmathgames.com",)


def with_games(example: Path, folder: Path) -> Path:
    """`example` plus a games category blocked for pupils, written into `folder` with the list
    files it names. The example blocks nothing a teacher may open for a lesson (social media and
    harmful content are the headteacher's), so the teacher's tests need a category of their own."""
    text = example.read_text(encoding="utf-8")
    for name in re.findall(r'^file = "([^"]+)"', text, re.M):
        source = example.parent / name
        if source.exists():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    (folder / "games.txt").write_text("".join(f"{host}\n" for host in GAMES_LISTED), encoding="utf-8")
    policy = folder / "policy.toml"
    policy.write_text(text + GAMES, encoding="utf-8")
    return policy
