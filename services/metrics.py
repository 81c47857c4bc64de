"""Prometheus metrics for technicians who run Grafana: the text exposition format, from the database.

Every daemon already writes its counters to its `daemon_status` row each second (DNS queries,
the proxy's connections, the event writer's ledger of what it wrote and lost); the scheduler
keeps the rollups, the alert cases, the check log and the coverage table. A scrape reads those
few rows, so it costs the appliance a handful of small queries, never a scan of the events.

Counters are the daemons' own (they start again from zero when a daemon restarts, which
Prometheus's `rate()` handles); everything counted from tables is a gauge.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from schoolgate.store.models import Alert, EventHourly

HEARTBEAT_STALE = timedelta(minutes=3)
# The event writer's ledger: what every daemon wrote, and every way it lost events.
WRITER_COUNTS = ("submitted", "written", "folded", "spooled", "shipped", "duplicates")
LOSS_REASONS = ("overflow", "late", "failed", "spool_full")


@dataclass
class Family:
    name: str
    kind: str  # counter or gauge
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> None:
        self.samples.append((labels, float(value)))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def exposition(families: Iterable[Family]) -> str:
    """The Prometheus text format (version 0.0.4)."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {family.help.replace(chr(92), chr(92) * 2).replace(chr(10), ' ')}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for labels, value in family.samples:
            label_text = ",".join(f'{key}="{_escape(str(val))}"' for key, val in sorted(labels.items()))
            lines.append(f"{family.name}{{{label_text}}} {_number(value)}" if label_text
                         else f"{family.name} {_number(value)}")
    return "\n".join(lines) + "\n"


