"""Alert rules for the DSL, run incrementally over the access events.

`AlertEngine.scan` reads the events written since its cursor (kept in the `generations`
table as `alerts_cursor`), runs each rule over them in id order and turns what the rules
raise into cases. A rule that fires again for the same device (or address) while its case
is still open adds to that case (its evidence, last_seen) instead of opening another.
The cursor moves in the same transaction as the cases, so a rescan never counts twice.

Each case carries its evidence (services.alert_evidence): what the device tried, where,
when and how many times, in words a DSL can judge from a phone. The rules that count
attempts (circumvention, repeated blocked attempts) are in services.attempt_rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta, tzinfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from schoolgate.services.alert_evidence import Evidence, EvidenceItem
from schoolgate.services.alert_trigger import (
    AlertRule,
    ScannedEvent,
    Trigger,
    outcome_of,
    severity_rank,
    subject_of,
    who,
)
from schoolgate.services.attempt_rules import (
    KIND_CIRCUMVENTION,
    KIND_REPEATED_BLOCKS,
    CircumventionRule,
    RepeatedBlocksRule,
)
from schoolgate.services.common import read_mark, write_mark
from schoolgate.services.keywords import KeywordList, searchable_text
from schoolgate.services.selftest_devices import is_selftest
from schoolgate.services.signals import flag_set
from schoolgate.store.models import AccessEvent, Alert, AlertHistory
from schoolgate.timewords import clock_words, day_words

CURSOR_NAME = "alerts_cursor"
ENGINE_ACTOR = "system:alerts"
OPEN_STATUSES = ("new", "in_review")

KIND_SAFEGUARDING = "safeguarding_term"
KIND_OUT_OF_HOURS = "out_of_hours"
KIND_PUPIL_UPSET = "pupil_upset"
# The proxy's flag on the post of the pupil block page's "this upset me" button
# (schoolgate.proxy.addons.FLAG_UPSET; the proxy is not imported here).
UPSET_FLAG = "upset"

__all__ = [
    "KIND_CIRCUMVENTION",
    "KIND_OUT_OF_HOURS",
    "KIND_PUPIL_UPSET",
    "KIND_REPEATED_BLOCKS",
    "KIND_SAFEGUARDING",
    "AlertEngine",
    "AlertRule",
    "AlertSettings",
    "ScanResult",
    "Trigger",
    "read_cursor",
    "severity_rank",
    "subject_of",
]


@dataclass(slots=True)
class EventSnapshot:
    """An access event as the scan reads it: its columns, not a mapped object (ScannedEvent).
    A batch of AccessEvent objects cost the scan about 10 µs an event to build and a quarter
    of a µs for each of the forty-odd attribute reads the rules make of it."""

    id: int
    ts: datetime
    count: int
    source: str
    host: str
    url: str | None
    search_term: str | None
    verdict: str
    rule_id: str
    category: str | None
    flags: str
    service: str | None
    client_ip: str
    device_id: str | None
    device_name: str | None
    person_id: str | None
    person_name: str | None
    role: str


# EventSnapshot's fields, in its order.
_SNAPSHOT_COLUMNS = tuple(getattr(AccessEvent, name) for name in EventSnapshot.__dataclass_fields__)


def _flags(event: ScannedEvent) -> frozenset[str]:
    return flag_set(event.flags)


def _event_item(event: ScannedEvent, kind: str, label: str, target: str, outcome: str = "") -> EvidenceItem:
    return EvidenceItem(kind=kind, label=label, target=target, first=event.ts, last=event.ts,
                        requests=event.count or 1, outcome=outcome, event_id=event.id)


class SafeguardingTermRule:
    """A safeguarding term in a search or a URL's query; one case per device and category."""

    def __init__(self, keywords: KeywordList) -> None:
        self.keywords = keywords

    def prepare(self, session: Session, site: str, events: Sequence[ScannedEvent], cursor: int, *, fresh: bool) -> None:
        return None

    def check(self, event: ScannedEvent) -> Iterable[Trigger]:
        text = searchable_text(event.search_term, event.url)
        if not text:
            return ()
        return [
            Trigger(
                kind=KIND_SAFEGUARDING,
                rule_id=f"safeguarding:{match.category}",
                severity=match.severity,
                title=f"Safeguarding concern ({match.category}) from {who(event)}",
                summary=f"matched {match.term!r} on {event.host}",
                event=event,
                category=match.category,
                evidence=(
                    _event_item(event, "search_term", "Searched for, or opened a page about, a safeguarding term",
                                f"\u201c{match.term}\u201d on {event.host}", outcome_of(event)),
                ),
            )
            for match in self.keywords.match(text)
        ]


