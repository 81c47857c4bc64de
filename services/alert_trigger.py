"""What an alert rule hands the alert engine: a trigger, with the evidence behind it.

Shared by the rules (services.alert_rules, services.attempt_rules) and the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy.orm import Session

from schoolgate.services.alert_evidence import Evidence, EvidenceItem
from schoolgate.services.keywords import SEVERITIES
from schoolgate.services.signals import EventFields


class ScannedEvent(EventFields, Protocol):
    """The fields of an access event the alert rules read: an AccessEvent, or the engine's
    snapshot of one (schoolgate.services.alert_rules.EventSnapshot), which costs a scan a
    fraction of a mapped object. Read only: a rule never changes an event."""

    id: int
    ts: datetime
    count: int
    client_ip: str
    device_id: str | None
    device_name: str | None
    person_id: str | None
    person_name: str | None
    role: str
    search_term: str | None


# (severity, summary) of a case from all of its evidence, old and new.
Assessment = Callable[[Evidence], tuple[str, str]]


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else 0


@dataclass(frozen=True, slots=True)
class Trigger:
    """One firing of a rule on one event.

    ``evidence`` goes into the case; ``assess``, when given, judges the case's severity and
    writes its summary from all of its evidence. A trigger that does not ``open`` a case only
    adds its evidence to an open one (what is not an alert by itself, but belongs in one).
    """

    kind: str
    rule_id: str
    severity: str
    title: str
    summary: str
    event: ScannedEvent
    category: str | None = None
    evidence: tuple[EvidenceItem, ...] = ()
    assess: Assessment | None = None
    opens: bool = True
    # The case's count is its attempts (from the evidence), not the triggers that fired.
    counts_attempts: bool = False


class AlertRule(Protocol):
    def prepare(self, session: Session, site: str, events: Sequence[ScannedEvent], cursor: int, *, fresh: bool) -> None:
        """Load whatever state the rule needs before a batch. `fresh`: forget what earlier
        batches left, and seed anew from the events up to `cursor` (the first batch of a scan
        that does not follow on from the engine's previous one); otherwise the state carries
        on from the batch before, of this scan or of the previous scan."""

    def check(self, event: ScannedEvent) -> Iterable[Trigger]:
        """The triggers this event raises."""


def subject_of(event: ScannedEvent) -> tuple[str | None, str | None]:
    """(device_id, client_ip) a case is folded on: the device when known, else the address."""
    if event.device_id:
        return event.device_id, None
    return None, event.client_ip


def who(event: ScannedEvent) -> str:
    name = event.device_name or event.device_id or event.client_ip
    return f"{name} ({event.person_name})" if event.person_name else name


def outcome_of(event: ScannedEvent) -> str:
    """What the appliance did, in plain words."""
    if event.source == "gateway" and event.verdict == "block":
        return "refused"  # the kernel refused the connection
    return {
        "block": "blocked",
        "refused": "refused",
        "redirect": "answered by schoolgate instead",
        "allow": "allowed",
        "safe_search": "allowed with safe search",
    }.get(event.verdict, event.verdict)
