"""APScheduler wiring: which job runs when, in the school's time (the policy's zone), until SIGTERM.

The jobs themselves live in `jobs` and take the instant as an argument; here each trigger
reads the clock (schoolgate.clock, so the lab can move time) and calls its job. A job that
fails is logged and counted in the heartbeat; the scheduler carries on.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from datetime import datetime, time, tzinfo
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from schoolgate.clock import Clock
from schoolgate.config import AppConfig
from schoolgate.scheduler import jobs
from schoolgate.services.alert_rules import AlertEngine, AlertSettings
from schoolgate.services.mailer import Mailer

if TYPE_CHECKING:
    from schoolgate.policy import CompiledPolicy
    from schoolgate.services.policy_history import FileFacts

log = logging.getLogger(__name__)
RETENTION_TIME = time(2, 30)  # nightly, when nobody is at school
HEARTBEAT_SECONDS = 30
EXPIRY_SECONDS = 30
ROLLUP_SECONDS = 30
NOTIFY_SECONDS = 15  # a new report or a request waiting for someone: e-mailed within this
POLICY_SECONDS = 60
COVERAGE_SECONDS = 60
EXPORT_SECONDS = 30


def digest_trigger(at: str, zone: tzinfo) -> CronTrigger:
    """School-day mornings at `at` (HH:MM, the school's time); the job skips holidays and INSET days."""
    try:
        when = time.fromisoformat(at)
    except ValueError as err:
        raise ValueError(f"[mail] digest_time: expected a time like 07:30, got {at!r}") from err
    return CronTrigger(day_of_week="mon-fri", hour=when.hour, minute=when.minute, timezone=zone)


def lists_trigger(at: str, zone: tzinfo) -> CronTrigger:
    """Every day at `at` (HH:MM, the school's time): list sources publish daily."""
    try:
        when = time.fromisoformat(at)
    except ValueError as err:
        raise ValueError(f"[lists] update_time: expected a time like 03:30, got {at!r}") from err
    return CronTrigger(hour=when.hour, minute=when.minute, timezone=zone)


def retention_trigger(zone: tzinfo) -> CronTrigger:
    return CronTrigger(hour=RETENTION_TIME.hour, minute=RETENTION_TIME.minute, timezone=zone)


DEFAULT_SELFTEST_TIME = time(7, 0)
SELFTEST_LEAD_MINUTES = 30  # the morning self-test runs this long before the school day starts
SELFTEST_WATCH_SECONDS = 30
SELFTEST_REQUEST = "selftest_requested"  # generations row the console's "run now" button moves


def selftest_time(policy: CompiledPolicy | None, setting: str) -> time:
    """When the morning self-test runs: `[selftest] morning_time`, or half an hour before the
    earliest window the policy opens on school (or staff) days, or 07:00 without one."""
    if setting:
        try:
            return time.fromisoformat(setting)
        except ValueError as err:
            raise ValueError(f"[selftest] morning_time: expected a time like 07:45, got {setting!r}") from err
    from schoolgate.policy.timeline import DayKind

    starts = [
        span.start
        for window in (policy.windows if policy is not None else ())
        if window.days in (DayKind.SCHOOL_DAYS, DayKind.STAFF_DAYS) and window.weekdays & {0, 1, 2, 3, 4}
        for span in window.spans
        if span.start >= 4 * 60  # a window from the small hours is not the school day
    ]
    if not starts:
        return DEFAULT_SELFTEST_TIME
    minutes = max(0, min(starts) - SELFTEST_LEAD_MINUTES)
    return time(minutes // 60, minutes % 60)


def selftest_trigger(at: time, zone: tzinfo) -> CronTrigger:
    """Weekday mornings (the school's time); the job itself skips days that are not school or staff days."""
    return CronTrigger(day_of_week="mon-fri", hour=at.hour, minute=at.minute, timezone=zone)



class CurrentPolicy:
    """The policy for the school-day calendar, from the appliance's one reloader (the file and
    the installed lists; the jobs need no database overlay). A policy that fails to load keeps
    the last good one (and is logged); with none at all the digest falls back to weekdays."""

    def __init__(self, config: AppConfig) -> None:
        from schoolgate.live import LivePolicy

        self.live = LivePolicy.from_config(config)

    def get(self) -> CompiledPolicy | None:
        try:
            if self.live.policy is None:
                self.live.load()
            else:
                self.live.check()
        except Exception as err:  # keep the last good policy whatever went wrong
            log.error("cannot load the policy %s (keeping the last good one): %s", self.live.path, err)
        return self.live.policy


def file_facts(path: Path) -> FileFacts | None:
    """The policy file's owner and modification time (None if it cannot be read)."""
    import pwd
    from datetime import UTC

    from schoolgate.services.policy_history import FileFacts

    try:
        st = path.stat()
    except OSError:
        return None
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = f"uid {st.st_uid}"
    return FileFacts(str(path), owner, datetime.fromtimestamp(st.st_mtime, UTC))


class SchedulerService:
    """Owns the APScheduler instance and the state the jobs share (engine, mailer, counters)."""

    def __init__(
        self,
        config: AppConfig,
        session_factory: jobs.SessionFactory,
        clock: Clock,
        *,
        mailer: Mailer | None = None,
        policy: Callable[[], CompiledPolicy | None] | None = None,
    ) -> None:
        self.config = config
        self.session_factory = session_factory
        self.clock = clock
        self.mailer = mailer if mailer is not None else jobs.default_mailer(config)
        self.policy = policy or CurrentPolicy(config).get
        self.started_at = clock.now()
        self.stats: dict[str, Any] = {"runs": {}, "failures": {}, "last_error": ""}
        # Called with the ListsOutcome after a round that installed a new list version
        # (the self-test registers here; the audit log and the `lists_changed` counter
        # record the change whatever runs).
        self.after_lists_installed: list[Callable[[jobs.ListsOutcome], object]] = []
        self.list_update: Callable[[AppConfig, float], list[dict[str, object]]] = jobs.run_lists_update
        self._recorded_fingerprint: str | None = None  # the policy version the history has
        self._policy_watch: Any = None  # the policy last seen: the self-test runs after it changes
        self._selftest_mark: int | None = None
        self._selftest_due: str | None = None
        if config.selftest.enabled:
            self.after_lists_installed.append(self._lists_installed)
        # The school's time zone (the policy's [school] timezone) as the scheduler starts: a
        # change of zone takes effect when the scheduler restarts.
        self.zone = jobs.school_zone(self.policy())
        self.scheduler = BackgroundScheduler(timezone=self.zone)
        self.engine = AlertEngine(AlertSettings.from_config(config.alerts, self.zone))
        self._stop = threading.Event()
        self._add_jobs()

    def _jobs(self) -> list[tuple[str, Callable[[], object], Any, int]]:
        """Each job: its name (its id, and its key in the stats), what it runs, when, and how
        late a run may still start (the misfire grace, in seconds)."""
        config = self.config
        table: list[tuple[str, Callable[[], object], Any, int]] = [
            ("alerts", self.run_alerts, IntervalTrigger(seconds=config.alerts.scan_interval_seconds), 60),
            ("notify", self.run_notifications, IntervalTrigger(seconds=NOTIFY_SECONDS), 60),
            ("rollups", self.run_rollups, IntervalTrigger(seconds=ROLLUP_SECONDS), 60),
            ("expiry", self.run_expiry, IntervalTrigger(seconds=EXPIRY_SECONDS), 60),
            ("policy", self.run_policy, IntervalTrigger(seconds=POLICY_SECONDS), 60),
            ("heartbeat", self.run_heartbeat, IntervalTrigger(seconds=HEARTBEAT_SECONDS), 60),
            # A digest late by up to two hours (appliance rebooting at 07:30) is still worth sending.
            ("digest", self.run_digest, digest_trigger(config.mail.digest_time, self.zone), 7200),
            # The list subscriptions: daily, and a run missed while the appliance was off is
            # worth doing late.
            ("lists", self.run_lists, lists_trigger(config.lists.update_time, self.zone), 12 * 3600),
            ("retention", self.run_retention, retention_trigger(self.zone), 6 * 3600),
            ("coverage", self.run_coverage, IntervalTrigger(seconds=COVERAGE_SECONDS), 120),
        ]
        if config.export.syslog:
            table.append(("export", self.run_export, IntervalTrigger(seconds=EXPORT_SECONDS), 120))
        if config.selftest.enabled:
            # Before the school day, and within a minute of a policy or list change or a request.
            morning = selftest_trigger(selftest_time(self.policy(), config.selftest.morning_time), self.zone)
            table.append(("selftest", self.run_morning_selftest, morning, 3600))
            table.append(
                ("selftest-watch", self.watch_for_selftest, IntervalTrigger(seconds=SELFTEST_WATCH_SECONDS), 60)
            )
        return table

    def _add_jobs(self) -> None:
        for name, job, trigger, grace in self._jobs():
            self.scheduler.add_job(
                self._guard(name, job), trigger, id=name, misfire_grace_time=grace, coalesce=True, max_instances=1
            )

    def _guard(self, name: str, job: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            try:
                job()
            except Exception as err:
                log.exception("scheduler job %s failed", name)
                failures = self.stats["failures"]
                failures[name] = failures.get(name, 0) + 1
                self.stats["last_error"] = f"{name}: {err}"[:500]
            else:
                runs = self.stats["runs"]
                runs[name] = runs.get(name, 0) + 1

        return run

    # Each run_* reads the clock once and hands the instant to its job.
    def run_alerts(self) -> jobs.AlertsOutcome:
        return jobs.alerts_job(
            self.config, self.session_factory, self.clock.now(), engine=self.engine, mailer=self.mailer,
            policy=self.policy(),
        )

    def run_notifications(self) -> jobs.NotificationsOutcome:
        return jobs.notifications_job(
            self.config, self.session_factory, self.clock.now(), mailer=self.mailer, policy=self.policy()
        )

    def run_rollups(self) -> int:
        return jobs.rollups_job(self.config, self.session_factory, self.clock.now(), policy=self.policy())

    def run_expiry(self) -> jobs.ExpiryOutcome:
        return jobs.expiry_job(self.config, self.session_factory, self.clock.now())

    def run_digest(self) -> jobs.DigestOutcome:
        outcome = jobs.digest_job(
            self.config, self.session_factory, self.clock.now(), mailer=self.mailer, policy=self.policy()
        )
        log.info("digest: %s", outcome.reason)
        return outcome

    def run_lists(self) -> jobs.ListsOutcome:
        """Update the list subscriptions; when a version was installed, run the hooks waiting
        for it (the self-test checks the new lists are in force)."""
        outcome = jobs.lists_job(
            self.config, self.session_factory, self.clock.now(), mailer=self.mailer, update=self.list_update
        )
        if outcome.installed:
            for hook in self.after_lists_installed:
                try:
                    hook(outcome)
                except Exception:
                    log.exception("a hook after a list update failed")
        return outcome

    def run_policy(self) -> jobs.PolicyOutcome:
        policy = self.policy()
        # The history is written when the fingerprint moves; the file's facts are read then only.
        changed = policy is not None and policy.fingerprint != self._recorded_fingerprint
        facts = file_facts(self.config.policy) if changed else None
        outcome = jobs.policy_job(
            self.config, self.session_factory, self.clock.now(), policy=policy, facts=facts, mailer=self.mailer
        )
        if facts is not None and policy is not None:
            self._recorded_fingerprint = policy.fingerprint
        return outcome

    def run_retention(self) -> jobs.RetentionOutcome:
        return jobs.retention_job(self.config, self.session_factory, self.clock.now(), policy=self.policy())

    def run_export(self) -> jobs.ExportOutcome:
        return jobs.export_job(self.config, self.session_factory, self.clock.now())

    def run_coverage(self) -> jobs.CoverageOutcome:
        return jobs.coverage_job(
            self.config, self.session_factory, self.clock.now(), mailer=self.mailer, policy=self.policy()
        )

    def run_selftest(self, trigger: str = "on_request") -> Any:
        return jobs.selftest_job(self.config, self.session_factory, self.clock.now(), trigger=trigger,
                                 clock=self.clock, mailer=self.mailer)

    def run_morning_selftest(self) -> Any:
        from schoolgate.services.schooldays import is_school_day

        policy = self.policy()
        today = self.clock.now().astimezone(self.zone).date()
        staff_day = policy.calendar.is_staff_day(today) if policy is not None and policy.calendar.terms else None
        if not (staff_day if staff_day is not None else is_school_day(policy, today)):
            log.info("self-test: %s is not a school or staff day", today)
            return None
        return self.run_selftest("morning")

    def _lists_installed(self, outcome: jobs.ListsOutcome) -> None:
        """A new list version is in force: the watcher's next round (within half a minute, once
        the daemons have mapped it) runs the self-test."""
        del outcome
        self._selftest_due = self._selftest_due or "list_change"

    def watch_for_selftest(self) -> Any:
        """Run the self-test after a policy or list change (once the daemons have reloaded it:
        the next round) or when someone asked for one in the console."""
        from schoolgate.services.common import read_mark

        # The scheduler's own view of the policy (the appliance's one reloader): a new object
        # whenever the policy file, its local lists or the installed list versions changed.
        current = self.policy()
        if self._policy_watch is None:
            self._policy_watch = current
        elif current is not None and current is not self._policy_watch:
            self._policy_watch = current
            self._selftest_due = self._selftest_due or "policy_change"
            morning = selftest_time(current, self.config.selftest.morning_time)
            self.scheduler.reschedule_job("selftest", trigger=selftest_trigger(morning, self.zone))
            return None  # the daemons reload within seconds: test what they then apply, next round
        with self.session_factory() as session:
            mark = read_mark(session, self.config.site.id, SELFTEST_REQUEST)
        if self._selftest_mark is None:
            self._selftest_mark = mark
        elif mark != self._selftest_mark:
            self._selftest_mark = mark
            self._selftest_due = self._selftest_due or "on_request"
        due, self._selftest_due = self._selftest_due, None
        return self.run_selftest(due) if due else None

    def run_heartbeat(self) -> None:
        jobs.heartbeat_job(
            self.config,
            self.session_factory,
            self.clock.now(),
            pid=os.getpid(),
            started_at=self.started_at,
            stats=self.stats,
        )

    def next_fire_time(self, job_id: str) -> datetime | None:
        job = self.scheduler.get_job(job_id)
        return getattr(job, "next_run_time", None) if job is not None else None

    def run_forever(self) -> None:
        """Start, run until SIGTERM or SIGINT, then stop cleanly (running jobs finish)."""

        def stop(signum: int, frame: FrameType | None) -> None:
            log.info("signal %s: stopping the scheduler", signum)
            self._stop.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.run_until(self._stop)

    def run_until(self, stop: threading.Event) -> None:
        """Start, run until `stop` is set, then stop cleanly (running jobs finish)."""
        self.scheduler.start()
        log.info("scheduler started for site %s", self.config.site.id)
        self._guard("heartbeat", self.run_heartbeat)()
        try:
            while not stop.wait(1.0):
                pass
        finally:
            self.scheduler.shutdown(wait=True)
            log.info("scheduler stopped")

    def stop(self) -> None:
        self._stop.set()


def keep_scheduling(config: AppConfig, stop: threading.Event) -> None:
    """The scheduler in a thread of a process that does other work (the event-writing process
    of `schoolgate run`), until `stop`: one that cannot start (a mail setting refused, the
    database away) is started again after a back-off, its status row saying why meanwhile
    (schoolgate.companions). Under systemd (`schoolgate scheduler`) it is a process of its own."""
    from schoolgate.clock import clock_from_env
    from schoolgate.companions import keep_running
    from schoolgate.store.db import make_engine, session_factory

    def schedule(stopping: threading.Event) -> None:
        engine = make_engine(config.database_url)
        try:
            SchedulerService(config, session_factory(engine), clock_from_env()).run_until(stopping)
        finally:
            engine.dispose()

    keep_running("the scheduler", jobs.STATUS_NAME, config, schedule, stop)
