"""The facts of one school year's review, gathered from the policy, the configuration and the database.

The DfE standard asks a school to review its filtering and monitoring at least every year, with
the DSL, senior leaders, IT and a governor. This gathers what that meeting needs into plain
values (rendering is `review.render`'s job): the policy and why each category is treated as it
is, every change and approval with who and when, access requests and content reports with their
outcomes, alert counts (no pupil names unless asked), the check log, coverage, retention, and how
the appliance sits in the network with what that mode leaves to the school's own firewall.

The year runs from 1 September to 31 August, school-local time.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from schoolgate.config import AppConfig
from schoolgate.gateway.modes import ModeFacts
from schoolgate.gateway.modes import facts as mode_facts
from schoolgate.policy import Client, CompiledPolicy, Role, Target, Verdict, decide
from schoolgate.services import checklog, coverage
from schoolgate.services.rollups import ROLE
from schoolgate.services.selftest_devices import not_selftest
from schoolgate.store.models import (
    AccessEvent,
    AccessRequest,
    Alert,
    AuditEntry,
    CheckRecord,
    ContentReport,
    EventDaily,
    LanDevice,
)

_YEAR = re.compile(r"^(\d{4})-(\d{2})$")
# Audit actions that change what is filtered, or who may change it: listed one by one.
CHANGE_PREFIXES = ("request.", "exception.", "site_block.", "ban.", "policy.", "user.", "person.authorise",
                   "device.authorise", "report.action", "report.close", "check.fix", "list.")
VERDICT_WORDS = {Verdict.BLOCK: "Blocked", Verdict.ALLOW: "Open", Verdict.SAFE_SEARCH: "Safe search"}


class ReviewError(ValueError):
    """The review cannot be made as asked (a bad year); the message says why."""


@dataclass(frozen=True)
class Year:
    label: str  # "2026-27"
    start: datetime  # 1 September, local midnight
    end: datetime  # the next 1 September

    @classmethod
    def parse(cls, text: str, zone: tzinfo) -> Year:
        """"2026-27": 1 September 2026 to 1 September 2027, midnight in the school's `zone`
        (the policy's [school] timezone)."""
        match = _YEAR.match(text.strip())
        if not match or (int(match.group(1)) + 1) % 100 != int(match.group(2)):
            raise ReviewError(f"--year {text!r}: give the school year as YYYY-YY, e.g. 2026-27")
        first = int(match.group(1))
        return cls(text.strip(), datetime(first, 9, 1, tzinfo=zone), datetime(first + 1, 9, 1, tzinfo=zone))

    @property
    def zone(self) -> tzinfo:
        """The school's time zone the year was read in."""
        return self.start.tzinfo or UTC

    @property
    def last_day(self) -> date:
        return (self.end - timedelta(days=1)).date()

    def months(self) -> list[date]:
        return [date(self.start.year + (9 + i - 1) // 12, (9 + i - 1) % 12 + 1, 1) for i in range(12)]


@dataclass(frozen=True)
class RuleLine:
    position: int
    id: str
    action: str
    who: str
    what: str
    when: str
    clause: str
    reason: str
    locked: bool


@dataclass(frozen=True)
class CategoryLine:
    id: str
    name: str
    rationale: str
    decisions: list[tuple[str, str]]  # (verdict words, rule id) per column of `ReviewFacts.decision_columns`


@dataclass(frozen=True)
class ChangeLine:
    at: datetime
    actor: str
    action: str
    what: str


@dataclass
class ReviewFacts:
    school: str
    site: str
    year: Year
    generated_at: datetime
    include_names: bool
    policy_file: str
    policy_fingerprint: str
    mode: ModeFacts  # how the appliance sits in the network, and what that leaves to the school
    networks: list[tuple[str, str, str]] = field(default_factory=list)  # name, ranges, role
    windows: list[str] = field(default_factory=list)
    terms: list[str] = field(default_factory=list)
    rules: list[RuleLine] = field(default_factory=list)
    default_rule: str = ""
    decision_columns: list[str] = field(default_factory=list)
    categories: list[CategoryLine] = field(default_factory=list)
    changes: list[ChangeLine] = field(default_factory=list)
    change_counts: list[tuple[str, int]] = field(default_factory=list)  # every audited action
    requests_by_outcome: list[tuple[str, int]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    reports_by_outcome: list[tuple[str, int]] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    alerts_by_kind: list[tuple[str, dict[str, int], int]] = field(default_factory=list)  # kind, per severity, total
    alert_outcomes: list[tuple[str, int]] = field(default_factory=list)
    alert_cases: list[dict[str, Any]] = field(default_factory=list)  # only with names
    severities: tuple[str, ...] = ("low", "medium", "high", "critical")
    blocked_by_month: dict[str, list[int]] = field(default_factory=dict)  # role -> 12 months
    blocked_by_category: list[tuple[str, int]] = field(default_factory=list)
    selftests_by_month: dict[str, list[int]] = field(default_factory=dict)  # passed/failed -> 12 months
    selftest_failures: list[CheckRecord] = field(default_factory=list)
    manual_checks: list[CheckRecord] = field(default_factory=list)
    check_counts: dict[str, int] = field(default_factory=dict)
    coverage_now: dict[str, int] = field(default_factory=dict)
    coverage_found: int = 0
    coverage_devices: list[dict[str, Any]] = field(default_factory=list)  # only with names
    retention: list[tuple[str, str]] = field(default_factory=list)
    not_seen: list[str] = field(default_factory=list)
    month_labels: list[str] = field(default_factory=list)


def _names(policy: CompiledPolicy, mask: int, items: Any) -> list[str]:
    return [item.name for item in items if mask & (1 << item.bit)]


def _rule_line(policy: CompiledPolicy, rule: Any) -> RuleLine:
    roles = ", ".join(sorted(r.value for r in rule.roles)) or "everyone"
    what = [*(s.name for s in policy.services if s.index in rule.services),
            *_names(policy, rule.categories, policy.categories), *_names(policy, rule.lists, policy.lists)]
    when = []
    if rule.when_names:
        when.append("during " + " or ".join(n.replace("_", " ") for n in rule.when_names))
    if rule.unless_names:
        when.append("except during " + " or ".join(n.replace("_", " ") for n in rule.unless_names))
    if rule.year_groups:
        when.append("years " + ", ".join(str(y) for y in sorted(rule.year_groups)))
    return RuleLine(rule.position, rule.id, VERDICT_WORDS.get(rule.action, str(rule.action)), roles,
                    ", ".join(what) or "every site", "; ".join(when) or "at any time", rule.clause, rule.reason,
                    rule.locked)


def _first_school_day(policy: CompiledPolicy, year: Year) -> date:
    day = year.start.date()
    while day < year.end.date():
        if policy.calendar.is_school_day(day):
            return day
        day += timedelta(days=1)
    return year.start.date()


def policy_facts(facts: ReviewFacts, policy: CompiledPolicy) -> None:
    facts.networks = [(n.name, ", ".join(str(c) for c in n.networks), n.role.value) for n in policy.networks]
    facts.windows = [w.describe() for w in policy.windows]
    facts.terms = [f"{t.name}: {t.start:%d %B %Y} to {t.end:%d %B %Y}" for t in policy.calendar.terms
                   if t.end >= facts.year.start.date() and t.start < facts.year.end.date()]
    facts.rules = [_rule_line(policy, r) for r in policy.rules]
    default = policy.default_rule
    action = VERDICT_WORDS.get(default.action, str(default.action))
    facts.default_rule = f"{action}: {default.reason} ({default.clause})"
    day = _first_school_day(policy, facts.year)
    lesson = datetime.combine(day, time(10, 0), tzinfo=policy.school.zone)
    lunch = datetime.combine(day, time(12, 30), tzinfo=policy.school.zone)
    columns = [("Pupils, in a lesson", Role.PUPIL, lesson), ("Staff, in a lesson", Role.STAFF, lesson),
               ("Staff, at lunch", Role.STAFF, lunch), ("Guests", Role.GUEST, lesson)]
    facts.decision_columns = [c[0] for c in columns]
    for category in policy.categories:
        canary = getattr(category, "canary", None)
        if not canary:
            continue
        cells = []
        for _label, role, at in columns:
            decision = decide(policy, Client(ip="0.0.0.0", role=role), Target(host=canary), at)
            cells.append((VERDICT_WORDS.get(decision.verdict, str(decision.verdict)), decision.rule_id))
        facts.categories.append(CategoryLine(category.id, category.name, category.description, cells))


def _in_year(column: Any, year: Year) -> list[Any]:
    return [column >= year.start, column < year.end]


def record_facts(facts: ReviewFacts, session: Session, site: str) -> None:
    year, names = facts.year, facts.include_names
    changes = session.scalars(
        select(AuditEntry).where(AuditEntry.site == site, *_in_year(AuditEntry.at, year)).order_by(AuditEntry.seq)
    ).all()
    counted: Counter[str] = Counter()
    for entry in changes:
        counted[entry.action] += 1
        if entry.action.startswith(CHANGE_PREFIXES):
            facts.changes.append(ChangeLine(entry.at, entry.actor, entry.action.replace(".", ": ").replace("_", " "),
                                            f"{entry.object_type} {entry.object_id}"))
    facts.change_counts = sorted(counted.items(), key=lambda kv: (-kv[1], kv[0]))

    requests = session.scalars(
        select(AccessRequest).where(AccessRequest.site == site, *_in_year(AccessRequest.created_at, year))
        .order_by(AccessRequest.created_at)
    ).all()
    facts.requests_by_outcome = sorted(Counter(r.status for r in requests).items())
    for r in requests:
        facts.requests.append({
            "reference": f"AR-{r.id:06d}", "date": r.request_date, "site": r.host, "status": r.status,
            "decided_by": r.decided_by_name or "", "decided_at": r.decided_at,
            # The head's reasons may name the pupil who asked: only in a named copy.
            "reasons": r.decision_reasons if names else "", "requester": r.requester if names else "",
        })
    reports = session.scalars(
        select(ContentReport).where(ContentReport.site == site, *_in_year(ContentReport.created_at, year))
        .order_by(ContentReport.created_at)
    ).all()
    facts.reports_by_outcome = sorted(Counter(r.status for r in reports).items())
    for report in reports:
        hosts = sorted({line.split("/")[2] if "://" in line else line for line in report.urls.splitlines() if line})
        facts.reports.append({
            "date": report.report_date, "sites": ", ".join(hosts), "status": report.status,
            "action": report.action_taken, "actioned_by": report.actioned_by_name or "",
            "submitter": report.submitter_name if names else "",
        })

    alerts = session.execute(
        select(Alert.kind, Alert.severity, func.count())
        .where(Alert.site == site, *_in_year(Alert.first_seen, year))
        .group_by(Alert.kind, Alert.severity)
    ).all()
    table: dict[str, dict[str, int]] = defaultdict(dict)
    for kind, severity, count in alerts:
        table[str(kind)][str(severity)] = int(count)
    facts.alerts_by_kind = sorted(((k, v, sum(v.values())) for k, v in table.items()), key=lambda t: -t[2])
    outcomes = session.execute(
        select(Alert.status, Alert.assessment, func.count())
        .where(Alert.site == site, *_in_year(Alert.first_seen, year))
        .group_by(Alert.status, Alert.assessment)
    ).all()
    words = {"true_positive": "a real concern", "false_positive": "not a concern", None: "not assessed"}
    facts.alert_outcomes = sorted(
        (f"{status.replace('_', ' ')}, {words.get(assessment, str(assessment))}", int(count))
        for status, assessment, count in outcomes
    )
    if names:
        for case in session.scalars(select(Alert).where(Alert.site == site, *_in_year(Alert.first_seen, year))
                                    .order_by(Alert.first_seen)):
            facts.alert_cases.append({"first_seen": case.first_seen, "kind": case.kind, "severity": case.severity,
                                      "title": case.title, "status": case.status, "outcome": case.outcome})


def _month_index(year: Year, day: date) -> int:
    return (day.year - year.start.year) * 12 + day.month - 9


def activity_facts(facts: ReviewFacts, session: Session, site: str) -> None:
    year = facts.year
    facts.month_labels = [f"{m:%b}" for m in year.months()]
    by_role: dict[str, list[int]] = {}
    for day, role, count in session.execute(
        select(EventDaily.day, EventDaily.key, EventDaily.count).where(
            EventDaily.site == site, EventDaily.dimension == ROLE, EventDaily.verdict == "block",
            EventDaily.day >= year.start.date(), EventDaily.day < year.end.date())
    ):
        index = _month_index(year, day)
        if 0 <= index < 12:
            by_role.setdefault(str(role), [0] * 12)[index] += int(count or 0)
    facts.blocked_by_month = dict(sorted(by_role.items(), key=lambda kv: -sum(kv[1])))
    total = func.sum(AccessEvent.count)
    category = func.coalesce(AccessEvent.category, "(none)")  # one object: PostgreSQL matches it in GROUP BY
    facts.blocked_by_category = [
        (str(name), int(count or 0))
        for name, count in session.execute(
            select(category, total)
            .where(AccessEvent.site == site, AccessEvent.verdict == "block", *_in_year(AccessEvent.ts, year),
                   not_selftest(AccessEvent.device_id))
            .group_by(category)
            .order_by(total.desc())
            .limit(12)
        )
    ]


def check_facts(facts: ReviewFacts, session: Session, site: str, config: AppConfig) -> None:
    year = facts.year
    rows = checklog.checks_between(session, site, year.start, year.end)
    passed, failed = [0] * 12, [0] * 12
    for row in rows:
        if row.kind == checklog.SELFTEST:
            index = _month_index(year, row.at.astimezone(year.zone).date())
            if 0 <= index < 12:
                (passed if row.result == checklog.PASS else failed)[index] += 1
            if row.result == checklog.FAIL:
                facts.selftest_failures.append(row)
        else:
            facts.manual_checks.append(row)
    facts.selftests_by_month = {"passed": passed, "failed": failed}
    kinds = Counter((r.kind, r.result) for r in rows)
    facts.check_counts = {
        "selftests": kinds[(checklog.SELFTEST, checklog.PASS)] + kinds[(checklog.SELFTEST, checklog.FAIL)],
        "selftests_failed": kinds[(checklog.SELFTEST, checklog.FAIL)],
        "filtering_down": sum(1 for r in facts.selftest_failures if r.filtering_down),
        "manual": kinds[(checklog.MANUAL, checklog.PASS)] + kinds[(checklog.MANUAL, checklog.FAIL)],
        "manual_failed": kinds[(checklog.MANUAL, checklog.FAIL)],
        "fixes": kinds[(checklog.FIX, checklog.PASS)],
        "unfixed": len(checklog.unfixed_failures(session, site, limit=1000)),
    }
    now = min(facts.generated_at, year.end)
    facts.coverage_now = coverage.counts(session, site, now)
    found = session.scalars(
        select(LanDevice).where(LanDevice.site == site, LanDevice.notified_at >= year.start,
                                LanDevice.notified_at < year.end)
    ).all()
    facts.coverage_found = len(found)
    if facts.include_names:
        facts.coverage_devices = [{"ip": d.ip, "mac": d.mac or "", "reason": d.reason, "status": d.status,
                                   "found": d.notified_at} for d in found]
    retention = config.retention
    facts.retention = [
        ("Allowed sites (per device, per minute)", f"{retention.allowed_days} days"),
        ("Blocked and flagged attempts (the DfE record)", f"{retention.blocked_days} days"),
        ("Resolved safeguarding alert cases", f"{retention.alerts_days} days ({retention.alerts_days // 365} years)"),
        ("The filtering check log, the audit log, requests and reports", "kept (not purged)"),
    ]
    inspect = config.proxy.inspect_search_engines
    facts.not_seen = [
        "Devices when they are off the school network: at home, on mobile data (4G/5G), or on a phone's hotspot. "
        "The appliance filters only what passes through it.",
        "Apps and devices that do not use the school network at all, such as pupils' own phones on mobile data.",
        "What is inside encrypted (HTTPS) connections. The appliance sees which site a device asks for (its name) "
        "but not the pages, messages, images or videos inside"
        + (", except search terms typed into search engines on school devices that trust the school's certificate."
           if inspect else "; search terms are not read."),
        "What happens inside sites the policy allows: videos on YouTube (which is held to Restricted Mode), chats "
        "in apps that staff may use, or content shared within an allowed site.",
        "Ways round the filter that are new or unknown: known VPNs, proxies and encrypted-DNS services are blocked "
        "and attempts reported, and the coverage check finds devices that stop using the school's DNS, but a new "
        "service may not be listed yet.",
        "What is on a device's screen or typed on its keyboard: this is network filtering and monitoring, not "
        "software on the devices.",
        f"Anything older than the retention periods below: plain allowed traffic is kept {retention.allowed_days} "
        f"days, so this review counts blocked attempts, not all browsing.",
    ]


def gather(config: AppConfig, session: Session, policy: CompiledPolicy, year: Year, now: datetime,
           *, include_names: bool = False) -> ReviewFacts:
    """Everything the review shows, for one school and one year."""
    facts = ReviewFacts(
        school=config.site.name, site=config.site.id, year=year, generated_at=now, include_names=include_names,
        policy_file=str(config.policy), policy_fingerprint=policy.fingerprint, mode=mode_facts(config.mode),
    )
    policy_facts(facts, policy)
    record_facts(facts, session, config.site.id)
    activity_facts(facts, session, config.site.id)
    check_facts(facts, session, config.site.id, config)
    return facts
