"""Rule semantics on small policies: order, when/unless, year groups, locks, the default."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from schoolgate.policy import Client, ExceptionScope, Ownership, PolicyException, Role, Target, Verdict, decide
from schoolgate.policy.engine import CompiledPolicy
from schoolgate.policy.loader import load_policy

LONDON = ZoneInfo("Europe/London")
HEAD = """\
[school]
id = "t"
name = "T"
timezone = "Europe/London"
block_ipv4 = "10.0.0.1"

[calendar]
terms = [{ start = 2026-09-03, end = 2026-12-18 }]

[windows.school_hours]
from = "08:45"
to = "15:15"

[windows.lunch]
from = "12:00"
to = "13:00"

[categories.games]
[categories.illegal]
locked = true
flags = ["safeguarding"]

[services.games]
category = "games"
domains = ["games.example"]

[services.coding]
domains = ["coding.example"]

[services.bad]
category = "illegal"
domains = ["bad.example"]

[services.listed]
domains = ["listed.example"]
"""


def local(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=LONDON)


@pytest.fixture
def policy(write_policy: Callable[..., Path]) -> CompiledPolicy:
    rules = """
[[rules]]
id = "older-pupils-coding"
clause = "Computing curriculum"
reason = "Years 5 and 6 use the coding site"
roles = ["pupil"]
year_groups = [5, 6]
services = ["coding"]
action = "allow"

[[rules]]
id = "pupils-coding-blocked"
clause = "c"
reason = "younger pupils do not use the coding site"
roles = ["pupil"]
services = ["coding"]
action = "block"

[[rules]]
id = "games-outside-lessons"
clause = "c"
reason = "games only at lunch or after school"
categories = ["games"]
when = ["lunch"]
action = "allow"

[[rules]]
id = "games-in-lessons"
clause = "c"
reason = "no games in lessons"
categories = ["games"]
when = ["school_hours"]
unless = ["lunch"]
action = "block"

[[rules]]
id = "illegal"
clause = "c"
reason = "illegal content"
services = ["bad"]
action = "block"

[[rules]]
id = "locked-listed"
clause = "c"
reason = "locked by the rule"
services = ["listed"]
action = "block"
locked = true

[default]
action = "block"
clause = "Allow-list policy"
reason = "only listed sites are open"
"""
    return load_policy(write_policy(HEAD + rules))


def client(year: int | None = None, role: Role = Role.PUPIL) -> Client:
    return Client(ip="10.0.0.5", role=role, year_group=year, person_id="P1")


@pytest.mark.parametrize(
    ("year", "verdict", "rule"),
    [
        (6, Verdict.ALLOW, "older-pupils-coding"),
        (5, Verdict.ALLOW, "older-pupils-coding"),
        (4, Verdict.BLOCK, "pupils-coding-blocked"),
        (None, Verdict.BLOCK, "pupils-coding-blocked"),
    ],
)
def test_year_groups(policy: CompiledPolicy, year: int | None, verdict: Verdict, rule: str) -> None:
    decision = decide(policy, client(year), Target("www.coding.example"), local("2026-11-23 11:00"))
    assert (decision.verdict, decision.rule_id) == (verdict, rule)


@pytest.mark.parametrize(
    ("when", "verdict", "rule", "until"),
    [
        ("2026-11-23 11:00", Verdict.BLOCK, "games-in-lessons", "2026-11-23 12:00"),
        ("2026-11-23 12:30", Verdict.ALLOW, "games-outside-lessons", "2026-11-23 13:00"),
        ("2026-11-23 13:30", Verdict.BLOCK, "games-in-lessons", "2026-11-23 15:15"),
        ("2026-11-23 16:00", Verdict.BLOCK, "default", "2026-11-24 08:45"),
    ],
)
def test_when_unless_and_first_match(
    policy: CompiledPolicy, when: str, verdict: Verdict, rule: str, until: str
) -> None:
    decision = decide(policy, client(), Target("games.example"), local(when))
    assert (decision.verdict, decision.rule_id, decision.valid_until) == (verdict, rule, local(until))


def test_default_rule(policy: CompiledPolicy) -> None:
    decision = decide(policy, client(role=Role.STAFF), Target("example.org"), local("2026-11-23 11:00"))
    assert (decision.verdict, decision.rule_id, decision.clause) == (Verdict.BLOCK, "default", "Allow-list policy")
    assert decision.valid_until is None


def _everyone_may(domain: str, now: datetime) -> PolicyException:
    return PolicyException(
        id=1,
        scope=ExceptionScope.PERSON,
        subject="P1",
        domain=domain,
        url_prefix=None,
        starts=now - timedelta(hours=1),
        expires=now + timedelta(hours=1),
    )


@pytest.mark.parametrize(
    ("host", "lifted"),
    [
        ("bad.example", False),  # locked category
        ("listed.example", False),  # locked rule
        ("games.example", True),  # an ordinary block
        ("example.org", True),  # the default block
    ],
)
def test_locks(policy: CompiledPolicy, host: str, lifted: bool) -> None:
    now = local("2026-11-23 11:00")
    layered = policy.with_overlay(exceptions=[_everyone_may(host, now)])
    decision = decide(layered, client(), Target(host), now)
    assert (decision.verdict is Verdict.ALLOW) is lifted
    assert decision.locked is not lifted


def test_category_flags_travel_with_every_decision(policy: CompiledPolicy) -> None:
    decision = decide(policy, client(), Target("a.bad.example"), local("2026-11-23 11:00"))
    assert decision.flags == frozenset({"safeguarding", "illegal"})  # the policy's flag and the built-in one
    assert decision.category == "illegal"


def test_the_circumvention_category_is_always_locked_and_flagged(write_policy: Callable[..., Path]) -> None:
    policy = load_policy(
        write_policy(
            HEAD
            + """
