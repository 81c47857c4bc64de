"""Alert rules for the DSL, run incrementally over the access events.

`AlertEngine.scan` reads the events written since its cursor (kept in the `generations`
table as `alerts_cursor`), runs each rule over them in id order and turns what the rules
raise into cases. A rule that fires again for the same device (or address) while its case
is still open adds to that case (trigger_count, last_seen) instead of opening another.
The cursor moves in the same transaction as the cases, so a rescan never counts twice.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from schoolgate.services.common import read_mark, write_mark
from schoolgate.services.keywords import SEVERITIES, KeywordList, searchable_text
from schoolgate.store.models import AccessEvent, Alert, AlertHistory

LONDON = ZoneInfo("Europe/London")
CURSOR_NAME = "alerts_cursor"
ENGINE_ACTOR = "system:alerts"
OPEN_STATUSES = ("new", "in_review")

# Flags the DNS daemon, the proxy and the gateway put on circumvention attempts.
CIRCUMVENTION_FLAGS = frozenset(
    {
        "circumvention",
        "doh",
        "dot",
        "doq",
        "vpn",
        "proxy_site",
        "foreign_resolver",
        "quic",
        "sni_fronting",
        "domain_fronting",
        "private_relay",
        "tor",
    }
)

KIND_CIRCUMVENTION = "circumvention"
KIND_REPEATED_BLOCKS = "repeated_blocks"
KIND_SAFEGUARDING = "safeguarding_term"
KIND_OUT_OF_HOURS = "out_of_hours"
KIND_PUPIL_UPSET = "pupil_upset"
# The proxy's flag on the post of the pupil block page's "this upset me" button
# (schoolgate.proxy.addons.FLAG_UPSET; the proxy is not imported here).
UPSET_FLAG = "upset"


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else 0


@dataclass(frozen=True, slots=True)
class Trigger:
    """One firing of a rule on one event."""

    kind: str
    rule_id: str
    severity: str
    title: str
    summary: str
    event: AccessEvent
    category: str | None = None


class AlertRule(Protocol):
    def prepare(self, session: Session, site: str, events: Sequence[AccessEvent], cursor: int, *, fresh: bool) -> None:
        """Load whatever state the rule needs before a batch; `fresh`: the first batch of a scan."""

    def check(self, event: AccessEvent) -> Iterable[Trigger]:
        """The triggers this event raises."""


def subject_of(event: AccessEvent) -> tuple[str | None, str | None]:
    """(device_id, client_ip) a case is folded on: the device when known, else the address."""
    if event.device_id:
        return event.device_id, None
    return None, event.client_ip


def _who(event: AccessEvent) -> str:
    name = event.device_name or event.device_id or event.client_ip
    return f"{name} ({event.person_name})" if event.person_name else name


def _flags(event: AccessEvent) -> set[str]:
    return {f.strip().lower() for f in (event.flags or "").split(",") if f.strip()}


class CircumventionRule:
    """DoH, VPN or proxy sites, foreign resolvers, QUIC/DoT to watched services, SNI fronting."""

    def __init__(self, severity: str = "high") -> None:
        self.severity = severity

    def prepare(self, session: Session, site: str, events: Sequence[AccessEvent], cursor: int, *, fresh: bool) -> None:
        return None

    def check(self, event: AccessEvent) -> Iterable[Trigger]:
        flags = _flags(event) & CIRCUMVENTION_FLAGS
        if not flags and event.category != "circumvention":
            return ()
        what = event.service or event.host
        kinds = ", ".join(sorted(flags)) or "circumvention"
        return (
            Trigger(
                kind=KIND_CIRCUMVENTION,
                rule_id="circumvention",
                severity=self.severity,
                title=f"Circumvention attempt from {_who(event)}",
                summary=f"{kinds}: {what} ({event.verdict})",
                event=event,
            ),
        )


class RepeatedBlocksRule:
    """N blocked attempts within M minutes by one device (or address, when the device is unknown).

    After firing, counting starts afresh, so a device hammering a blocked site raises its
    case again every N attempts, not on every attempt.
    """

    def __init__(self, threshold: int, window: timedelta, severity: str = "medium") -> None:
        if threshold < 1:
            raise ValueError("the repeated blocks threshold must be at least 1")
        self.threshold = threshold
        self.window = window
        self.severity = severity
        self._recent: dict[tuple[str | None, str | None], deque[tuple[datetime, int]]] = {}

    def prepare(self, session: Session, site: str, events: Sequence[AccessEvent], cursor: int, *, fresh: bool) -> None:
        """Seed the windows of subjects new to this scan from the events before it.

        Subjects already seen in this scan carry their window over from the previous batch.
        """
        if fresh:
            self._recent = {}
        blocked = [e for e in events if e.verdict == "block"]
        if not blocked:
            return
        first_ts = min(e.ts for e in blocked)
        for subject in {subject_of(e) for e in blocked} - set(self._recent):
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
            match = AccessEvent.device_id == device_id if device_id else AccessEvent.client_ip == client_ip
            conditions = [
                AccessEvent.site == site,
                AccessEvent.verdict == "block",
                AccessEvent.ts >= since,
                AccessEvent.id <= cursor,
                match,
            ]
            if not device_id:
                conditions.append(AccessEvent.device_id.is_(None))
            rows = session.execute(
                select(AccessEvent.ts, AccessEvent.count).where(*conditions).order_by(AccessEvent.ts)
            ).all()
            self._recent[subject] = deque((ts, count or 1) for ts, count in rows)

    def check(self, event: AccessEvent) -> Iterable[Trigger]:
        if event.verdict != "block":
            return ()
        subject = subject_of(event)
        window = self._recent.setdefault(subject, deque())
        window.append((event.ts, event.count or 1))
        while window and window[0][0] <= event.ts - self.window:
            window.popleft()
        total = sum(count for _ts, count in window)
        if total < self.threshold:
            return ()
        window.clear()
        minutes = int(self.window.total_seconds() // 60)
        return (
            Trigger(
                kind=KIND_REPEATED_BLOCKS,
                rule_id="repeated_blocks",
                severity=self.severity,
                title=f"Repeated blocked attempts from {_who(event)}",
                summary=f"{total} blocked attempts within {minutes} minutes; latest {event.service or event.host}",
                event=event,
            ),
        )


class SafeguardingTermRule:
    """A safeguarding term in a search or a URL's query; one case per device and category."""

    def __init__(self, keywords: KeywordList) -> None:
        self.keywords = keywords

    def prepare(self, session: Session, site: str, events: Sequence[AccessEvent], cursor: int, *, fresh: bool) -> None:
        return None

    def check(self, event: AccessEvent) -> Iterable[Trigger]:
        text = searchable_text(event.search_term, event.url)
        if not text:
            return ()
        return [
            Trigger(
                kind=KIND_SAFEGUARDING,
                rule_id=f"safeguarding:{match.category}",
                severity=match.severity,
                title=f"Safeguarding concern ({match.category}) from {_who(event)}",
                summary=f"matched {match.term!r} on {event.host}",
                event=event,
                category=match.category,
            )
            for match in self.keywords.match(text)
        ]


