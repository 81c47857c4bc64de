"""The "Am I filtered?" page's live test: what the policy says for this device, and what
schoolgate actually did with the device's own lookups of each category's canary.

The page makes the browser fetch every category's canary (a reserved name the policy always
files under that category). The fetches fail whatever happens (the names do not exist, and a
blocked one is answered with the block address), so the browser cannot tell; schoolgate can:
its DNS daemon logs each blocked lookup in full with the device's address. The result joins
the two, per category: expected (the policy's decision for this device now) and observed (a
blocked lookup from this address since the page was opened). A blocked category with no
blocked lookup means this device's lookups do not reach the school's filter: its own DNS,
encrypted DNS, a VPN or iCloud Private Relay.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from schoolgate.policy import Client, Target, Verdict, decide
from schoolgate.store.models import AccessEvent

# A lookup cached on the device from a visit a moment ago counts: blocked answers live briefly.
LOOKBACK = timedelta(minutes=2)

BLOCKED = "blocked"  # schoolgate blocked this device's lookup
NOT_SEEN = "not_seen"  # no blocked lookup from this device
ALLOWED = "allowed"


@dataclass(frozen=True, slots=True)
class CategoryTest:
    id: str
    name: str
    canary: str
    expected: str  # BLOCKED or ALLOWED: the policy's decision for this device now
    rule: str


@dataclass(frozen=True, slots=True)
class CategoryResult:
    test: CategoryTest
    observed: str  # BLOCKED or NOT_SEEN

    @property
    def as_policy_says(self) -> bool:
        return (self.observed == BLOCKED) == (self.test.expected == BLOCKED)

    def words(self) -> str:
        if self.test.expected == BLOCKED:
            if self.observed == BLOCKED:
                return "Blocked, as the policy says"
            return "NOT blocked: this device's lookup did not reach the school's filter"
        if self.observed == BLOCKED:
            return "Blocked, although the policy allows it"
        return "Open, as the policy says"


def category_tests(policy: Any, client: Client, now: datetime) -> list[CategoryTest]:
    tests = []
    for category in policy.categories:
        canary = getattr(category, "canary", None)
        if not canary:
            continue
        decision = decide(policy, client, Target(host=canary), now)
        expected = BLOCKED if decision.verdict is Verdict.BLOCK else ALLOWED
        tests.append(CategoryTest(category.id, category.name, canary, expected, decision.rule_id))
    return tests


def observe(session: Session, site: str, ip: str, tests: list[CategoryTest], since: datetime) -> list[CategoryResult]:
    """What schoolgate did with this address's lookups of the canaries since `since`."""
    names = [t.canary for t in tests]
    blocked = set(session.scalars(
        select(AccessEvent.host).where(
            AccessEvent.site == site,
            AccessEvent.ts >= since - LOOKBACK,
            AccessEvent.client_ip == ip,
            AccessEvent.host.in_(names),
            AccessEvent.verdict == Verdict.BLOCK.value,
        )
    ))
    return [CategoryResult(t, BLOCKED if t.canary in blocked else NOT_SEEN) for t in tests]


def reached(results: list[CategoryResult]) -> bool | None:
    """Whether this device's lookups reach the filter: True if any canary was blocked for it,
    False if some should have been and none was, None if the policy blocks none for it."""
    if any(r.observed == BLOCKED for r in results):
        return True
    if any(r.test.expected == BLOCKED for r in results):
        return False
    return None