class OutOfHoursRule:
    """Activity by the given roles between `start` and `end`, on the school's clock (`zone`, the
    policy's `[school] timezone`)."""

    def __init__(self, start: time, end: time, roles: Iterable[str], severity: str = "low", *, zone: tzinfo) -> None:
        self.zone = zone
        self.start = start
        self.end = end
        self.roles = frozenset(roles)
        self.severity = severity

    def is_out_of_hours(self, at: datetime) -> bool:
        local = at.astimezone(self.zone).time()
        if self.start <= self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end  # the window spans midnight

    def prepare(self, session: Session, site: str, events: Sequence[ScannedEvent], cursor: int, *, fresh: bool) -> None:
        return None

    def check(self, event: ScannedEvent) -> Iterable[Trigger]:
        if event.role not in self.roles or not self.is_out_of_hours(event.ts):
            return ()
        local = clock_words(event.ts.astimezone(self.zone))
        return (
            Trigger(
                kind=KIND_OUT_OF_HOURS,
                rule_id="out_of_hours",
                severity=self.severity,
                title=f"Out-of-hours activity from {who(event)}",
                summary=f"{event.host} at {local} ({event.verdict})",
                event=event,
                evidence=(_event_item(event, "out_of_hours", "Used the school network out of hours", event.host,
                                      outcome_of(event)),),
            ),
        )


class PupilUpsetRule:
    """A pupil pressed "this upset me" on the block page: the child is telling the DSL.

    The proxy only logs the press with a token it issued to that device for that page, so the
    event is the evidence: the device, its address, the person where known, the time, and the
    site and address of the page. One case per device and site while it is open."""

    def __init__(self, severity: str = "high", *, zone: tzinfo) -> None:
        self.severity = severity
        self.zone = zone  # the school's clock, for the case's words

    def prepare(self, session: Session, site: str, events: Sequence[ScannedEvent], cursor: int, *, fresh: bool) -> None:
        return None

    def check(self, event: ScannedEvent) -> Iterable[Trigger]:
        if UPSET_FLAG not in _flags(event):
            return ()
        local = event.ts.astimezone(self.zone)
        when = f"{day_words(local.date(), today=local.date())} at {clock_words(local)}"
        page = f" ({event.url})" if event.url else ""
        return (
            Trigger(
                kind=KIND_PUPIL_UPSET,
                rule_id=f"upset:{event.host}"[:100],
                severity=self.severity,
                title=f"A pupil said a blocked page upset them: {who(event)}",
                summary=(
                    f"On {when}, {who(event)} at {event.client_ip} was shown the block page for "
                    f"{event.service or event.host}{page} and pressed \"this upset me\". "
                    f"Rule: {event.rule_id}."
                ),
                event=event,
                category=event.category,
                evidence=(_event_item(event, "upset", "Pressed \u201cthis upset me\u201d on the block page for",
                                      event.service or event.host),),
            ),
        )


