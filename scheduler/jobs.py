"""The scheduler's jobs: plain functions of (config, session_factory, now).

Each job opens its own session (or several, to keep SQLite's write lock short), so tests
call a job directly with an injected instant and a real database, and the APScheduler
wiring in `runner` stays a thin layer of triggers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from schoolgate.config import AppConfig
from schoolgate.services import rollups
from schoolgate.services.actor import SCHEDULER
from schoolgate.services.alert_rules import AlertEngine, AlertSettings, ScanResult
from schoolgate.services.bans import apply_ban_policy
from schoolgate.services.common import advance_mark, audit, bump_overlay
from schoolgate.services.digest import dispatch_immediate, last_digest_at, send_digest
from schoolgate.services.mailer import Mailer, SmtpMailer
from schoolgate.services.policy_exceptions import expire_due
from schoolgate.services.schooldays import is_school_day
from schoolgate.store.models import AccessEvent, Alert, EventDaily, EventHourly, Generation

if TYPE_CHECKING:
    from schoolgate.policy import CompiledPolicy
    from schoolgate.services.keywords import KeywordList
    from schoolgate.services.policy_history import FileFacts

log = logging.getLogger(__name__)

SessionFactory = sessionmaker[Session] | Callable[[], Session]
STATUS_NAME = "scheduler"  # its daemon_status row, written by heartbeat_job
EXPIRY_MARK = "expiry_checked"  # generations row: when the expiry job last looked
PURGE_BATCH = 5000


def school_zone(policy: CompiledPolicy | None) -> tzinfo:
    """The school's time zone: the policy's `[school] timezone`, the one source of it (UTC only
    while no version of the policy has ever loaded, when the scheduler has nothing to go by)."""
    return policy.school.zone if policy is not None else UTC


SCAN_EVENTS_PER_TRANSACTION = 10_000
MAX_SCAN_ROUNDS = 20  # a backlog beyond 200,000 events is worked off over several runs
MAX_PURGE_BATCHES = 2000  # at most ten million rows a night; the rest waits for tomorrow


def default_mailer(config: AppConfig) -> Mailer | None:
    """The configured SMTP mailer, or None when no mail server is configured."""
    return SmtpMailer(config.mail) if config.mail.host else None


# -- alerts ------------------------------------------------------------------------------------


@dataclass
class AlertsOutcome:
    scan: ScanResult
    notified: list[int] = field(default_factory=list)
    mail_error: str | None = None
    bans: list[int] = field(default_factory=list)  # imposed automatically ([bans] in the policy)


def alerts_job(
    config: AppConfig,
    session_factory: SessionFactory,
    now: datetime,
    *,
    engine: AlertEngine | None = None,
    mailer: Mailer | None = None,
    policy: CompiledPolicy | None = None,
) -> AlertsOutcome:
    """Scan new events into cases, then email high-severity cases not yet notified.

    With the `policy`, confirmed circumvention cases are banned at once where its `[bans]`
    section says so, in the scan's own transaction.
    """
    engine = engine or AlertEngine(AlertSettings.from_config(config.alerts, school_zone(policy)))
    site = config.site.id
    scan = ScanResult()
    imposed: list[int] = []
    for _ in range(MAX_SCAN_ROUNDS):
        with session_factory() as session:
            part = engine.scan(session, site, None, now, max_events=SCAN_EVENTS_PER_TRANSACTION)
            if policy is not None and (part.opened or part.folded):
                imposed += apply_ban_policy(session, site=site, now=now, policy=policy.bans,
                                            case_ids=[*part.opened, *part.folded], zone=policy.school.zone)
            session.commit()
        scan.events += part.events
        scan.cursor = part.cursor
        scan.opened += part.opened
        scan.folded += [case for case in part.folded if case not in scan.folded]
        if part.events < SCAN_EVENTS_PER_TRANSACTION:
            break
    outcome = AlertsOutcome(scan=scan, bans=imposed)
    if imposed:
        log.info("banned automatically (seed 001 §9): bans %s", ", ".join(map(str, imposed)))
    if mailer is None:
        return outcome
    with session_factory() as session:
        try:
            outcome.notified = dispatch_immediate(
                session,
                site=site,
                site_name=config.site.name,
                now=now,
                mailer=mailer,
                sender=config.mail.sender,
                base_url=config.console.base_url,
                zone=school_zone(policy),
                severities=config.alerts.immediate_severities,
                extra_recipients=config.mail.digest_recipients,
                commit=session.commit,
                chair=config.mail.chair_of_governors,
            )
        except Exception as err:  # a mail failure must not stop the scans; it is retried
            session.rollback()
            outcome.mail_error = str(err)
            log.warning("immediate alert email failed (will retry): %s", err)
    return outcome


# -- the people a step waits for --------------------------------------------------------------


@dataclass
class NotificationsOutcome:
    sent: int = 0
    mail_error: str | None = None


def notifications_job(
    config: AppConfig,
    session_factory: SessionFactory,
    now: datetime,
    *,
    mailer: Mailer | None,
    policy: CompiledPolicy | None = None,
) -> NotificationsOutcome:
    """E-mail whoever a step now waits for: the technicians a new report, the DSL a request that
    needs her safeguarding notes, the headteacher a request that needs her decision."""
    from schoolgate.services import notifications

    outcome = NotificationsOutcome()
    if mailer is None:
        return outcome
    with session_factory() as session:
        notices = notifications.due(
            session, site=config.site.id, site_name=config.site.name, base_url=config.console.base_url,
            zone=school_zone(policy),
        )
        session.commit()  # nothing written: no lock is held while the mail server answers
        try:
            outcome.sent = notifications.send(
                session, notices, now=now, mailer=mailer, sender=config.mail.sender, commit=session.commit
            )
        except Exception as err:  # retried at the next run; what went out is marked already
            session.rollback()
            outcome.mail_error = str(err)
            log.warning("notification e-mail failed (will retry): %s", err)
    return outcome


# -- rollups -----------------------------------------------------------------------------------


def rollups_job(
    config: AppConfig,
    session_factory: SessionFactory,
    now: datetime,
    *,
    max_batches: int = 20,
    policy: CompiledPolicy | None = None,
) -> int:
    """Count new events into the dashboard's rollups, one short transaction per batch; days are
    the school's (the policy's `[school] timezone`)."""
    zone = school_zone(policy)
    counted = 0
    for _ in range(max_batches):
        with session_factory() as session:
            before = rollups.read_cursor(session, config.site.id)
            result = rollups.update_rollups(session, config.site.id, now, zone=zone)
            session.commit()
        counted += result.events
        if result.cursor == before:
            # Caught up: the dashboard may call its figures current as of now.
            with session_factory() as session:
                rollups.mark_ran(session, config.site.id, now)
                session.commit()
            break
    return counted


# -- digest ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DigestOutcome:
    sent: bool
    reason: str  # why not, or "sent"


def digest_job(
    config: AppConfig,
    session_factory: SessionFactory,
    now: datetime,
    *,
    mailer: Mailer | None,
    policy: CompiledPolicy | None = None,
) -> DigestOutcome:
    """Send the daily digest if today (at the school) is a school day and none went out today."""
    zone = school_zone(policy)
    today = now.astimezone(zone).date()
    if not is_school_day(policy, today):
        return DigestOutcome(False, f"{today} is not a school day")
    if mailer is None:
        return DigestOutcome(False, "no mail server is configured")
    site = config.site.id
    rollups_job(config, session_factory, now, max_batches=1000, policy=policy)  # the top lists read the rollups
    with session_factory() as session:
        previous = last_digest_at(session, site)
        if previous is not None and previous.astimezone(zone).date() == today:
            return DigestOutcome(False, "today's digest has already been sent")
        sent = send_digest(
            session,
            site=site,
            site_name=config.site.name,
            now=now,
            mailer=mailer,
            sender=config.mail.sender,
            base_url=config.console.base_url,
            zone=zone,
            extra_recipients=config.mail.digest_recipients,
            release=session.commit,
        )
        if not sent:
            return DigestOutcome(False, "nobody receives the digest (no DSL with an email address)")
        session.commit()
    return DigestOutcome(True, "sent")


# -- expiry ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpiryOutcome:
    exceptions: list[int]
    bans: list[int]
    generation: int | None  # the new overlay generation, when something expired
    social_sites: list[int] = field(default_factory=list)  # appendix C approvals that expired


def expiry_job(config: AppConfig, session_factory: SessionFactory, now: datetime) -> ExpiryOutcome:
    """Record exceptions and bans that ended since the last run, and bump the overlay once.

    DNS and the proxy already stop applying them at their end (the decision's valid_until);
    the bump makes them reload and drop the rows, and the audit log shows when each ended.
    """
    site = config.site.id
    with session_factory() as session:
        mark = session.get(Generation, (site, EXPIRY_MARK))
        since = mark.changed_at if mark is not None else now - timedelta(days=1)
        if since >= now:
            return ExpiryOutcome([], [], None)
        exception_ids, ban_ids = expire_due(session, site=site, since=since, now=now)
        for exception_id in exception_ids:
            audit(
                session,
                site=site,
                actor=SCHEDULER,
                action="exception.expire",
                object_type="exception",
                object_id=exception_id,
                detail={},
                now=now,
            )
        for ban_id in ban_ids:
            audit(
                session,
                site=site,
                actor=SCHEDULER,
                action="ban.expire",
                object_type="ban",
                object_id=ban_id,
                detail={},
                now=now,
            )
        generation = bump_overlay(session, site=site, now=now) if exception_ids or ban_ids else None
        advance_mark(session, site, EXPIRY_MARK, now)
        session.commit()
    with session_factory() as session:
        # Appendix C approvals past their expiry: the administrators go back to their own roles.
        from schoolgate.services.social_media_sites import expire_due as expire_social_sites

        social_sites = expire_social_sites(session, site=site, now=now)
        session.commit()
    return ExpiryOutcome(exception_ids, ban_ids, generation, social_sites)


# -- retention ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetentionOutcome:
    allowed_deleted: int
    blocked_deleted: int
    alerts_deleted: int


def _purge(session_factory: SessionFactory, condition_factory: Callable[[], list[ColumnElement[bool]]]) -> int:
    """Delete matching events in short batches, one transaction each (writers keep flowing)."""
    deleted = 0
    for _ in range(MAX_PURGE_BATCHES):
        with session_factory() as session:
            ids = select(AccessEvent.id).where(*condition_factory()).limit(PURGE_BATCH).scalar_subquery()
            result = session.execute(
                delete(AccessEvent).where(AccessEvent.id.in_(ids)).execution_options(synchronize_session=False)
            )
            count = int(getattr(result, "rowcount", 0) or 0)
            session.commit()
        deleted += count
        if count < PURGE_BATCH:
            break
    return deleted


def retention_job(
    config: AppConfig, session_factory: SessionFactory, now: datetime, *, policy: CompiledPolicy | None = None
) -> RetentionOutcome:
    """Purge events past their retention (UK GDPR): plain allowed traffic after `allowed_days`,
    blocked or flagged events after `blocked_days`; resolved alert cases after `alerts_days`."""
    site = config.site.id
    retention = config.retention
    allowed_cutoff = now - timedelta(days=retention.allowed_days)
    blocked_cutoff = now - timedelta(days=retention.blocked_days)
    allowed = _purge(
        session_factory,
        lambda: [
            AccessEvent.site == site,
            AccessEvent.ts < allowed_cutoff,
            AccessEvent.verdict != "block",
            AccessEvent.flags == "",
        ],
    )
    blocked = _purge(
        session_factory,
        lambda: [
            AccessEvent.site == site,
            AccessEvent.ts < blocked_cutoff,
            or_(AccessEvent.verdict == "block", AccessEvent.flags != ""),
        ],
    )
    alerts_cutoff = now - timedelta(days=retention.alerts_days)
    with session_factory() as session:
        # The rollups name devices too: they go when the longest-kept events go.
        keep = max(retention.allowed_days, retention.blocked_days)
        session.execute(
            delete(EventHourly).where(EventHourly.site == site, EventHourly.hour < now - timedelta(days=keep))
        )
        oldest_day = (now - timedelta(days=keep)).astimezone(school_zone(policy)).date()
        session.execute(delete(EventDaily).where(EventDaily.site == site, EventDaily.day < oldest_day))
        old_alerts = session.scalars(
            select(Alert).where(Alert.site == site, Alert.status == "resolved", Alert.updated_at < alerts_cutoff)
        ).all()
        for alert in old_alerts:
            session.delete(alert)
        if allowed or blocked or old_alerts:
            audit(
                session,
                site=site,
                actor=SCHEDULER,
                action="retention.purge",
                object_type="events",
                object_id=site,
                detail={
                    "allowed_events": allowed,
                    "blocked_events": blocked,
                    "alert_cases": len(old_alerts),
                    "allowed_before": allowed_cutoff.isoformat(),
                    "blocked_before": blocked_cutoff.isoformat(),
                },
                now=now,
            )
        session.commit()
    return RetentionOutcome(allowed, blocked, len(old_alerts))


# -- the policy's history and upkeep ----------------------------------------------------------------


@dataclass
class PolicyOutcome:
    recorded: int | None = None  # the id of the new history row, when the policy changed
    notified: list[str] = field(default_factory=list)  # the upkeep warnings e-mailed this time
    mail_error: str | None = None


def policy_job(
    config: AppConfig,
    session_factory: SessionFactory,
    now: datetime,
    *,
    policy: CompiledPolicy | None,
    facts: FileFacts | None,
    mailer: Mailer | None,
) -> PolicyOutcome:
    """Record a changed policy in the history (and the audit log), and tell the technicians,
    once each, that the term dates are running out or the written policy's review is due."""
    from schoolgate.policy.upkeep import upkeep_warnings
    from schoolgate.services import policy_history
    from schoolgate.services.mailer import build_message
    from schoolgate.services.mailtemplates import link, render

    outcome = PolicyOutcome()
    if policy is None:
        return outcome
    site = config.site.id
    if facts is not None:
        with session_factory() as session:
            row = policy_history.record_version(session, site=site, policy=policy, facts=facts, now=now)
            session.commit()
            outcome.recorded = row.id if row is not None else None
    warnings = upkeep_warnings(policy, now.astimezone(policy.school.zone).date())
    if not warnings or mailer is None:
        return outcome
    with session_factory() as session:
        pending = [w for w in warnings if not policy_history.notified(session, site, w)]
        recipients = policy_history.technician_recipients(session, site) if pending else []
    for warning in pending if recipients else ():
        mail = render(
            "policy_upkeep",
            f"{config.site.name}: the filtering policy needs attention",
            zone=policy.school.zone,
            warning=warning,
            site_name=config.site.name,
            base_url=config.console.base_url,
            link=link,
        )
        try:
            mailer.send(
                build_message(
                    sender=config.mail.sender, recipients=recipients, subject=mail.subject, text=mail.text,
                    html=mail.html,
                )
            )
        except Exception as err:  # not sent: tried again at the next run
            outcome.mail_error = str(err)
            log.warning("policy upkeep e-mail failed (will retry): %s", err)
            continue
        with session_factory() as session:
            policy_history.record_notice(session, site=site, warning=warning, recipients=recipients, now=now)
            session.commit()
        outcome.notified.append(warning.key)
    return outcome


# -- heartbeat ---------------------------------------------------------------------------------


def heartbeat_job(
    config: AppConfig,
    session_factory: SessionFactory,
    now: datetime,
    *,
    pid: int,
    started_at: datetime,
    stats: dict[str, object],
) -> None:
    from schoolgate.store.events import write_status

    with session_factory() as session:
        write_status(session, config.site.id, STATUS_NAME, pid, started_at, {**stats, "at": now.isoformat()})
        session.commit()


# -- list subscriptions --------------------------------------------------------------------------


@dataclass
class ListsOutcome:
    """One daily list round: what the update did, and which stale lists were reported."""

    results: list[dict[str, object]] = field(default_factory=list)  # per list: list, result, message, version
    error: str | None = None  # the update command itself failed (not one list)
    stale: list[str] = field(default_factory=list)
    notified: list[str] = field(default_factory=list)
    mail_error: str | None = None

    @property
    def installed(self) -> list[dict[str, object]]:
        return [r for r in self.results if r.get("result") == "installed"]


def run_lists_update(config: AppConfig, timeout_s: float) -> list[dict[str, object]]:
    """`schoolgate lists update --json` in a child process: the compile's memory (and numpy)
    is given back when it exits, and the scheduler's own footprint stays small."""
    import json
    import subprocess
    import sys

    command = [sys.executable, "-m", "schoolgate", "lists", "update", "--config", str(config.source), "--json"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(f"the list update took longer than {timeout_s:.0f} s ([lists] update_timeout_s)") from err
    if done.returncode not in (0, 1):
        raise RuntimeError(f"the list update failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    try:
        results = json.loads(done.stdout) if done.stdout.strip().startswith("[") else []
    except ValueError as err:
        raise RuntimeError(f"the list update printed something unexpected: {done.stdout[:200]!r}") from err
    return [dict(r) for r in results if isinstance(r, dict)]


def lists_job(
    config: AppConfig,
    session_factory: SessionFactory,
    now: datetime,
    *,
    mailer: Mailer | None = None,
    update: Callable[[AppConfig, float], list[dict[str, object]]] = run_lists_update,
) -> ListsOutcome:
    """Update the subscriptions, then tell the technicians (once per stale spell) about any
    list that has not been confirmed current for [lists] stale_days days."""
    from schoolgate.lists.status import STALE, read_statuses
    from schoolgate.services import list_changes
    from schoolgate.services.mailer import build_message

    outcome = ListsOutcome()
    try:
        outcome.results = update(config, float(config.lists.update_timeout_s))
    except Exception as err:  # the staleness check below still runs
        outcome.error = str(err)
        log.error("list update failed: %s", err)
    for result in outcome.results:
        log.info("list %s: %s: %s", result.get("list"), result.get("result"), result.get("message"))
    try:
        statuses = read_statuses(config, now)
    except Exception as err:
        outcome.error = outcome.error or f"cannot read the list status: {err}"
        return outcome
    stale = [(s.id, s.verified_at, s) for s in statuses if s.state == STALE]
    outcome.stale = [list_id for list_id, _, _ in stale]
    if not stale:
        return outcome
    with session_factory() as session:
        due = list_changes.stale_to_notify(session, config.site.id, [(i, v) for i, v, _ in stale])
        recipients = list_changes.technician_emails(session, config.site.id)
    if not due or mailer is None or not recipients:
        return outcome
    lines = [s.describe() for list_id, _, s in stale if list_id in due]
    text = (
        f"schoolgate at {config.site.name}: {len(lines)} content list(s) have not been confirmed current for more "
        f"than {config.lists.stale_days} days. Until they are, new harmful sites on them are not blocked.\n\n"
        + "\n".join(f"- {line}" for line in lines)
        + "\n\nCheck the appliance's internet access and run: schoolgate lists update --config "
        f"{config.source}\nThen: schoolgate lists status --config {config.source}\n"
    )
    message = build_message(sender=config.mail.sender, recipients=recipients,
                            subject=f"schoolgate: content lists out of date at {config.site.name}", text=text)
    try:
        mailer.send(message)
    except Exception as err:
        outcome.mail_error = str(err)
        log.warning("list staleness e-mail failed (will retry on the next run): %s", err)
        return outcome
    with session_factory() as session:
        list_changes.mark_notified(session, config.site.id, [(i, v) for i, v, _ in stale if i in due], now)
        session.commit()
    outcome.notified = due
    return outcome


# -- self-test ---------------------------------------------------------------------------------


def selftest_job(
    config: AppConfig,
    session_factory: SessionFactory,
    now: datetime,
    *,
    trigger: str,
    clock: object,
    mailer: Mailer | None,
) -> object:
    """Run the self-test (schoolgate.selftest), record it in the check log, e-mail on failure."""
    from schoolgate.selftest.run import run_selftest

    return run_selftest(config, session_factory, now, trigger=trigger, clock_source=clock, mailer=mailer)


# -- coverage ----------------------------------------------------------------------------------


@dataclass
class CoverageOutcome:
    events: int = 0
    not_filtered: list[str] = field(default_factory=list)  # newly found, by address
    notified: list[str] = field(default_factory=list)
    mail_error: str | None = None


def coverage_job(
    config: AppConfig,
    session_factory: SessionFactory,
    now: datetime,
    *,
    mailer: Mailer | None,
    policy: CompiledPolicy | None,
    max_batches: int = 20,
) -> CoverageOutcome:
    """Fold new events into the coverage table, judge every device, tell the technician once
    about each device newly found not filtered. `policy` is the one the daemons enforce (the
    scheduler's reloader: the last good version), for the roles the page and the e-mail name;
    None only before any version has loaded, when the roles come from the register alone."""
    from schoolgate.selftest.notify import recipients
    from schoolgate.services import coverage
    from schoolgate.services.mailer import build_message
    from schoolgate.services.mailtemplates import link, render

    outcome = CoverageOutcome()
    site = config.site.id
    for _ in range(max_batches):
        with session_factory() as session:
            counted = coverage.scan_events(session, site, now)
            session.commit()
        outcome.events += counted
        if counted < coverage.BATCH:
            break
    with session_factory() as session:
        from schoolgate.store.events import read_status

        proxy = read_status(session, site).get("proxy", {}).get("stats", {})
        coverage.record_ca_trust(session, site, proxy.get("ca_trust") or {})
        due = coverage.classify(session, site, now, coverage.Settings.from_config(config))
        session.commit()
        outcome.not_filtered = [row.ip for row in due]
        keys = {row.key for row in due}
        lines = [line for line in coverage.coverage_lines(session, site, now, policy) if line.key in keys]
        to = recipients(session, site, filtering_down=False) if due and mailer is not None else []
    if not due or mailer is None or not to:
        return outcome
    subject = f"schoolgate: {len(lines)} device(s) at {config.site.name} are not filtered"
    mail = render("coverage", subject, zone=school_zone(policy), lines=lines, school=config.site.name,
                  page=link(config.console.base_url, "/coverage"))
    try:
        mailer.send(build_message(sender=config.mail.sender, recipients=to, subject=mail.subject, text=mail.text,
                                  html=mail.html))
    except Exception as err:  # told next time: the rows stay un-notified
        outcome.mail_error = str(err)
        log.warning("coverage e-mail not sent (will retry): %s", err)
        return outcome
    with session_factory() as session:
        coverage.mark_notified(session, [row.id for row in due], now)
        session.commit()
    outcome.notified = to
    return outcome


# -- SIEM export -------------------------------------------------------------------------------


@dataclass
class ExportOutcome:
    events: int = 0
    audit: int = 0
    error: str | None = None


def _safeguarding_terms(config: AppConfig) -> KeywordList | None:
    """The safeguarding term list the alerts use; None if it cannot be read (every search is then
    withheld from the SIEM, the safe side)."""
    from schoolgate.services.keywords import KeywordList

    try:
        return KeywordList.load(config.alerts.keywords_file or None)
    except Exception as err:
        log.error("safeguarding term list unreadable (%s): searches are withheld from the SIEM", err)
        return None


def export_job(config: AppConfig, session_factory: SessionFactory, now: datetime, *, max_rounds: int = 20
               ) -> ExportOutcome:
    """Push new events and audit entries to the SIEM's syslog receiver, oldest first. The
    cursor moves only after a batch was handed over, so nothing is skipped (a receiver may see
    a record twice after a failure; `uid` tells)."""
    import socket as socket_module

    from schoolgate.services import export

    outcome = ExportOutcome()
    settings = config.export
    if not settings.syslog:
        return outcome
    target = export.SyslogTarget.parse(settings.syslog, settings.protocol, config.network.appliance_ipv4)
    hostname = socket_module.gethostname()
    keywords = _safeguarding_terms(config)
    kinds = [("event", settings.events == "all")] + ([("audit", True)] if settings.audit else [])
    for kind, everything in kinds:
        for _ in range(max_rounds):
            with session_factory() as session:
                records, _cursor, upto = export.export_round(session, config.site.id, kind=kind, everything=everything,
                                                             keywords=keywords)
            if not records:
                break
            try:
                export.send_syslog(target, [export.syslog_message(r, hostname=hostname, now=now) for r in records])
            except OSError as err:
                outcome.error = f"{settings.syslog}: {err}"
                log.warning("SIEM export failed (will retry): %s", outcome.error)
                return outcome
            with session_factory() as session:
                export.advance(session, config.site.id, kind, upto, now)
                session.commit()
            if kind == "event":
                outcome.events += len(records)
            else:
                outcome.audit += len(records)
            if len(records) < export.MAX_PAGE:
                break
    return outcome
