"""One self-test run: plan, check, record in the check log, e-mail when it failed.

`run_selftest` is called by `schoolgate selftest` and by the scheduler (every school morning
before the day starts, after every policy or list change, and when someone asks in the
console). Sessions open at the edges: the policy overlay and the register are read in one short
read, the checks run with no transaction open, the log row is written in another, and the mail
goes out after that commit.

Every read is a pure read (on SQLite a DEFERRED transaction), and a write that fails (the
database locked by a hung writer, a full disk) becomes one more failure in the report: the run
that would tell the school its appliance is unwell must not be stopped by the unwell part.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.config import AppConfig
from schoolgate.doctor import Status
from schoolgate.policy import Client, CompiledPolicy
from schoolgate.selftest import health
from schoolgate.selftest.checks import Checker, CheckResult, Runner, Target, summarise
from schoolgate.selftest.plan import Expectation, Settings, plan
from schoolgate.selftest.vantage import Vantage, VantageError, gateway_vantages, probe_addresses

log = logging.getLogger(__name__)
SessionFactory = sessionmaker[Session] | Callable[[], Session]
REGISTER_POLL_S = 0.2  # how often the daemons' status rows are read while waiting for them
DATABASE_FIX = "see `schoolgate doctor`: another process may hold the database, or its disk may be full"


def reading(sessions: SessionFactory) -> SessionFactory:
    """Sessions for the self-test's pure reads (schoolgate.store.db.reading_factory)."""
    from schoolgate.store.db import reading_factory

    return reading_factory(sessions) if isinstance(sessions, sessionmaker) else sessions


@dataclass
class SelftestReport:
    at: datetime
    trigger: str
    results: list[CheckResult]
    vantages: list[str]
    duration_ms: int
    check_id: int | None = None
    notified: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.failed]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def filtering_down(self) -> bool:
        return any(r.filtering for r in self.failures)

    def tried(self) -> str:
        kinds: dict[str, int] = {}
        for result in self.results:
            kinds[result.check] = kinds.get(result.check, 0) + 1
        parts = ", ".join(f"{check} {count}" for check, count in sorted(kinds.items()))
        return f"{len(self.results)} checks from {len(self.vantages)} network(s): {parts}"

    def action(self) -> str:
        if self.passed:
            return ""
        fixes = list(dict.fromkeys(r.fix for r in self.failures if r.fix))
        return "; ".join(fixes[:4])[:2000] or "see the failed checks"

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(timespec="seconds"),
            "trigger": self.trigger,
            "passed": self.passed,
            "filtering_down": self.filtering_down,
            "duration_ms": self.duration_ms,
            "vantages": self.vantages,
            "summary": summarise(self.results),
            "results": [r.as_dict() for r in self.results],
            "check_id": self.check_id,
            "notified": self.notified,
        }


def school_ca_issuer(config: AppConfig) -> str:
    """The school CA's subject: a certificate issued by it is the proxy's block page."""
    from schoolgate.ca import load_ca_cert

    ca_dir = Path(config.proxy.ca_dir) if config.proxy.ca_dir else config.data_dir / "ca"
    try:
        return load_ca_cert(ca_dir).subject.rfc4514_string()
    except Exception:  # no CA yet: nothing can be decrypted, so no certificate is the school's
        return ""


class _At:
    """A clock stopped at the run's instant: the overlay is read as of then."""

    def __init__(self, now: datetime) -> None:
        self.instant = now

    def now(self) -> datetime:
        return self.instant


def _load(config: AppConfig, sessions: SessionFactory, now: datetime) -> tuple[CompiledPolicy, Any]:
    """The policy as the daemons have it (the file, the installed list versions, the database's
    overlay: the appliance's one reloader) and the device register."""
    from schoolgate.identity.register import load_register
    from schoolgate.live import load_current

    reads = reading(sessions)
    policy = load_current(config, sessions=reads, clock=_At(now)).compiled
    with reads() as session:
        register = load_register(session, config.site.id)
    return policy, register