@dataclass(frozen=True)
class AlertSettings:
    """What the rules look for; from `[alerts]` in schoolgate.toml (see `from_config`)."""

    repeated_blocks_threshold: int = 10
    repeated_blocks_window: timedelta = timedelta(minutes=10)
    out_of_hours_start: time = time(19, 0)
    out_of_hours_end: time = time(7, 0)
    out_of_hours_roles: frozenset[str] = frozenset({"pupil"})
    keywords: KeywordList = field(default_factory=KeywordList.load)
    repeated_blocks_severity: str = "medium"
    out_of_hours_severity: str = "low"
    pupil_upset_severity: str = "high"  # e-mailed to the DSL at once (alerts.immediate_severities)
    # DNS sent to another resolver raises a case of its own (off: it is evidence beside intent)
    foreign_resolver_alerts: bool = False
    # Events this young wait for the next scan, so that what a device did in one moment (an
    # encrypted-DNS probe and its plain fallback) is judged together. 0: scan everything.
    settle: timedelta = timedelta(0)
    # The school's clock (the policy's `[school] timezone`): out of hours, and the times in a
    # case's words. UTC only where no policy is at hand (a bare engine in a benchmark).
    zone: tzinfo = UTC

    @classmethod
    def from_config(cls, alerts: object, zone: tzinfo = UTC) -> AlertSettings:
        """Build from schoolgate.config.AlertsConfig; a bad value raises ValueError naming it."""
        from schoolgate.config import AlertsConfig

        if not isinstance(alerts, AlertsConfig):
            raise TypeError("expected an AlertsConfig")

        def parse_time(name: str, text: str) -> time:
            try:
                return time.fromisoformat(text)
            except ValueError as err:
                raise ValueError(f"alerts.{name}: expected a time like 19:00, got {text!r}") from err

        if alerts.repeated_blocks_threshold < 1:
            raise ValueError("alerts.repeated_blocks_threshold must be at least 1")
        if alerts.repeated_blocks_window_minutes < 1:
            raise ValueError("alerts.repeated_blocks_window_minutes must be at least 1")
        if not 0 <= alerts.settle_seconds <= 300:
            raise ValueError("alerts.settle_seconds must be between 0 and 300")
        return cls(
            repeated_blocks_threshold=alerts.repeated_blocks_threshold,
            repeated_blocks_window=timedelta(minutes=alerts.repeated_blocks_window_minutes),
            out_of_hours_start=parse_time("out_of_hours_start", alerts.out_of_hours_start),
            out_of_hours_end=parse_time("out_of_hours_end", alerts.out_of_hours_end),
            out_of_hours_roles=frozenset(alerts.out_of_hours_roles),
            keywords=KeywordList.load(alerts.keywords_file or None),
            foreign_resolver_alerts=alerts.foreign_resolver_alerts,
            settle=timedelta(seconds=alerts.settle_seconds),
            zone=zone,
        )

    def rules(self) -> list[AlertRule]:
        return [
            CircumventionRule(self.foreign_resolver_alerts, zone=self.zone),
            RepeatedBlocksRule(
                self.repeated_blocks_threshold, self.repeated_blocks_window, self.repeated_blocks_severity,
                zone=self.zone,
            ),
            SafeguardingTermRule(self.keywords),
            OutOfHoursRule(
                self.out_of_hours_start, self.out_of_hours_end, self.out_of_hours_roles, self.out_of_hours_severity,
                zone=self.zone,
            ),
            PupilUpsetRule(self.pupil_upset_severity, zone=self.zone),
        ]


@dataclass
class ScanResult:
    events: int = 0  # events examined
    cursor: int = 0  # the last event id processed
    opened: list[int] = field(default_factory=list)  # ids of new cases
    folded: list[int] = field(default_factory=list)  # ids of open cases that were triggered again


def read_cursor(session: Session, site: str, *, lock: bool = False) -> int:
    return read_mark(session, site, CURSOR_NAME, lock=lock)


def _write_cursor(session: Session, site: str, value: int, now: datetime) -> None:
    write_mark(session, site, CURSOR_NAME, value, now)


