"""The cold decision's fast path gives the decisions the engine gave before it.

The engine's path for a name it has never seen was trimmed for speed (one set test rules out
the catalogue's names, the minute cache and the client's role and device read inline, a
decision copied through its slots' setters). The table below was recorded from the engine as
it was before those changes, over a policy that exercises every branch they touch: catalogue
services (suffix and exact hosts), list entries with and without subdomains, several lists on
one name, address entries, support sites, canaries, windows, year groups and device
conditions. Each case is asked cold (a fresh policy), then again (remembered), then through
a policy that has already answered every other case (shared remembered kinds).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from schoolgate.policy import Client, Target, decide
from schoolgate.policy.catalogue import canary_for
from schoolgate.policy.engine import CompiledPolicy
from schoolgate.policy.loader import load_policy
from schoolgate.policy.types import Decision, Ownership, Role

POLICY = """
    [school]
    id = "t"
    name = "T"
    timezone = "Europe/London"
    block_ipv4 = "10.0.0.1"
    [calendar]
    terms = [{ start = 2026-09-03, end = 2026-12-18 }]
    [windows.lessons]
    from = "08:45"
    to = "15:15"
    [[networks]]
    name = "pupils"
    cidrs = ["10.1.20.0/24", "fd41:0:0:20::/64"]
    role = "pupil"
    [[networks]]
    name = "staff"
    cidrs = ["10.1.10.0/24"]
    role = "staff"
    [[networks]]
    name = "guests"
    cidrs = ["10.1.30.0/24"]
    role = "guest"
    [categories.social_media]
    name = "Social media"
    [categories.games]
    name = "Games"
    [services.chirp]
    name = "Chirp"
    category = "social_media"
    domains = ["chirp.example", "chirpcdn.example"]
    hosts = ["api.chirpstatic.example"]
    [lists.games]
    file = "games.txt"
    format = "plain"
    category = "games"
    [lists.ads]
    file = "ads.txt"
    format = "adblock"
    [lists.adult]
    file = "adult.txt"
    format = "plain"
    category = "pornography"
    [[rules]]
    id = "harmful"
    clause = "Online Safety §1"
    reason = "not suitable for children"
    roles = ["pupil", "guest"]
    categories = ["pornography"]
    action = "block"
    [[rules]]
    id = "games-in-lessons"
    clause = "Acceptable Use §2"
    reason = "no games in lessons"
    lists = ["games"]
    roles = ["pupil"]
    year_groups = [3, 4, 5, 6]
    when = ["lessons"]
    action = "block"
    [[rules]]
    id = "social-personal"
    clause = "Social Media §4"
    reason = "no social media on personal devices"
    categories = ["social_media"]
    devices = ["personal", "unknown"]
    roles = ["pupil", "staff"]
    when = ["lessons"]
    action = "block"
    [[rules]]
    id = "ads"
    clause = "Acceptable Use §5"
    reason = "advertising is blocked"
    lists = ["ads"]
    action = "block"