def _school_zone(config: AppConfig, sessions: SessionFactory, now: datetime) -> tzinfo:
    """The policy's [school] timezone (the one source of it); UTC when the policy does not load,
    which is then one of the failures the e-mail reports."""
    try:
        return _load(config, sessions, now)[0].school.zone
    except Exception:
        return UTC


def _register_probes(config: AppConfig, sessions: SessionFactory, policy: CompiledPolicy, now: datetime) -> bool:
    from schoolgate.services.selftest_devices import register_probes
    from schoolgate.store.overlay import read_generation

    reserved = (config.network.appliance_ipv4, policy.school.block_ipv4)
    probes = [(p.network, p.address) for p in probe_addresses(policy, config.selftest, reserved=reserved)]
    with sessions() as session:
        changed = register_probes(session, config.site.id, probes, now)
        session.commit()
        generation = read_generation(session, config.site.id)
    if changed:
        _wait_for_register(config, sessions, generation)
    return changed


def _wait_for_register(config: AppConfig, sessions: SessionFactory, generation: int) -> None:
    """Until DNS and the proxy say (in their status rows) that they use the register holding the
    probes, so that the probes' events name the self-test and never a pupil's device. A daemon
    that has not done so within its heartbeat allowance is not healthy, which the heartbeat
    check reports; the run goes on."""
    deadline = time.monotonic() + config.selftest.heartbeat_max_age_s
    reads = reading(sessions)
    while True:
        with reads() as session:
            behind = health.behind_register(session, config, generation)
        if not behind:
            return
        if time.monotonic() >= deadline:
            log.warning("self-test: %s still use an older device register", ", ".join(behind))
            return
        time.sleep(REGISTER_POLL_S)


def run_checks(
    config: AppConfig,
    sessions: SessionFactory,
    now: datetime,
    *,
    clock_source: object,
    vantages: Sequence[Vantage] | None = None,
    appliance_runner: Runner | None = None,
    dns_server: tuple[str, int] | None = None,
) -> tuple[list[CheckResult], list[str]]:
    """Every check, no recording: (results, the vantages' names)."""
    from schoolgate.identity.resolver import IdentityResolver
    from schoolgate.tomlpos import ConfigError

    runner: Runner = appliance_runner or (lambda probe: probe())
    results: list[CheckResult] = []
    try:
        policy, register = _load(config, sessions, now)
    except (ConfigError, OSError) as err:
        results.append(CheckResult("policy", "policy file", "", Status.FAIL, f"the policy does not load: {err}",
                                   f"schoolgate policy check {config.policy}"))
        return results, []
    try:
        if vantages is None:
            vantages = gateway_vantages(policy, config)
        # The appliance's own probe addresses are registered, so that their events name them.
        if any(v.source for v in vantages) and _register_probes(config, sessions, policy, now):
            policy, register = _load(config, sessions, now)
    except VantageError as err:
        results.append(CheckResult("setup", "probe addresses", "", Status.FAIL, str(err),
                                   "fix [selftest] probe_addresses in schoolgate.toml"))
        vantages = []
    except OperationalError as err:  # the probes' register entries could not be written
        results.append(CheckResult("setup", "probe addresses", "", Status.FAIL,
                                   f"the probes could not be registered: {_database_error(err)}", DATABASE_FIX))
        vantages = list(vantages or [])  # they still probe; their events name no device
    identities = IdentityResolver(register)

    def client_for(vantage: Vantage) -> Client:
        return identities.resolve(vantage.client_ip)

    settings = Settings(
        appliance_ipv4=config.network.appliance_ipv4,
        appliance_names=tuple(config.dns.names),
        allowed_sites=tuple(config.selftest.allowed_sites),
        watched_prefixes=tuple(config.network.watched_prefixes),
    )
    expectations: list[Expectation] = plan(policy, vantages, client_for, settings, now)
    host, port = dns_server or (config.network.appliance_ipv4, 53)
    target = Target(
        dns_server=host,
        dns_port=port,
        timeout_s=config.selftest.timeout_ms / 1000,
        school_ca_issuer=school_ca_issuer(config),
        upstreams=tuple(config.dns.upstreams),
        watched_prefixes=tuple(config.network.watched_prefixes),
        appliance_runner=appliance_runner,
    )
    results.extend(Checker(target).run(expectations))
    results.extend(health.upstream(config, runner))
    results.extend(health.illegal_content(config, runner))
    results.extend(health.console(config, runner))
    results.extend(health.clock(config, clock_source))
    results.extend(health.lists(config, now))
    with reading(sessions)() as session:
        results.extend(health.heartbeats(session, config, datetime.now(UTC)))
    return results, [v.name for v in vantages]