class AlertEngine:
    """Runs the rules over new events and keeps the DSL's cases up to date."""

    def __init__(self, settings: AlertSettings | None = None, batch_size: int = 2000) -> None:
        self.settings = settings or AlertSettings()
        self.batch_size = batch_size
        self.rules = self.settings.rules()
        # (site, cursor) that the rules' state has seen every event up to, after a scan that
        # returned: the next scan from that cursor carries it on rather than seeding it again
        # from the events before it (a device's last ten minutes re-read at every scan was
        # most of a busy scan's cost). None while a scan runs, so that one which fails half
        # way is never carried on; and a scan whose transaction is then rolled back starts
        # from a stored cursor that differs, so its successor seeds afresh.
        self._state_at: tuple[str, int] | None = None

    def scan(
        self,
        session: Session,
        site: str,
        since_event_id: int | None,
        now: datetime,
        *,
        max_events: int | None = None,
    ) -> ScanResult:
        """Process events after max(since_event_id, the stored cursor); the caller commits.

        `since_event_id` can only move the start forward: events already processed are never
        processed again, which makes repeated or overlapping scans harmless. `max_events`
        bounds one call (whole batches), so a backlog is worked off in several short
        transactions rather than one long hold on the write lock.
        """
        cursor = max(read_cursor(session, site, lock=True), since_event_id or 0)
        follows_on = self._state_at == (site, cursor)
        self._state_at = None
        result = ScanResult(cursor=cursor)
        # The open case for each fold key, looked up once per scan: most events that trigger
        # anything trigger the same few cases again.
        cases: dict[tuple[str, str, str | None, str | None], Alert | None] = {}
        touched: dict[Alert, int] = {}  # case -> triggers in this scan
        opened: list[Alert] = []
        folded: list[Alert] = []
        first = not follows_on  # the rules seed their state afresh from the events before the cursor
        horizon = now - self.settings.settle
        while True:
            fetched = [
                EventSnapshot(*row)
                for row in session.execute(
                    select(*_SNAPSHOT_COLUMNS)
                    .where(AccessEvent.site == site, AccessEvent.id > cursor)
                    .order_by(AccessEvent.id)
                    .limit(self.batch_size)
                )
            ]
            events = _settled(fetched, horizon) if self.settings.settle else fetched
            if not events:
                break
            for rule in self.rules:
                rule.prepare(session, site, events, cursor, fresh=first)
            first = False
            with session.no_autoflush:
                for event in events:
                    if is_selftest(event.device_id):
                        continue  # the appliance testing itself, not a person
                    for rule in self.rules:
                        for trigger in rule.check(event):
                            self._apply(
                                session,
                                site,
                                trigger,
                                now=now,
                                cases=cases,
                                touched=touched,
                                opened=opened,
                                folded=folded,
                            )
            cursor = events[-1].id
            result.events += len(events)
            session.flush()
            if len(events) < len(fetched) or len(fetched) < self.batch_size:
                break  # the rest is too young, or there is no more
            if max_events is not None and result.events >= max_events:
                break
        session.flush()  # every case has its id now
        for case, triggers in touched.items():
            repeats = triggers - 1 if case in opened else triggers
            if case in opened:
                session.add(
                    AlertHistory(
                        alert_id=case.id,
                        at=now,
                        actor=ENGINE_ACTOR,
                        action="opened",
                        detail=f"{case.title}: {case.summary}",
                    )
                )
            if repeats:
                session.add(
                    AlertHistory(
                        alert_id=case.id,
                        at=now,
                        actor=ENGINE_ACTOR,
                        action="retrigger",
                        detail=f"triggered {repeats} more time(s) by new events",
                    )
                )
        _write_cursor(session, site, cursor, now)
        session.flush()
        self._state_at = (site, cursor)
        result.cursor = cursor
        result.opened = [case.id for case in opened]
        result.folded = [case.id for case in folded if case not in opened]
        return result

    def _apply(
        self,
        session: Session,
        site: str,
        trigger: Trigger,
        *,
        now: datetime,
        cases: dict[tuple[str, str, str | None, str | None], Alert | None],
        touched: dict[Alert, int],
        opened: list[Alert],
        folded: list[Alert],
    ) -> None:
        event = trigger.event
        device_id, client_ip = subject_of(event)
        key = (trigger.kind, trigger.rule_id, device_id, client_ip)
        if key in cases:
            case = cases[key]
        else:
            conditions = [
                Alert.site == site,
                Alert.kind == trigger.kind,
                Alert.rule_id == trigger.rule_id,
                Alert.status.in_(OPEN_STATUSES),
                Alert.device_id.is_(None) if device_id is None else Alert.device_id == device_id,
            ]
            if device_id is None:
                conditions.append(Alert.client_ip == client_ip)
            case = cases[key] = session.scalars(select(Alert).where(*conditions).order_by(Alert.id).limit(1)).first()
        if case is not None:
            if case.last_event_id is not None and case.last_event_id >= event.id:
                return  # already counted (a rescan with an older cursor)
            evidence = Evidence.from_json(case.evidence)
            attempts_before = _counted_attempts(evidence)
            evidence.extend(trigger.evidence)
            severity, summary = _judged(trigger, evidence, self.settings.zone)
            case.evidence = evidence.to_json()
            case.summary = summary
            case.last_seen = max(case.last_seen, event.ts)
            case.last_event_id = event.id
            if trigger.counts_attempts:
                case.trigger_count = max(1, case.trigger_count + _counted_attempts(evidence) - attempts_before)
            elif trigger.opens:
                case.trigger_count += 1
            if event.person_id and not case.person_id:
                case.person_id = event.person_id
            if case in opened:
                case.severity = severity  # opened in this scan, judged on all it has seen so far
            elif severity_rank(severity) > severity_rank(case.severity):
                case.severity = severity
                case.notified_at = None  # escalated: worth telling the DSL again
            case.updated_at = now
            if trigger.opens:
                touched[case] = touched.get(case, 0) + 1
                if touched[case] == 1:
                    folded.append(case)
            return
        if not trigger.opens:
            return  # evidence for a case, not a case of its own
        evidence = Evidence(trigger.evidence)
        severity, summary = _judged(trigger, evidence, self.settings.zone)
        case = Alert(
            site=site,
            kind=trigger.kind,
            rule_id=trigger.rule_id,
            category=trigger.category,
            severity=severity,
            status="new",
            title=trigger.title[:300],
            summary=summary,
            evidence=evidence.to_json(),
            device_id=device_id,
            person_id=event.person_id,
            client_ip=event.client_ip,
            first_seen=min([event.ts, *((span[0],) if (span := evidence.span()) else ())]),
            last_seen=event.ts,
            trigger_count=_counted_attempts(evidence) if trigger.counts_attempts else 1,
            last_event_id=event.id,
            created_at=now,
            updated_at=now,
        )
        session.add(case)
        cases[key] = case
        opened.append(case)
        touched[case] = 1


def _counted_attempts(evidence: Evidence) -> int:
    """The attempts a case counts: those that show intent, where it has any (context such as
    DNS sent to another resolver does not add to them); else all of them."""
    return sum(item.attempts for item in evidence if item.intent) or evidence.attempts


def _judged(trigger: Trigger, evidence: Evidence, zone: tzinfo) -> tuple[str, str]:
    """(severity, summary) of a case with this evidence, as the trigger's rule judges it."""
    if trigger.assess is not None:
        return trigger.assess(evidence)
    if evidence:
        return trigger.severity, "\n".join([trigger.summary, *evidence.lines(zone)])
    return trigger.severity, trigger.summary


def _settled(events: Sequence[ScannedEvent], horizon: datetime) -> Sequence[ScannedEvent]:
    """The leading events no younger than `horizon`; the rest wait for the next scan."""
    for index, event in enumerate(events):
        if event.ts > horizon:
            return events[:index]
    return events
