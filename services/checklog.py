"""The filtering check log: every self-test, every manual check and every fix, one row each.

The DfE filtering and monitoring standards ask a school to check its filtering regularly and to
keep a record of when the check was made, who made it, what was tested, the result and the
action taken. The appliance's own self-tests go in automatically; a technician records a
manual check (a class iPad in Year 5, "tried the Am I filtered? page", pass) from a phone; a
fix after a failed check is a row of its own that points at the check it answers, so the log
shows that every failure was followed up.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from schoolgate.services.actor import Actor
from schoolgate.services.common import Page, SiteScope, audit, clean_text, in_scope, on_site
from schoolgate.services.errors import InvalidInput, InvalidTransition, NotFound
from schoolgate.services.permissions import Permission
from schoolgate.store.models import CheckRecord

SELFTEST = "selftest"
MANUAL = "manual"
FIX = "fix"
KINDS = (SELFTEST, MANUAL, FIX)
PASS = "pass"  # noqa: S105 (a result, not a password)
FAIL = "fail"
RESULTS = (PASS, FAIL)
#: The self-test's identity in the log and the audit log.
SELFTEST_ACTOR = Actor(name="system:selftest", display_name="schoolgate self-test")
MAX_DETAIL = 200_000  # characters of a self-test's JSON detail
# A manual check may be recorded late (made on Friday, typed in on Monday), not for the future.
MAX_BACKDATE = timedelta(days=31)
MAX_AHEAD = timedelta(minutes=5)

# What a technician most often tries, for the phone form's first choice; free text is allowed.
COMMON_TESTS = (
    "Opened the 'Am I filtered?' page: every category test",
    "Tried a blocked social media site",
    "Searched for a harmful term (safe search on?)",
    "Tried an adult content site",
    "Tried a VPN or proxy app or site",
    "Checked a device off the school Wi-Fi (4G hotspot)",
)
DEVICE_TYPES = ("Class iPad", "Pupil Chromebook", "Pupil laptop", "Staff laptop", "Desktop PC", "Guest phone")


@dataclass(frozen=True, slots=True)
class ManualCheckForm:
    """One check a person made by hand: the DfE record's when, what, result and action."""

    device_type: str
    location: str
    profile: str  # the role or network the device was filtered as, e.g. "pupil"
    tried: str
    result: str  # pass or fail
    action: str = ""  # what was done about it; required when the check failed
    at: datetime | None = None  # when the check was made; default: now


@dataclass(frozen=True, slots=True)
class SelftestOutcome:
    """A self-test run, as the log keeps it (see schoolgate.selftest)."""

    at: datetime
    trigger: str
    passed: bool
    failures: int
    filtering_down: bool
    duration_ms: int
    tried: str  # one line: what the run covered
    action: str  # one line: what must be done, when it failed
    profiles: str  # the roles tested
    detail: dict[str, Any]


def record_manual_check(
    session: Session, *, site: str, actor: Actor, form: ManualCheckForm, now: datetime
) -> CheckRecord:
    """Add a manual check to the log; the caller commits."""
    actor.require(Permission.RECORD_CHECK, doing="record a filtering check")
    device_type = clean_text(form.device_type, field="device_type", max_len=100, required=True)
    location = clean_text(form.location, field="location", max_len=200, required=True)
    profile = clean_text(form.profile, field="profile", max_len=200, required=True)
    tried = clean_text(form.tried, field="tried", max_len=4000, required=True)
    result = form.result.strip().lower()
    if result not in RESULTS:
        raise InvalidInput("Please say whether the check passed or failed.", field="result")
    action = clean_text(form.action, field="action", max_len=4000)
    if result == FAIL and not action:
        raise InvalidInput("A failed check needs the action taken (or who it was passed to).", field="action")
    at = form.at or now
    if at.tzinfo is None:
        raise InvalidInput("The time of the check must include a time zone.", field="at")
    if at > now + MAX_AHEAD:
        raise InvalidInput("The check cannot be in the future.", field="at")
    if at < now - MAX_BACKDATE:
        raise InvalidInput(f"Record a check within {MAX_BACKDATE.days} days of making it.", field="at")
    row = CheckRecord(
        site=site,
        kind=MANUAL,
        at=at,
        actor=actor.name,
        actor_name=actor.display_name,
        trigger="console",
        device_type=device_type,
        location=location,
        profile=profile,
        tried=tried,
        result=result,
        action=action,
        failures=1 if result == FAIL else 0,
        detail="{}",
        created_at=now,
    )
    session.add(row)
    session.flush()
    audit(
        session,
        site=site,
        actor=actor,
        action="check.record",
        object_type="check",
        object_id=row.id,
        detail={"device_type": device_type, "location": location, "profile": profile, "result": result},
        now=now,
    )
    return row