class OutOfHoursRule:
    """Activity by the given roles between `start` and `end`, Europe/London local time."""

    def __init__(self, start: time, end: time, roles: Iterable[str], severity: str = "low") -> None:
        self.start = start
        self.end = end
        self.roles = frozenset(roles)
        self.severity = severity

    def is_out_of_hours(self, at: datetime) -> bool:
        local = at.astimezone(LONDON).time()
        if self.start <= self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end  # the window spans midnight

    def prepare(self, session: Session, site: str, events: Sequence[AccessEvent], cursor: int, *, fresh: bool) -> None:
        return None

    def check(self, event: AccessEvent) -> Iterable[Trigger]:
        if event.role not in self.roles or not self.is_out_of_hours(event.ts):
            return ()
        local = event.ts.astimezone(LONDON).strftime("%H:%M")
        return (
            Trigger(
                kind=KIND_OUT_OF_HOURS,
                rule_id="out_of_hours",
                severity=self.severity,
                title=f"Out-of-hours activity from {_who(event)}",
                summary=f"{event.host} at {local} ({event.verdict})",
                event=event,
            ),
        )


class PupilUpsetRule:
    """A pupil pressed "this upset me" on the block page: the child is telling the DSL.

    The proxy only logs the press with a token it issued to that device for that page, so the
    event is the evidence: the device, its address, the person where known, the time, and the
    site and address of the page. One case per device and site while it is open."""

    def __init__(self, severity: str = "high") -> None:
        self.severity = severity

    def prepare(self, session: Session, site: str, events: Sequence[AccessEvent], cursor: int, *, fresh: bool) -> None:
        return None

    def check(self, event: AccessEvent) -> Iterable[Trigger]:
        if UPSET_FLAG not in _flags(event):
            return ()
        local = event.ts.astimezone(LONDON)
        when = f"{local:%A} {local.day} {local:%B} at {local:%H:%M}"
        page = f" ({event.url})" if event.url else ""
        return (
            Trigger(
                kind=KIND_PUPIL_UPSET,
                rule_id=f"upset:{event.host}"[:100],
                severity=self.severity,
                title=f"A pupil said a blocked page upset them: {_who(event)}",
                summary=(
                    f"On {when}, {_who(event)} at {event.client_ip} was shown the block page for "
                    f"{event.service or event.host}{page} and pressed \"this upset me\". "
                    f"Rule: {event.rule_id}."
                ),
                event=event,
                category=event.category,
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
    circumvention_severity: str = "high"
    repeated_blocks_severity: str = "medium"
    out_of_hours_severity: str = "low"
    pupil_upset_severity: str = "high"  # e-mailed to the DSL at once (alerts.immediate_severities)

    @classmethod
    def from_config(cls, alerts: object) -> AlertSettings:
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
        return cls(
            repeated_blocks_threshold=alerts.repeated_blocks_threshold,
            repeated_blocks_window=timedelta(minutes=alerts.repeated_blocks_window_minutes),
            out_of_hours_start=parse_time("out_of_hours_start", alerts.out_of_hours_start),
            out_of_hours_end=parse_time("out_of_hours_end", alerts.out_of_hours_end),
            out_of_hours_roles=frozenset(alerts.out_of_hours_roles),
            keywords=KeywordList.load(alerts.keywords_file or None),
        )

    def rules(self) -> list[AlertRule]:
        return [
            CircumventionRule(self.circumvention_severity),
            RepeatedBlocksRule(
                self.repeated_blocks_threshold, self.repeated_blocks_window, self.repeated_blocks_severity
            ),
            SafeguardingTermRule(self.keywords),
            OutOfHoursRule(
                self.out_of_hours_start, self.out_of_hours_end, self.out_of_hours_roles, self.out_of_hours_severity
            ),
            PupilUpsetRule(self.pupil_upset_severity),
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
        result = ScanResult(cursor=cursor)
        # The open case for each fold key, looked up once per scan: most events that trigger
        # anything trigger the same few cases again.
        cases: dict[tuple[str, str, str | None, str | None], Alert | None] = {}
        touched: dict[Alert, int] = {}  # case -> triggers in this scan
        opened: list[Alert] = []
        folded: list[Alert] = []
        first = True
        while True:
            events = session.scalars(
                select(AccessEvent)
                .where(AccessEvent.site == site, AccessEvent.id > cursor)
                .order_by(AccessEvent.id)
                .limit(self.batch_size)
            ).all()
            if not events:
                break
            for rule in self.rules:
                rule.prepare(session, site, events, cursor, fresh=first)
            first = False
            with session.no_autoflush:
                for event in events:
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
            if len(events) < self.batch_size or (max_events is not None and result.events >= max_events):
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
            case.trigger_count += 1
            case.last_seen = max(case.last_seen, event.ts)
            case.last_event_id = event.id
            case.summary = trigger.summary
            if event.person_id and not case.person_id:
                case.person_id = event.person_id
            if severity_rank(trigger.severity) > severity_rank(case.severity):
                case.severity = trigger.severity
                case.notified_at = None  # escalated: worth telling the DSL again
            case.updated_at = now
            touched[case] = touched.get(case, 0) + 1
            if touched[case] == 1:
                folded.append(case)
            return
        case = Alert(
            site=site,
            kind=trigger.kind,
            rule_id=trigger.rule_id,
            category=trigger.category,
            severity=trigger.severity,
            status="new",
            title=trigger.title[:300],
            summary=trigger.summary,
            device_id=device_id,
            person_id=event.person_id,
            client_ip=event.client_ip,
            first_seen=event.ts,
            last_seen=event.ts,
            trigger_count=1,
            last_event_id=event.id,
            created_at=now,
            updated_at=now,
        )
        session.add(case)
        cases[key] = case
        opened.append(case)
        touched[case] = 1
