"""The appliance's health, as the self-test reports it: upstream DNS, daemons, lists, clock.

The probes that `schoolgate doctor` already has are reused (one implementation of each
check); this module decides what a failure means for the school and words it for the log.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from schoolgate.config import AppConfig
from schoolgate.doctor import Env, Status, check_clock, check_console, check_illegal_content, check_upstreams
from schoolgate.selftest.checks import CheckResult, Runner

# The daemons that must beat (their daemon_status rows; "dns.1", "dns.2"... with several workers).
DAEMONS = {
    "dns": "schoolgate-dns: answers every DNS question on the school network",
    "proxy": "schoolgate-proxy: judges connections to watched services, shows the block page",
    "gateway": "schoolgate-netwatch: records circumvention attempts the firewall refuses",
    "scheduler": "schoolgate-scheduler: alerts, the digest, expiry, these self-tests",
}
UNITS = {"dns": "schoolgate-dns", "proxy": "schoolgate-proxy", "gateway": "schoolgate-netwatch",
         "scheduler": "schoolgate-scheduler"}


def _from_doctor(results: list[Any], check: str, subject: str) -> list[CheckResult]:
    return [CheckResult(check, subject, "", r.status, r.message, r.fix) for r in results]


def upstream(config: AppConfig, runner: Runner) -> list[CheckResult]:
    """The upstream resolvers answer (one that works keeps the school online: the rest warn)."""
    env = Env(config=config, timeout_s=config.selftest.timeout_ms / 1000)
    results = runner(lambda: check_upstreams(env))
    return _from_doctor(results, "upstream", "upstream DNS")


def illegal_content(config: AppConfig, runner: Runner) -> list[CheckResult]:
    """The resolver carrying the IWF and CTIRU lists answers (every DNS question goes through it).
    Not configured is a warning: the school then relies on its ISP's own filtering. One that does
    not answer fails closed (names stop resolving), so it is not filtering down, but it is news."""
    env = Env(config=config, timeout_s=config.selftest.timeout_ms / 1000)
    results = runner(lambda: check_illegal_content(env))
    return _from_doctor(results, "illegal-content", "illegal-content resolver")


def console(config: AppConfig, runner: Runner) -> list[CheckResult]:
    env = Env(config=config, timeout_s=config.selftest.timeout_ms / 1000)
    return _from_doctor(runner(lambda: check_console(env)), "daemon", "console")


def clock(config: AppConfig, clock_source: object) -> list[CheckResult]:
    """The time is right: synchronised by NTP, or (in the network lab) set by the lab's clock file."""
    from schoolgate.clock import FileClock

    if isinstance(clock_source, FileClock):
        return [CheckResult("clock", "time", "", Status.OK, "set by the lab's clock file")]
    return _from_doctor(check_clock(Env(config=config)), "clock", "time")


def heartbeats(session: Session, config: AppConfig, wall_now: datetime | None = None) -> list[CheckResult]:
    """Every daemon has written its heartbeat lately (the wall clock: that is what they write)."""
    from schoolgate.store.events import read_status
    from schoolgate.store.events.status import failing

    wall_now = wall_now or datetime.now(UTC)
    limit = timedelta(seconds=config.selftest.heartbeat_max_age_s)
    rows = read_status(session, config.site.id)
    results = []
    for name, what in DAEMONS.items():
        beats = {key: row for key, row in rows.items() if key == name or key.startswith(name + ".")}
        unit = UNITS[name]
        if not beats:
            results.append(CheckResult("daemon", name, "", Status.FAIL, f"{what}: has never reported",
                                       f"sudo systemctl start {unit}"))
            continue
        for key, row in sorted(beats.items()):
            age = wall_now - row["heartbeat_at"]
            why = failing(row["stats"])
            if why is not None:  # alive and reporting, and saying it does not work
                retry = row["stats"].get("retry_in_s")
                results.append(CheckResult(
                    "daemon", key, "", Status.FAIL,
                    f"{what}: not working: {why}" + (f" (trying again in {retry} s)" if retry is not None else ""),
                    f"journalctl -u {unit}",
                ))
            elif age > limit:
                results.append(CheckResult(
                    "daemon", key, "", Status.FAIL,
                    f"{what}: no heartbeat for {int(age.total_seconds())} s (pid {row['pid']})",
                    f"sudo systemctl restart {unit}; journalctl -u {unit}",
                ))
            else:
                results.append(CheckResult("daemon", key, "", Status.OK,
                                           f"heartbeat {max(0, int(age.total_seconds()))} s ago"))
    return results


def behind_register(
    session: Session, config: AppConfig, generation: int, wall_now: datetime | None = None
) -> list[str]:
    """The live daemons (heartbeat within the allowance) whose identity register is older than
    `generation`, by their status rows; a daemon that is down is the heartbeat check's to report."""
    from schoolgate.store.events import read_status

    wall_now = wall_now or datetime.now(UTC)
    limit = timedelta(seconds=config.selftest.heartbeat_max_age_s)
    behind = []
    for name, row in read_status(session, config.site.id).items():
        stats = row["stats"]
        loaded = stats.get("register_generation", (stats.get("dns") or {}).get("register_generation"))
        if loaded is None or wall_now - row["heartbeat_at"] > limit:
            continue
        if int(loaded) < generation:
            behind.append(name)
    return behind


def lists(config: AppConfig, now: datetime) -> list[CheckResult]:
    """Every list the policy uses, as `schoolgate lists status` reports it (schoolgate.lists.status):
    a subscription with no version yet, or not confirmed current for `[lists] stale_days`, fails;
    one whose last update failed while its version is still current is a warning."""
    from schoolgate.lists.status import FAILING, MISSING, OK, STALE, read_statuses

    try:
        statuses = read_statuses(config, now)
    except Exception as err:  # the manifest or the policy cannot be read: that is the finding
        return [CheckResult("list", "lists", "", Status.FAIL, f"the list status cannot be read: {err}",
                            f"schoolgate lists status --config {config.source}")]
    update = f"schoolgate lists update --config {config.source}"
    results = []
    for item in statuses:
        message = item.describe().removeprefix(f"{item.id}: ")
        if item.state == OK:
            results.append(CheckResult("list", item.id, "", Status.OK, message))
        elif item.state == FAILING:
            results.append(CheckResult("list", item.id, "", Status.WARN, message, f"{update}; check the list's URL"))
        elif item.state == MISSING:
            # The categories' rules are in force (their canaries prove it), but none of the
            # list's names are: the technician must fetch or import it.
            results.append(CheckResult("list", item.id, "", Status.FAIL,
                                       f"{message}: none of its names are blocked", update))
        elif item.state == STALE:
            results.append(CheckResult("list", item.id, "", Status.FAIL, message,
                                       f"{update}; check the appliance can reach the list's URL"))
    return results