def record_fix(session: Session, *, site: str, actor: Actor, check_id: int, action: str, now: datetime) -> CheckRecord:
    """Record what was done about a failed check; the caller commits."""
    actor.require(Permission.RECORD_CHECK, doing="record a fix")
    failed = get_check(session, site, check_id)
    if failed.kind == FIX or failed.result != FAIL:
        raise InvalidTransition("Only a failed check can be followed by a fix.")
    text = clean_text(action, field="action", max_len=4000, required=True)
    row = CheckRecord(
        site=site,
        kind=FIX,
        at=now,
        actor=actor.name,
        actor_name=actor.display_name,
        trigger="console",
        device_type=failed.device_type,
        location=failed.location,
        profile=failed.profile,
        tried=f"Fix for check {failed.id}",
        result=PASS,
        action=text,
        failures=0,
        detail="{}",
        fixes_id=failed.id,
        created_at=now,
    )
    session.add(row)
    session.flush()
    audit(
        session,
        site=site,
        actor=actor,
        action="check.fix",
        object_type="check",
        object_id=row.id,
        detail={"fixes": failed.id, "action": text[:500]},
        now=now,
    )
    return row


def record_selftest(session: Session, *, site: str, outcome: SelftestOutcome) -> CheckRecord:
    """Add a self-test run to the log; the caller commits."""
    detail = json.dumps(outcome.detail, sort_keys=True, default=str)
    if len(detail) > MAX_DETAIL:
        detail = json.dumps({"truncated": True, "summary": outcome.detail.get("summary", {})})
    row = CheckRecord(
        site=site,
        kind=SELFTEST,
        at=outcome.at,
        actor=SELFTEST_ACTOR.name,
        actor_name=SELFTEST_ACTOR.display_name,
        trigger=outcome.trigger[:40],
        device_type="schoolgate appliance",
        location="the appliance (a source address in each role's network)",
        profile=outcome.profiles[:200],
        tried=outcome.tried,
        result=PASS if outcome.passed else FAIL,
        action=outcome.action,
        failures=outcome.failures,
        filtering_down=outcome.filtering_down,
        duration_ms=outcome.duration_ms,
        detail=detail,
        created_at=outcome.at,
    )
    session.add(row)
    session.flush()
    return row


def mark_notified(session: Session, check_id: int, recipients: Sequence[str]) -> None:
    row = session.get(CheckRecord, check_id)
    if row is not None:
        row.notified = ", ".join(recipients)[:200]
        session.flush()


def get_check(session: Session, site: SiteScope, check_id: int) -> CheckRecord:
    row = session.get(CheckRecord, check_id)
    if row is None or not in_scope(row.site, site):
        raise NotFound(f"There is no check {check_id}.")
    return row


def list_checks(
    session: Session, site: SiteScope, *, kind: str | None = None, result: str | None = None,
    limit: int = 50, offset: int = 0,
) -> Page[CheckRecord]:
    """The log newest first, optionally one kind or one result."""
    conditions: list[Any] = [on_site(CheckRecord.site, site)]
    if kind is not None:
        conditions.append(CheckRecord.kind == kind)
    if result is not None:
        conditions.append(CheckRecord.result == result)
    total = session.scalar(select(func.count()).select_from(CheckRecord).where(*conditions)) or 0
    rows = session.scalars(
        select(CheckRecord).where(*conditions).order_by(CheckRecord.at.desc(), CheckRecord.id.desc())
        .limit(limit).offset(offset)
    ).all()
    return Page(items=rows, total=total, limit=limit, offset=offset)


def checks_between(session: Session, site: SiteScope, start: datetime, end: datetime) -> list[CheckRecord]:
    """Every row made in [start, end), oldest first (the review pack's check log)."""
    return list(
        session.scalars(
            select(CheckRecord)
            .where(on_site(CheckRecord.site, site), CheckRecord.at >= start, CheckRecord.at < end)
            .order_by(CheckRecord.at, CheckRecord.id)
        )
    )


def last_selftest(session: Session, site: str) -> CheckRecord | None:
    return session.scalars(
        select(CheckRecord)
        .where(CheckRecord.site == site, CheckRecord.kind == SELFTEST)
        .order_by(CheckRecord.at.desc(), CheckRecord.id.desc())
        .limit(1)
    ).first()


def unfixed_failures(session: Session, site: SiteScope, *, limit: int = 20) -> list[CheckRecord]:
    """Failed manual checks that no fix answers yet, newest first.

    Self-tests are not listed: the next self-test that passes answers a failed one.
    """
    fix = aliased(CheckRecord)
    answered = select(fix.id).where(fix.fixes_id == CheckRecord.id).exists()
    return list(
        session.scalars(
            select(CheckRecord)
            .where(on_site(CheckRecord.site, site), CheckRecord.kind == MANUAL, CheckRecord.result == FAIL, ~answered)
            .order_by(CheckRecord.at.desc())
            .limit(limit)
        )
    )


def recent_choices(session: Session, site: str, *, limit: int = 12) -> dict[str, list[str]]:
    """Device types and locations used before, most recent first: the phone form offers them,
    so a technician walking the school types each place once."""
    choices: dict[str, list[str]] = {}
    for name, column in (("device_type", CheckRecord.device_type), ("location", CheckRecord.location)):
        latest = func.max(CheckRecord.at)
        rows = session.execute(
            select(column, latest)
            .where(CheckRecord.site == site, CheckRecord.kind == MANUAL, column != "")
            .group_by(column)
            .order_by(latest.desc())
            .limit(limit)
        ).all()
        choices[name] = [str(value) for value, _ in rows]
    return choices


def detail_of(row: CheckRecord) -> dict[str, Any]:
    """A self-test row's individual results ({} for other rows or unreadable text)."""
    try:
        value = json.loads(row.detail or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