[categories.circumvention]
[services.vpn]
category = "circumvention"
domains = ["vpn.example"]

[[rules]]
id = "vpn"
clause = "c"
reason = "r"
categories = ["circumvention"]
action = "block"
"""
        )
    )
    now = local("2026-11-23 11:00")
    layered = policy.with_overlay(exceptions=[_everyone_may("vpn.example", now)])
    decision = decide(layered, client(), Target("www.vpn.example"), now)
    assert (decision.verdict, decision.locked, decision.flags) == (Verdict.BLOCK, True, frozenset({"circumvention"}))


DEVICE_RULES = """
[[rules]]
id = "no-personal-accounts-on-school-devices"
clause = "Social Media Policy §4: no school-owned devices for personal accounts"
reason = "school-owned devices are not for personal accounts"
roles = ["staff"]
services = ["games"]
devices = ["school_owned"]
action = "block"

[[rules]]
id = "unrecorded-devices"
clause = "c"
reason = "devices whose owner is not recorded are treated with care"
roles = ["staff"]
services = ["games"]
devices = ["unknown"]
when = ["school_hours"]
action = "block"

[default]
action = "allow"
"""


@pytest.mark.parametrize(
    ("ownership", "at", "verdict", "rule"),
    [
        (Ownership.SCHOOL_OWNED, "2026-11-23 11:00", Verdict.BLOCK, "no-personal-accounts-on-school-devices"),
        (Ownership.SCHOOL_OWNED, "2026-11-23 19:00", Verdict.BLOCK, "no-personal-accounts-on-school-devices"),
        (Ownership.PERSONAL, "2026-11-23 11:00", Verdict.ALLOW, "default"),
        (None, "2026-11-23 11:00", Verdict.BLOCK, "unrecorded-devices"),
        (None, "2026-11-23 19:00", Verdict.ALLOW, "default"),
    ],
)
def test_device_ownership_condition(
    write_policy: Callable[..., Path], ownership: Ownership | None, at: str, verdict: Verdict, rule: str
) -> None:
    policy = load_policy(write_policy(HEAD + DEVICE_RULES))
    who = Client(ip="10.0.0.9", role=Role.STAFF, ownership=ownership)
    decision = decide(policy, who, Target("games.example"), local(at))
    assert (decision.verdict, decision.rule_id) == (verdict, rule)


def test_decisions_for_different_devices_are_remembered_apart(write_policy: Callable[..., Path]) -> None:
    """The decision cache must key on ownership: the school's laptop asking first must not
    answer for a personal phone asking the same thing a moment later (and the other way)."""
    policy = load_policy(write_policy(HEAD + DEVICE_RULES))
    at = local("2026-11-23 19:00")
    verdicts = [
        decide(policy, Client(ip="10.0.0.9", role=Role.STAFF, ownership=o), Target("games.example"), at).verdict
        for o in (Ownership.SCHOOL_OWNED, Ownership.PERSONAL, Ownership.SCHOOL_OWNED, None)
    ]
    assert verdicts == [Verdict.BLOCK, Verdict.ALLOW, Verdict.BLOCK, Verdict.ALLOW]
