"""The two alert rules that count what a person tried: circumvention, and repeated blocked attempts.

Both count attempts, not requests: one device reaching one target, with every request within
``ATTEMPT_SPAN`` (30 s) of the previous one belonging to the same attempt, so a page view that
makes a dozen requests is one attempt. Both put their evidence (what, where, when, how often)
in the case, in plain words.

Circumvention (seed 001 §9) opens a case only on what shows intent (services.signals), with a
severity that reflects how sure that is:

- high: a crafted connection (domain fronting, a hidden name), a circumvention site the
  device actually connected to, two or more different methods, or encrypted DNS to another
  provider from a device that also sends plain DNS elsewhere;
- medium: a circumvention site that was only looked up, or encrypted DNS (DoH, DoT);
- low: encrypted DNS to the very resolver the device already sends its plain DNS to (phones
  and browsers upgrade to it by themselves), and, where the technician turned them on,
  queries to another resolver alone.

DNS sent to another resolver (port 53) is evidence: it joins the device's open circumvention
case, and the case that opens next, but raises none of its own unless the technician turned
that on (``[alerts] foreign_resolver_alerts``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from functools import lru_cache, partial
from typing import Protocol, cast

from publicsuffix2 import get_tld
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from schoolgate.services.alert_evidence import ATTEMPT_SPAN, Evidence, EvidenceItem
from schoolgate.services.alert_trigger import ScannedEvent, Trigger, outcome_of, subject_of, who
from schoolgate.services.signals import CRAFTED, ENCRYPTED_DNS, EventFields, Signal, SignalKind, classify, flag_set
from schoolgate.store.models import AccessEvent, Alert
from schoolgate.timewords import clock_words, day_words

KIND_CIRCUMVENTION = "circumvention"
KIND_REPEATED_BLOCKS = "repeated_blocks"
# How far back DNS to another resolver joins a device's circumvention case as evidence.
CONTEXT_WINDOW = timedelta(minutes=30)

Subject = tuple[str | None, str | None]


def _subject_condition(subject: Subject) -> list[ColumnElement[bool]]:
    device_id, client_ip = subject
    if device_id:
        return [AccessEvent.device_id == device_id]
    return [AccessEvent.device_id.is_(None), AccessEvent.client_ip == client_ip]


def _when(first: datetime, last: datetime, zone: tzinfo) -> str:
    """"on Tuesday 6 October between 10:00 am and 10:03 am", on the school's clock."""
    first, last = first.astimezone(zone), last.astimezone(zone)
    day = day_words(first.date(), today=first.date())
    start, end = clock_words(first), clock_words(last)
    if start == end:
        return f"on {day} at {start}"
    return f"on {day} between {start} and {end}"


# ---------------------------------------------------------------------------- circumvention


def _item(signal: Signal, event: ScannedEvent) -> EvidenceItem:
    target = signal.target
    if signal.kind in ENCRYPTED_DNS or signal.kind is SignalKind.FOREIGN_DNS:
        target = f"{signal.provider} ({signal.target})" if signal.provider else signal.target
    return EvidenceItem(
        kind=signal.kind.value,
        label=signal.label,
        target=target,
        first=event.ts,
        last=event.ts,
        requests=event.count or 1,
        outcome=outcome_of(event),
        intent=signal.intent,
        connected=signal.connected,
        address=signal.address,
        provider=signal.provider,
        event_id=event.id,
    )


def _own_resolver_upgrade(item: EvidenceItem, resolvers: set[str]) -> bool:
    """Encrypted DNS (by address, or by a resolver's name) to the resolver the device already
    sends plain DNS to."""
    if item.kind not in ENCRYPTED_DNS and not (item.kind == SignalKind.CIRCUMVENTION_SITE and item.provider):
        return False
    return bool((item.provider and item.provider in resolvers) or (item.address and item.address in resolvers))