def run_selftest(
    config: AppConfig,
    sessions: SessionFactory,
    now: datetime,
    *,
    trigger: str,
    clock_source: object,
    mailer: Any = None,
    record: bool = True,
    vantages: Sequence[Vantage] | None = None,
    appliance_runner: Runner | None = None,
    dns_server: tuple[str, int] | None = None,
) -> SelftestReport:
    """Run every check; record the run in the check log; e-mail the right people if it failed."""
    from schoolgate.selftest import notify
    from schoolgate.services import checklog

    started = time.monotonic()
    results, names = run_checks(config, sessions, now, clock_source=clock_source, vantages=vantages,
                                appliance_runner=appliance_runner, dns_server=dns_server)
    report = SelftestReport(now, trigger, results, names, int((time.monotonic() - started) * 1000))
    log.info("self-test (%s): %s in %d ms, %d failed", trigger, "passed" if report.passed else "FAILED",
             report.duration_ms, len(report.failures))
    if not record:
        return report
    reads = reading(sessions)
    with reads() as session:
        previous = checklog.last_selftest(session, config.site.id)
    try:
        report.check_id = _record(sessions, config, report, trigger, names)
    except OperationalError as err:
        log.error("self-test: the check log could not be written: %s", err)
        report.results.append(CheckResult("log", "check log", "", Status.FAIL,
                                          f"this run could not be recorded: {_database_error(err)}", DATABASE_FIX))
    repeat = notify.same_failures_as(previous, report)
    if report.passed or mailer is None or repeat:
        return report
    with reads() as session:
        recipients = notify.recipients(session, config.site.id, filtering_down=report.filtering_down)
    if not recipients:
        return report
    try:
        notify.send(mailer, config, report, recipients, zone=_school_zone(config, sessions, now))
    except Exception as err:  # the log row stands; the next run tries again
        log.warning("self-test failure e-mail not sent: %s", err)
        return report
    report.notified = recipients
    if report.check_id is not None:
        try:
            with sessions() as session:
                checklog.mark_notified(session, report.check_id, recipients)
                session.commit()
        except OperationalError as err:  # the mail went; only its note in the log is missing
            log.warning("self-test: the check log does not show the e-mail sent: %s", err)
    return report


def _record(sessions: SessionFactory, config: AppConfig, report: SelftestReport, trigger: str,
            names: list[str]) -> int:
    """The run's row in the check log; its id."""
    from schoolgate.services import checklog

    with sessions() as session:
        row = checklog.record_selftest(session, site=config.site.id, outcome=checklog.SelftestOutcome(
            at=report.at, trigger=trigger, passed=report.passed, failures=len(report.failures),
            filtering_down=report.filtering_down, duration_ms=report.duration_ms, tried=report.tried(),
            action=report.action(), profiles=", ".join(names), detail=report.as_dict(),
        ))
        session.commit()
        return int(row.id)


def _database_error(err: OperationalError) -> str:
    """SQLite's or PostgreSQL's own words ("database is locked"), without the statement."""
    return str(err.orig).strip() or type(err.orig).__name__
