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
from schoolgate.policy.types import Ban, Decision, ExceptionScope, Ownership, PolicyException, Role, SiteBlock

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


# -- the overlay, the window's edges, role changes: recorded from the engine before the list
# store's probe and the cold match were rewritten (the paths above, with the overlay laid over).
EDGES = {
    "before-lessons": datetime(2026, 11, 23, 8, 44, 59, tzinfo=UTC),
    "lessons-begin": datetime(2026, 11, 23, 8, 45, tzinfo=UTC),
    "lessons-end-soon": datetime(2026, 11, 23, 15, 14, 59, 999_000, tzinfo=UTC),
    "after-lessons": datetime(2026, 11, 23, 15, 15, tzinfo=UTC),
    **TIMES,
}
_DAY = datetime(2026, 11, 23, tzinfo=UTC)
EXCEPTIONS = [
    PolicyException(1, ExceptionScope.PERSON, "p5", "game1.example", None, _DAY, _DAY.replace(hour=12)),
    PolicyException(2, ExceptionScope.GROUP, "5A", "ads1.example.net", None, _DAY, _DAY.replace(day=30)),
    PolicyException(3, ExceptionScope.DEVICE, "d5", "pixel.example.org", None, _DAY.replace(hour=9),
                     _DAY.replace(hour=14)),
    PolicyException(4, ExceptionScope.ROLE, "pupil", None, "http://both.example/ok/", _DAY, _DAY.replace(day=30)),
    PolicyException(5, ExceptionScope.PERSON, "p-banned", "game2.example", None, _DAY, _DAY.replace(day=30)),
    PolicyException(6, ExceptionScope.ROLE, "supervised", "www.game2.example", None, _DAY, _DAY.replace(day=30)),
    PolicyException(7, ExceptionScope.PERSON, "p5", "adult1.example", None, _DAY, _DAY.replace(day=30)),
]
BANS = [
    Ban(1, "banned-device", None, None, _DAY, _DAY.replace(hour=15, minute=15)),
    Ban(2, None, "p-later", None, _DAY.replace(hour=9), None),
    Ban(3, None, None, "02:00:00:00:00:99", _DAY.replace(day=20), None),
]
BLOCKS = [
    SiteBlock(1, "example.com", None, frozenset({Role.PUPIL})),
    SiteBlock(2, None, "https://www.notgame1.example/bad", frozenset()),
    SiteBlock(3, "chirp.example", None, frozenset({Role.STAFF})),
    SiteBlock(4, "cdn.both.example", None, frozenset(), "reported by a teacher"),
]
OVERLAY_CLIENTS = {
    "pupil-p5": Client(ip="10.1.20.5", year_group=5, person_id="p5", device_id="d5", groups=frozenset({"5A"})),
    "pupil-banned": Client(ip="10.1.20.9", year_group=4, device_id="banned-device", person_id="p-banned"),
    "pupil-banned-later": Client(ip="10.1.20.10", year_group=6, person_id="p-later", trusts_school_ca=True),
    "banned-by-mac": Client(ip="10.1.10.9", mac="02:00:00:00:00:99"),
    # One address whose role changes between questions (the identity resolver learns who it is).
    "changing-as-pupil": Client(ip="10.1.20.11", year_group=3),
    "changing-as-staff": Client(ip="10.1.20.11", role=Role.STAFF),
    "changing-unknown": Client(ip="10.1.20.11"),
    "staff": Client(ip="10.1.10.5", person_id="t1"),
}
OVERLAY_TARGETS = {
    **{host: Target(host) for host in HOSTS if host not in ("a", "com")},
    "both.example/ok": Target("both.example", "http://both.example/ok/page"),
    "both.example/other": Target("both.example", "http://both.example/other"),
    "www.notgame1.example/bad": Target("www.notgame1.example", "https://www.notgame1.example/bad/x"),
    "www.notgame1.example/good": Target("www.notgame1.example", "https://www.notgame1.example/good"),
}
OVERLAY_CASES = [(w, t, e) for w in OVERLAY_CLIENTS for t in OVERLAY_TARGETS for e in EDGES]
RECORDED_OVERLAY = Path(__file__).with_name("data") / "cold_path_overlay_decisions.json"


def _overlaid(path: Path) -> CompiledPolicy:
    return load_policy(path).with_overlay(EXCEPTIONS, BANS, BLOCKS)


def _overlay_answer(policy: CompiledPolicy, case: tuple[str, str, str]) -> tuple[object, ...]:
    who, target, when = case
    decision = decide(policy, OVERLAY_CLIENTS[who], OVERLAY_TARGETS[target], EDGES[when])
    return (*_jsonable(recorded(decision)), decision.exception_id, decision.rewrite_to)


def _expected_overlay() -> dict[tuple[str, str, str], tuple[object, ...]]:
    raw = json.loads(RECORDED_OVERLAY.read_text(encoding="utf-8"))
    return {tuple(key.split("|")): tuple(value) for key, value in raw.items()}  # type: ignore[misc]


def test_the_overlay_table_covers_every_case() -> None:
    assert set(_expected_overlay()) == set(OVERLAY_CASES)


@pytest.mark.parametrize("who", list(OVERLAY_CLIENTS))
def test_cold_decisions_under_the_overlay_are_the_recorded_ones(policy_path: Path, who: str) -> None:
    expected = _expected_overlay()
    for target in OVERLAY_TARGETS:
        for when in EDGES:
            case = (who, target, when)
            assert _overlay_answer(_overlaid(policy_path), case) == expected[case], case


def test_remembered_and_interleaved_decisions_under_the_overlay_are_the_recorded_ones(policy_path: Path) -> None:
    """Asked in order, again, and in reverse with the changing client's roles interleaved:
    what one client's question left remembered never shows in another's answer."""
    expected = _expected_overlay()
    policy = _overlaid(policy_path)
    for order in (OVERLAY_CASES, OVERLAY_CASES, list(reversed(OVERLAY_CASES))):
        answers = {case: _overlay_answer(policy, case) for case in order}
        assert answers == expected