def assess_circumvention(evidence: Evidence, zone: tzinfo) -> tuple[str, str]:
    """The case's severity and plain-words summary from all of its evidence."""
    items = list(evidence)
    foreign = [i for i in items if i.kind == SignalKind.FOREIGN_DNS]
    resolvers = {value for i in foreign for value in (i.provider, i.address) if value}
    intent = [i for i in items if i.intent]
    deliberate = [i for i in intent if not _own_resolver_upgrade(i, resolvers)]
    methods = {i.kind for i in deliberate}
    if not deliberate:
        severity = "low"
    elif (
        methods & CRAFTED
        or any(i.kind == SignalKind.CIRCUMVENTION_SITE and i.connected for i in deliberate)
        or len(methods) >= 2
        or foreign
    ):
        severity = "high"
    else:
        severity = "medium"
    span = evidence.span()
    attempts = sum(i.attempts for i in intent) or evidence.attempts
    head = (
        f"{attempts} attempt{'s' if attempts != 1 else ''} to get round the filter"
        f"{' ' + _when(*span, zone) if span else ''}; each was stopped."
    )
    if intent and not deliberate:
        head += (
            " The encrypted DNS went to the resolver the device already uses for its plain DNS: phones and "
            "browsers upgrade to it by themselves, so this may not be the person's doing."
        )
    elif foreign and not intent:
        head += " Only DNS sent to another resolver, which schoolgate answered; many devices do this by design."
    return severity, "\n".join([head, *evidence.lines(zone)])


class CircumventionRule:
    """One case per device: the ways round the filter it tried, with the evidence."""

    def __init__(
        self, foreign_resolver_alerts: bool = False, window: timedelta = CONTEXT_WINDOW, *, zone: tzinfo
    ) -> None:
        self.foreign_resolver_alerts = foreign_resolver_alerts
        self.zone = zone  # the school's clock, for the case's words
        self.window = window
        # per subject: the recent DNS sent to other resolvers (evidence for an intent case)
        self._foreign: dict[Subject, deque[EvidenceItem]] = {}

    def prepare(self, session: Session, site: str, events: Sequence[ScannedEvent], cursor: int, *, fresh: bool) -> None:
        """Seed the recent foreign-resolver evidence of subjects new to the rule's state from
        before the batch. Carried on from an earlier batch, a subject whose evidence has all
        left the window is forgotten (seeded again when it next shows intent)."""
        if fresh:
            self._foreign = {}
        elif events:
            stale = events[0].ts - 2 * self.window  # room for events written out of order
            for subject in [s for s, recent in self._foreign.items()
                            if not recent or max(item.last for item in recent) < stale]:
                del self._foreign[subject]
        intent = [e for e in events if (s := classify(e)) is not None and s.intent]
        for subject in {subject_of(e) for e in intent} - set(self._foreign):
            since = min(e.ts for e in intent if subject_of(e) == subject) - self.window
            rows = session.scalars(
                select(AccessEvent).where(
                    AccessEvent.site == site,
                    AccessEvent.source == "gateway",
                    AccessEvent.rule_id == "gateway.redirect.dns",
                    AccessEvent.ts >= since,
                    AccessEvent.id <= cursor,
                    *_subject_condition(subject),
                ).order_by(AccessEvent.id)
            ).all()
            recent: deque[EvidenceItem] = deque()
            for row in rows:
                signal = classify(row)
                if signal is not None:
                    recent.append(_item(signal, row))
            self._foreign[subject] = recent

    def _recent_foreign(self, subject: Subject, now: datetime) -> tuple[EvidenceItem, ...]:
        recent = self._foreign.get(subject)
        if not recent:
            return ()
        while recent and recent[0].last < now - self.window:
            recent.popleft()
        return tuple(recent)

    def check(self, event: ScannedEvent) -> Iterable[Trigger]:
        signal = classify(event)
        if signal is None or signal.kind is SignalKind.QUIC:
            return ()
        item = _item(signal, event)
        subject = subject_of(event)
        if signal.kind is SignalKind.FOREIGN_DNS:
            self._foreign.setdefault(subject, deque()).append(item)
            evidence: tuple[EvidenceItem, ...] = (item,)
            opens = self.foreign_resolver_alerts
        else:
            evidence = (item, *self._recent_foreign(subject, event.ts))
            opens = True
        return (
            Trigger(
                kind=KIND_CIRCUMVENTION,
                rule_id="circumvention",
                severity="low",  # judged from the evidence by assess_circumvention
                title=f"Circumvention attempt from {who(event)}",
                summary="",
                event=event,
                category="circumvention",
                evidence=evidence,
                assess=partial(assess_circumvention, zone=self.zone),
                opens=opens,
                counts_attempts=True,
            ),
        )