"""
FILES = {
    "games.txt": "game1.example\ngame2.example\nboth.example\n",
    "ads.txt": "||ads1.example.net^\n|pixel.example.org^\n||both.example^\n",
    "adult.txt": "adult1.example\n203.0.113.7\n198.51.100.0/24\n",
}
LESSON = datetime(2026, 11, 23, 10, tzinfo=UTC)  # a Monday in term, in lessons
EVENING = datetime(2026, 11, 23, 19, tzinfo=UTC)
WEEKEND = datetime(2026, 11, 28, 10, tzinfo=UTC)

CLIENTS = {
    "pupil-y5": Client(ip="10.1.20.5", year_group=5),
    "pupil-y1": Client(ip="10.1.20.6", year_group=1),
    "pupil-school-device": Client(ip="10.1.20.7", year_group=6, ownership=Ownership.SCHOOL_OWNED),
    "pupil-v6": Client(ip="fd41:0:0:20::9", year_group=4),
    "staff": Client(ip="10.1.10.5"),
    "staff-personal": Client(ip="10.1.10.6", ownership=Ownership.PERSONAL),
    "guest": Client(ip="10.1.30.5"),
    "authorised": Client(ip="10.1.20.8", role=Role.AUTHORISED),
    "unknown-network": Client(ip="192.0.2.50"),
}
HOSTS = [
    "game1.example", "www.game2.example", "a.b.game1.example", "both.example", "cdn.both.example",
    "ads1.example.net", "x.ads1.example.net", "pixel.example.org", "www.pixel.example.org",
    "adult1.example", "m.adult1.example", "203.0.113.7", "198.51.100.42", "198.51.101.1",
    "chirp.example", "video.chirpcdn.example", "api.chirpstatic.example", "www.api.chirpstatic.example",
    "www.childline.org.uk", "childline.org.uk", canary_for("pornography"), canary_for("games"),
    "example.com", "www.notgame1.example", "game1.example.evil.test", "com", "a", "1.2.3.4.example",
]
CASES = [(who, host, when) for who in CLIENTS for host in HOSTS for when in ("lesson", "evening", "weekend")]
TIMES = {"lesson": LESSON, "evening": EVENING, "weekend": WEEKEND}


def recorded(decision: Decision) -> tuple[object, ...]:
    return (
        decision.verdict.value, decision.rule_id, decision.clause, decision.reason, decision.role.value,
        decision.service, decision.service_name, decision.category, decision.matched, decision.locked,
        decision.valid_until.isoformat() if decision.valid_until else None, tuple(sorted(decision.flags)),
        decision.list_id, decision.url_scoped, decision.own_role,
    )


@pytest.fixture
def policy_path(write_policy: Callable[..., Path]) -> Path:
    return write_policy(POLICY, files=FILES)


def _answers(policy: CompiledPolicy) -> dict[tuple[str, str, str], tuple[object, ...]]:
    return {(w, h, t): recorded(decide(policy, CLIENTS[w], Target(h), TIMES[t])) for w, h, t in CASES}


# Recorded from the engine before the cold path was trimmed: "client|host|time" -> recorded().
RECORDED = Path(__file__).with_name("data") / "cold_path_decisions.json"


def _expected() -> dict[tuple[str, str, str], tuple[object, ...]]:
    raw = json.loads(RECORDED.read_text(encoding="utf-8"))
    return {tuple(key.split("|")): tuple(value) for key, value in raw.items()}  # type: ignore[misc]


def test_the_table_covers_every_case() -> None:
    assert set(_expected()) == set(CASES)


@pytest.mark.parametrize("who", list(CLIENTS))
def test_cold_decisions_are_the_recorded_ones(policy_path: Path, who: str) -> None:
    expected = _expected()
    for host in HOSTS:
        for when, instant in TIMES.items():
            case = (who, host, when)
            cold = decide(load_policy(policy_path), CLIENTS[who], Target(host), instant)
            assert _jsonable(recorded(cold)) == expected[case], case


def test_remembered_and_shared_decisions_are_the_recorded_ones(policy_path: Path) -> None:
    expected = _expected()
    policy = load_policy(policy_path)
    first = _answers(policy)  # cold within one policy: kinds shared between names and clients
    again = _answers(policy)  # every one remembered
    reverse = {case: recorded(decide(policy, CLIENTS[case[0]], Target(case[1]), TIMES[case[2]]))
               for case in reversed(CASES)}
    for answers in (first, again, reverse):
        assert {case: _jsonable(value) for case, value in answers.items()} == expected


def test_an_upper_case_or_rooted_name_is_decided_as_its_normal_form(policy_path: Path) -> None:
    expected = _expected()
    policy = load_policy(policy_path)
    for host in ("GAME1.Example.", "Ads1.EXAMPLE.net", "www.ChildLine.org.uk."):
        normal = host.lower().rstrip(".")
        for who in ("pupil-y5", "staff", "guest"):
            decision = decide(policy, CLIENTS[who], Target(host), LESSON)
            assert _jsonable(recorded(decision)) == expected[(who, normal, "lesson")], (who, host)


def _jsonable(value: tuple[object, ...]) -> tuple[object, ...]:
    """As the table stores it (JSON has lists, not tuples)."""
    return tuple(list(v) if isinstance(v, tuple) else v for v in value)
