"""Loading from disk, and the holder that keeps the last good policy when a reload fails."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schoolgate.policy import Client, ExceptionScope, PolicyException, Role, Target, Verdict, decide
from schoolgate.policy.loader import PolicyHolder, load_policy
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


def _touch_later(path: Path) -> None:
    """Move the file's mtime on, so a change is seen even within one filesystem tick."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_holder_reloads_on_change_and_keeps_the_last_good_policy(write_policy: Callable[..., Path]) -> None:
    path = write_policy(POLICY, files={"lists/blocked.txt": "one.example\n"})
    holder = PolicyHolder(path)
    first = holder.load()
    assert holder.generation == 1 and holder.error is None
    assert not holder.reload_if_changed()
    assert decide(first, CLIENT, Target("one.example"), NOW).verdict is Verdict.BLOCK

    # A list file change is picked up.
    (path.parent / "lists/blocked.txt").write_text("two.example\n", encoding="utf-8")
    _touch_later(path.parent / "lists/blocked.txt")
    assert holder.reload_if_changed()
    assert holder.generation == 2
    assert holder.policy is not None
    assert decide(holder.policy, CLIENT, Target("two.example"), NOW).verdict is Verdict.BLOCK
    assert decide(holder.policy, CLIENT, Target("one.example"), NOW).verdict is Verdict.ALLOW

    # A broken policy is reported and the good one stays in force.
    good = holder.policy
    path.write_text(POLICY.replace('action = "block"', 'action = "deny"'), encoding="utf-8")
    _touch_later(path)
    assert not holder.reload_if_changed()
    assert holder.policy is good
    assert isinstance(holder.error, ConfigError)
    assert 'unknown action "deny"' in str(holder.error)
    assert not holder.reload_if_changed()  # not recompiled on every poll while unchanged

    # Fixing it brings the new version in and clears the error.
    path.write_text(POLICY.replace('reason = "on the list"', 'reason = "listed"'), encoding="utf-8")
    _touch_later(path)
    assert holder.reload_if_changed()
    assert holder.error is None
    assert decide(holder.policy, CLIENT, Target("two.example"), NOW).reason == "listed"


def test_holder_overlay_survives_reloads(write_policy: Callable[..., Path]) -> None:
    path = write_policy(POLICY, files={"lists/blocked.txt": "one.example\n"})
    holder = PolicyHolder(path)
    holder.load()
    exception = PolicyException(
        id=1,
        scope=ExceptionScope.PERSON,
        subject="P1",
        domain="one.example",
        url_prefix=None,
        starts=NOW - timedelta(hours=1),
        expires=NOW + timedelta(hours=1),
    )
    holder.set_overlay(exceptions=[exception])
    assert holder.policy is not None
    assert decide(holder.policy, CLIENT, Target("one.example"), NOW).exception_id == 1
    path.write_text(POLICY + "\n# edited\n", encoding="utf-8")
    _touch_later(path)
    assert holder.reload_if_changed()
    assert decide(holder.policy, CLIENT, Target("one.example"), NOW).exception_id == 1
    holder.set_overlay()
    assert decide(holder.policy, CLIENT, Target("one.example"), NOW).verdict is Verdict.BLOCK


def test_first_load_of_a_broken_policy_raises(write_policy: Callable[..., Path]) -> None:
    path = write_policy(POLICY)  # the list file is missing
    holder = PolicyHolder(path)
    with pytest.raises(ConfigError, match=r'list file "lists/blocked\.txt" not found'):
        holder.load()
    assert holder.policy is None


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