# ---------------------------------------------------------------------------- repeated blocks


@lru_cache(maxsize=4096)  # a school's blocked attempts are mostly a few hundred names, tried again and again
def registrable(host: str) -> str:
    """The name a person registered: bbc.co.uk for www.bbc.co.uk, games.example for
    cdn.games.example (a name under no known suffix keeps its last two labels)."""
    host = host.lower().rstrip(".")
    suffix = get_tld(host, strict=True)
    if isinstance(suffix, str) and host != suffix and host.endswith("." + suffix):
        return f"{host[: -len(suffix) - 1].rsplit('.', 1)[-1]}.{suffix}"
    return ".".join(host.split(".")[-2:])


class AttemptFields(EventFields, Protocol):
    """The fields of an access event a blocked attempt is made of (an AccessEvent, or a row of
    _ATTEMPT_COLUMNS)."""

    id: int
    ts: datetime
    count: int


_ATTEMPT_COLUMNS = (
    AccessEvent.id, AccessEvent.ts, AccessEvent.count, AccessEvent.source, AccessEvent.host, AccessEvent.url,
    AccessEvent.verdict, AccessEvent.rule_id, AccessEvent.category, AccessEvent.flags, AccessEvent.service,
)


def site_of(event: EventFields) -> tuple[str, str]:
    """(key, name) of the site a blocked request was for: its catalogue service, else the
    registrable domain of its host, so that www.x.example and img.x.example are one site."""
    name = registrable(event.host or "")
    return (f"service:{event.service}" if event.service else name), name


def site_key(event: EventFields) -> str:
    """site_of's key alone: the service's needs no look-up of the host's registrable domain
    (a flood of new names under one blocked service is one site, and each name new)."""
    return f"service:{event.service}" if event.service else registrable(event.host or "")


def counts_as_blocked_attempt(event: EventFields) -> bool:
    """A blocked request a person made: not the gateway's refusals, not circumvention (which has
    a case of its own), not names devices ask by themselves."""
    if event.verdict != "block" or event.source == "gateway":
        return False
    if "special_name" in flag_set(event.flags):
        return False
    return classify(event) is None


@dataclass
class _Attempt:
    site: str  # the site key
    name: str  # the site's name, for the evidence
    first: datetime
    last: datetime
    requests: int
    event_id: int  # the newest event in it


