"""The one reloader: the policy file, the list manifest and the database counter, each change
swapped in whole, and every mistake keeping the last good state with the reason."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

import schoolgate.live as live_module
from schoolgate.lists.state import ListState
from schoolgate.live import LivePolicy, preload
from schoolgate.policy import Client, ExceptionScope, PolicyException, Role, Target, Verdict
from schoolgate.policy.liststore import StoreBuilder
from schoolgate.store.models import PolicyExceptionRow
from schoolgate.store.overlay import bump_generation
from schoolgate.tomlpos import ConfigError

NOW = datetime(2026, 11, 23, 11, tzinfo=UTC)
PUPIL = Client(ip="10.0.0.5", role=Role.PUPIL, person_id="P1")
SITE = "t"
POLICY = """\
[school]
id = "t"
name = "T"
timezone = "Europe/London"
block_ipv4 = "10.0.0.1"

[calendar]
terms = [{ start = 2026-09-03, end = 2026-12-18 }]

[lists.blocked]
file = "blocked.txt"
format = "plain"
category = "malware"

[lists.feed]
url = "https://lists.example/feed.txt"
format = "plain"
category = "gambling"

[[rules]]
id = "harmful"
clause = "c"
reason = "on a list"
categories = ["malware", "gambling"]
action = "block"
"""


class Clock:
    def now(self) -> datetime:
        return NOW


def touch_later(path: Path) -> None:
    """Move the mtime on, so a change is seen even within one filesystem tick."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def install(state: ListState, name: str, names: list[str]) -> None:
    seed = state.seed(create=True)
    assert seed is not None
    builder = StoreBuilder(seed, [""])
    builder.add_names(names, 0)
    state.install_version(name, [builder.build({"version": name})])
    manifest = state.manifest()
    manifest["lists"]["feed"] = {"version": name}
    state.write_manifest(manifest)


def verdict(live: LivePolicy, host: str) -> Verdict:
    return live.decide(PUPIL, Target(host), NOW).verdict


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    (tmp_path / "blocked.txt").write_text("one.example\n", encoding="utf-8")
    path = tmp_path / "policy.toml"
    path.write_text(textwrap.dedent(POLICY), encoding="utf-8")
    return path


@pytest.fixture
def state(tmp_path: Path) -> ListState:
    return ListState(tmp_path / "lists")


def test_policy_file_and_local_lists_reload_and_a_mistake_keeps_the_last_good(
    policy_file: Path, state: ListState
) -> None:
    live = LivePolicy(policy_file, lists_dir=state.folder)
    live.load()
    assert verdict(live, "one.example") is Verdict.BLOCK and live.error is None
    assert not live.check()

    blocked = policy_file.parent / "blocked.txt"
    blocked.write_text("two.example\n", encoding="utf-8")
    touch_later(blocked)
    generation = live.generation
    assert live.check() and live.generation > generation
    assert verdict(live, "two.example") is Verdict.BLOCK and verdict(live, "one.example") is Verdict.ALLOW

    good = live.policy
    policy_file.write_text(textwrap.dedent(POLICY).replace('action = "block"', 'action = "deny"'))
    touch_later(policy_file)
    assert not live.check()
    assert live.policy is good and 'unknown action "deny"' in (live.error or "")
    assert not live.check()  # not recompiled on every poll while unchanged

    policy_file.write_text(textwrap.dedent(POLICY).replace('reason = "on a list"', 'reason = "listed"'))
    touch_later(policy_file)
    assert live.check() and live.error is None
    assert live.decide(PUPIL, Target("two.example"), NOW).reason == "listed"


def test_a_new_list_version_is_picked_up_from_the_manifest(policy_file: Path, state: ListState) -> None:
    live = LivePolicy(policy_file, lists_dir=state.folder)
    live.load()
    assert verdict(live, "casino.example") is Verdict.ALLOW
    assert any("no version" in w for w in live.compiled.warnings)
    install(state, "feed-1.sgl", ["casino.example"])
    assert live.check()
    assert verdict(live, "www.casino.example") is Verdict.BLOCK
    assert live.compiled.list_by_id["feed"].version == "feed-1.sgl"
    install(state, "feed-2.sgl", ["other-casino.example"])
    assert live.check()
    assert verdict(live, "casino.example") is Verdict.ALLOW
    assert verdict(live, "other-casino.example") is Verdict.BLOCK


def test_a_missing_or_damaged_version_keeps_the_one_in_force(policy_file: Path, state: ListState) -> None:
    install(state, "feed-1.sgl", ["casino.example"])
    live = LivePolicy(policy_file, lists_dir=state.folder)
    live.load()
    state.write_manifest({"lists": {"feed": {"version": "feed-9.sgl"}}})
    live.check()
    assert verdict(live, "casino.example") is Verdict.BLOCK
    assert "feed-9.sgl is missing" in (live.error or "")
    state.manifest_path.write_text("{ not json", encoding="utf-8")
    live.check()
    assert verdict(live, "casino.example") is Verdict.BLOCK and "damaged" in (live.error or "")