def _int(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _daemons(status: Mapping[str, Mapping[str, Any]], wall_now: datetime) -> list[Family]:
    from schoolgate.store.events.status import failing

    up = Family("schoolgate_daemon_up", "gauge",
                "1 if the daemon's heartbeat is fresh (under three minutes) and it does not report itself failing")
    age = Family("schoolgate_daemon_heartbeat_age_seconds", "gauge", "Seconds since the daemon's last heartbeat")
    queries = Family("schoolgate_dns_queries_total", "counter", "DNS questions answered, by DNS worker")
    dns_dropped = Family("schoolgate_dns_dropped_total", "counter", "DNS questions dropped unanswered, by DNS worker")
    stale = Family("schoolgate_dns_stale_answers_total", "counter", "Answers served stale while the upstream failed")
    cache = Family("schoolgate_dns_cache_hits_total", "counter", "DNS answers from the cache")
    proxy = Family("schoolgate_proxy_connections_total", "counter", "Connections the proxy judged, by outcome")
    submitted = Family("schoolgate_events_total", "counter", "Events a daemon's writer handled, by stage")
    lost = Family("schoolgate_events_lost_total", "counter", "Events a daemon lost, by reason (never silent)")
    pending = Family("schoolgate_events_spool_pending", "gauge", "Events waiting in the local spool")
    attempts = Family("schoolgate_gateway_circumvention_attempts_total", "counter",
                      "Circumvention attempts the gateway refused or redirected (before de-duplication)")
    for name, row in sorted(status.items()):
        seconds = max(0.0, (wall_now - row["heartbeat_at"]).total_seconds())
        age.add(seconds, daemon=name)
        stats = row.get("stats") or {}
        working = seconds <= HEARTBEAT_STALE.total_seconds() and failing(stats) is None
        up.add(1.0 if working else 0.0, daemon=name)
        dns = stats.get("dns") or {}
        if dns:
            queries.add(_int(dns.get("queries")), daemon=name)
            dns_dropped.add(_int(dns.get("dropped")), daemon=name)
            stale.add(_int(dns.get("stale_served")), daemon=name)
            cache.add(_int(dns.get("cache_hits")), daemon=name)
        for outcome, count in sorted((stats.get("counters") or {}).items()):
            if name == "proxy" and outcome in ("connections_seen", "passed_through", "killed", "intercepted",
                                               "block_pages_served", "upstream_refused", "fronting_blocked"):
                proxy.add(_int(count), outcome=outcome)
        ledger = stats.get("events") or {}
        for stage in WRITER_COUNTS:
            if stage in ledger:
                submitted.add(_int(ledger[stage]), daemon=name, stage=stage)
        for reason in LOSS_REASONS:
            if reason in ledger:
                lost.add(_int(ledger[reason]), daemon=name, reason=reason)
        if "spool_pending" in ledger:
            pending.add(_int(ledger["spool_pending"]), daemon=name)
        if name == "gateway" and "attempts" in stats:
            attempts.add(_int(stats["attempts"]))
    return [up, age, queries, dns_dropped, stale, cache, proxy, submitted, lost, pending, attempts]


def _lists(statuses: Sequence[Any]) -> list[Family]:
    """Each list's state and age, as `schoolgate lists status` reports them (schoolgate.lists.status)."""
    from schoolgate.lists.status import FAILING, MISSING, OK, STALE

    state = Family("schoolgate_list_state", "gauge",
                   "1 for the state each of the policy's lists is in (ok, stale, missing, failing), else 0")
    age = Family("schoolgate_list_age_seconds", "gauge",
                 "Seconds since each subscribed list was last confirmed to be its source's current version")
    for item in statuses:
        for name in (OK, STALE, MISSING, FAILING):
            state.add(1.0 if item.state == name else 0.0, list=item.id, state=name)
        if item.age_days is not None:
            age.add(round(item.age_days * 86400.0, 1), list=item.id)
    return [state, age]


def collect(session: Session, site: str, now: datetime, wall_now: datetime, policy: Any = None, *,
            list_statuses: Sequence[Any] = ()) -> list[Family]:
    """Every metric for one school. `now` is the appliance's clock (the events'), `wall_now` the
    machine's (the heartbeats'); `list_statuses`: schoolgate.lists.status.read_statuses's."""
    from schoolgate.services import checklog, coverage, rollups
    from schoolgate.store.events import read_status

    families = _daemons(read_status(session, site), wall_now)

    zone = policy.school.zone if policy is not None else UTC  # the policy's [school] timezone, the one source
    today = datetime.combine(now.astimezone(zone).date(), datetime.min.time(), tzinfo=zone)
    events = Family("schoolgate_events_today", "gauge",
                    "Today's access events (the school's day) by verdict and role, from the rollups")
    for verdict, role, total in session.execute(
        select(EventHourly.verdict, EventHourly.role, func.sum(EventHourly.count))
        .where(EventHourly.site == site, EventHourly.hour >= today.astimezone(now.tzinfo))
        .group_by(EventHourly.verdict, EventHourly.role)
    ):
        events.add(_int(total), verdict=str(verdict), role=str(role))
    fresh = rollups.freshness(session, site, now, wall_now)
    as_of = Family("schoolgate_rollups_as_of_timestamp_seconds", "gauge",
                   "When the scheduler last brought the counts up to date (0: never)")
    as_of.add(fresh.as_of.timestamp() if fresh.as_of else 0.0)

    alerts = Family("schoolgate_alert_cases", "gauge", "The DSL's alert cases by kind, severity and status")
    for kind, severity, status, count in session.execute(
        select(Alert.kind, Alert.severity, Alert.status, func.count())
        .where(Alert.site == site)
        .group_by(Alert.kind, Alert.severity, Alert.status)
    ):
        alerts.add(float(count), kind=str(kind), severity=str(severity), status=str(status))

    lists = Family("schoolgate_list_entries", "gauge", "Names in each of the policy's lists")
    for item in getattr(policy, "lists", ()) or ():
        lists.add(float(item.count), list=item.id)

    selftest = checklog.last_selftest(session, site)
    last_run = Family("schoolgate_selftest_last_run_timestamp_seconds", "gauge", "When the last self-test ran")
    passed = Family("schoolgate_selftest_passed", "gauge", "1 if the last self-test passed")
    failures = Family("schoolgate_selftest_failed_checks", "gauge", "Checks the last self-test failed")
    down = Family("schoolgate_selftest_filtering_down", "gauge", "1 if the last self-test found filtering not working")
    if selftest is not None:
        last_run.add(selftest.at.timestamp())
        passed.add(1.0 if selftest.result == checklog.PASS else 0.0)
        failures.add(float(selftest.failures))
        down.add(1.0 if selftest.filtering_down else 0.0)

    devices = Family("schoolgate_coverage_devices", "gauge", "Devices seen on the LAN in 30 days, by coverage status")
    for status, count in coverage.counts(session, site, now).items():
        devices.add(float(count), status=status)
    return [*families, events, as_of, alerts, lists, *_lists(list_statuses), last_run, passed, failures, down, devices]