class RepeatedBlocksRule:
    """N blocked attempts within M minutes by one device (or address, when the device is unknown).

    After firing, counting starts afresh, so a device that keeps trying raises its case again
    every N attempts, not on every request.
    """

    def __init__(self, threshold: int, window: timedelta, severity: str = "medium",
                 span: timedelta = ATTEMPT_SPAN, *, zone: tzinfo) -> None:
        self.zone = zone  # the school's clock, for the case's words
        if threshold < 1:
            raise ValueError("the repeated blocks threshold must be at least 1")
        self.threshold = threshold
        self.window = window
        self.severity = severity
        self.span = span
        self._attempts: dict[Subject, deque[_Attempt]] = {}

    def prepare(self, session: Session, site: str, events: Sequence[ScannedEvent], cursor: int, *, fresh: bool) -> None:
        """Seed the attempts of subjects new to the rule's state from the events before the batch.

        Subjects already in it carry their attempts over from the previous batch (of this scan,
        or of the scan before, see AlertEngine); one whose attempts have all left the window is
        forgotten, and seeded again if it tries once more: seeding finds the same attempts.
        """
        if fresh:
            self._attempts = {}
        elif events:
            stale = events[0].ts - 2 * self.window  # room for events written out of order
            for subject in [s for s, attempts in self._attempts.items()
                            if not attempts or max(a.last for a in attempts) < stale]:
                del self._attempts[subject]
        blocked = [e for e in events if counts_as_blocked_attempt(e)]
        if not blocked:
            return
        first_ts = min(e.ts for e in blocked)
        for subject in {subject_of(e) for e in blocked} - set(self._attempts):
            device_id, client_ip = subject
            since = first_ts - self.window
            same_subject = (
                [Alert.device_id == device_id]
                if device_id
                else [Alert.device_id.is_(None), Alert.client_ip == client_ip]
            )
            last_fire = session.scalar(
                select(func.max(Alert.last_seen)).where(
                    Alert.site == site, Alert.kind == KIND_REPEATED_BLOCKS, *same_subject
                )
            )
            if last_fire is not None and last_fire >= since:
                since = last_fire + timedelta(microseconds=1)
            # Only the columns an attempt is made of, not whole rows: a device that keeps trying
            # one blocked site is one attempt, never fires, and has every blocked event of the
            # window read again at each scan (a flood of them cost the scan about 150 µs each as
            # mapped objects).
            rows = session.execute(
                select(*_ATTEMPT_COLUMNS)
                .where(
                    AccessEvent.site == site,
                    AccessEvent.verdict == "block",
                    AccessEvent.ts >= since,
                    AccessEvent.id <= cursor,
                    *_subject_condition(subject),
                )
                .order_by(AccessEvent.ts)
            ).all()
            self._attempts[subject] = deque()
            for row in rows:
                attempt = cast(AttemptFields, row)  # a Row: its columns by name
                if counts_as_blocked_attempt(attempt):
                    self._observe(subject, attempt)

    @property
    def subjects(self) -> int:
        """The devices (or addresses) whose recent attempts the rule holds."""
        return len(self._attempts)

    def _observe(self, subject: Subject, event: AttemptFields) -> deque[_Attempt]:
        attempts = self._attempts.setdefault(subject, deque())
        key = site_key(event)
        for attempt in reversed(attempts):
            if attempt.site == key and abs(event.ts - attempt.last) <= self.span:
                attempt.last = max(attempt.last, event.ts)
                attempt.requests += event.count or 1
                attempt.event_id = max(attempt.event_id, event.id)
                break
        else:
            attempts.append(_Attempt(key, site_of(event)[1], event.ts, event.ts, event.count or 1, event.id))
        while attempts and attempts[0].last <= event.ts - self.window:
            attempts.popleft()
        return attempts

    def check(self, event: ScannedEvent) -> Iterable[Trigger]:
        if not counts_as_blocked_attempt(event):
            return ()
        attempts = self._observe(subject_of(event), event)
        if len(attempts) < self.threshold:
            return ()
        # The attempts within the window of this one. Events reach the scan in the order they
        # were written, nearly always the order they happened in, and then that is all of them;
        # but a trust appliance's spool can deliver a device's attempts hours late, after its
        # newer ones, and those are never counted together.
        earliest, latest = event.ts - self.window, event.ts + self.window
        near = [a for a in attempts if earliest < a.last < latest]
        if len(near) < self.threshold:
            return ()
        evidence = tuple(
            EvidenceItem(kind="blocked_site", label="Tried to open a blocked site", target=a.name, first=a.first,
                         last=a.last, requests=a.requests, outcome="blocked", event_id=a.event_id)
            for a in sorted(near, key=lambda a: a.first)
        )
        count = len(near)
        first, last = min(a.first for a in near), max(a.last for a in near)
        minutes = int(self.window.total_seconds() // 60)
        if len(near) == len(attempts):
            attempts.clear()
        else:  # counting starts afresh for what fired; the device's other attempts still count
            for attempt in near:
                attempts.remove(attempt)
        severity = self.severity

        def assess(case: Evidence) -> tuple[str, str]:
            head = (
                f"{count} blocked attempts within {minutes} minutes {_when(first, last, self.zone)} "
                "(each attempt is one site tried once; the requests a page makes are one attempt)."
            )
            return severity, "\n".join([head, *case.lines(self.zone)])

        return (
            Trigger(
                kind=KIND_REPEATED_BLOCKS,
                rule_id="repeated_blocks",
                severity=severity,
                title=f"Repeated blocked attempts from {who(event)}",
                summary="",
                event=event,
                evidence=evidence,
                assess=assess,
            ),
        )