def test_the_first_load_of_a_broken_policy_raises(policy_file: Path, state: ListState) -> None:
    (policy_file.parent / "blocked.txt").unlink()
    live = LivePolicy(policy_file, lists_dir=state.folder)
    with pytest.raises(ConfigError, match=r'list file "blocked\.txt" not found'):
        live.load()
    assert live.policy is None


def test_the_database_overlay_follows_the_counter(
    policy_file: Path, state: ListState, sessions: sessionmaker[Session]
) -> None:
    changes: list[int] = []
    live = LivePolicy(policy_file, lists_dir=state.folder, sessions=sessions, site=SITE, clock=Clock(),
                      on_change=lambda: changes.append(1))
    live.load()
    assert verdict(live, "one.example") is Verdict.BLOCK
    with sessions() as session:
        session.add(PolicyExceptionRow(
            site=SITE, scope=ExceptionScope.PERSON.value, subject="P1", domain="one.example",
            starts=NOW - timedelta(hours=1), expires=NOW + timedelta(hours=1), reason="approved",
            created_by="head",
        ))
        bump_generation(session, SITE)
        session.commit()
    assert live.check() and changes == [1]
    decision = live.decide(PUPIL, Target("one.example"), NOW)
    assert decision.verdict is Verdict.ALLOW and decision.exception_id is not None
    # A policy reload keeps the overlay.
    policy_file.write_text(policy_file.read_text() + "\n# edited\n")
    touch_later(policy_file)
    assert live.check()
    assert verdict(live, "one.example") is Verdict.ALLOW


def test_a_database_that_is_away_keeps_filtering(policy_file: Path, state: ListState) -> None:
    def broken() -> Session:
        raise OSError("database unreachable")

    live = LivePolicy(policy_file, lists_dir=state.folder, sessions=broken, site=SITE, clock=Clock())
    live.load()
    assert verdict(live, "one.example") is Verdict.BLOCK
    assert "database overlay could not be read" in (live.error or "")


def test_an_overlay_set_by_the_caller(policy_file: Path) -> None:
    live = LivePolicy(policy_file)
    live.load()
    live.set_overlay(exceptions=[PolicyException(1, ExceptionScope.PERSON, "P1", "one.example", None,
                                                 NOW - timedelta(hours=1), NOW + timedelta(hours=1))])
    assert live.decide(PUPIL, Target("one.example"), NOW).exception_id == 1


@pytest.fixture
def preloaded_reset() -> Iterator[None]:
    yield
    live_module._preloaded = None  # the memo is per process: leave none behind for other tests


def test_a_preloaded_policy_is_taken_once_by_the_first_load(
    policy_file: Path, state: ListState, preloaded_reset: None
) -> None:
    # `schoolgate run` compiles the policy before forking; each daemon's first load takes it.
    supervisor = LivePolicy(policy_file, lists_dir=state.folder)
    preload(supervisor)
    daemon = LivePolicy(policy_file, lists_dir=state.folder)
    daemon.load()
    assert daemon.compiled is supervisor._compiled
    assert verdict(daemon, "one.example") is Verdict.BLOCK and daemon.error is None
    assert not daemon.check()  # it watches the same files as a policy it compiled itself
    # A second reloader in the same process compiles its own: no two share one object.
    other = LivePolicy(policy_file, lists_dir=state.folder)
    other.load()
    assert other.compiled is not supervisor._compiled
    assert verdict(other, "one.example") is Verdict.BLOCK


@pytest.mark.parametrize("change", ["list file edited", "list version installed", "another policy file"])
def test_a_preloaded_policy_that_is_no_longer_current_is_not_taken(
    policy_file: Path, state: ListState, preloaded_reset: None, change: str
) -> None:
    install(state, "feed-1.sgl", ["casino.example"])  # the list state (and its seed) already there
    supervisor = LivePolicy(policy_file, lists_dir=state.folder)
    preload(supervisor)
    path = policy_file
    if change == "list file edited":
        blocked = policy_file.parent / "blocked.txt"
        blocked.write_text("two.example\n", encoding="utf-8")
        touch_later(blocked)
    elif change == "list version installed":
        install(state, "feed-2.sgl", ["other-casino.example"])
    else:
        path = policy_file.with_name("copy.toml")
        path.write_text(policy_file.read_text(), encoding="utf-8")
    daemon = LivePolicy(path, lists_dir=state.folder)
    daemon.load()
    assert daemon.compiled is not supervisor._compiled
    if change == "list file edited":
        assert verdict(daemon, "two.example") is Verdict.BLOCK and verdict(daemon, "one.example") is Verdict.ALLOW
    elif change == "list version installed":
        assert verdict(daemon, "other-casino.example") is Verdict.BLOCK
