"""The self-test in the lab: it passes from the devices and from the gateway alike, and each way
filtering can break is caught, recorded in the check log and e-mailed to the right people."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from schoolgate.config import MailConfig
from schoolgate.lab.client import LabClient
from schoolgate.lab.internet import RESOLVER_IP
from schoolgate.lab.netns import exec_in, run, wait_for
from schoolgate.lab.pause import resume, stop_between_transactions
from schoolgate.lab.selftest import run_lab_selftest
from schoolgate.services.mailer import SmtpMailer
from schoolgate.store.models import CheckRecord, ConsoleUser, Generation, UserRole

REFERENCE = sys.modules["schoolgate_tests_reference_data"]
pytestmark = [pytest.mark.root, pytest.mark.slow, REFERENCE.needs_reference_data]
LESSON = "2026-11-23T10:15:00+00:00"
STAFF_TEAM = {
    "tech@kingswood.example": "technician",
    "dsl@kingswood.example": "dsl",
    "head@kingswood.example": "headteacher",
}
Inbox = sys.modules["schoolgate_tests_smtp"].Inbox


def lists(lab: LabClient, *args: str) -> str:
    done = exec_in(lab.gateway, [sys.executable, "-P", "-m", "schoolgate", "lists", *args, "--config",
                                 str(lab.lab.config_path)], check=False, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def staffed(lab: LabClient) -> LabClient:
    """The example policy's UT1 subscription installed from the shared sample (the lab cannot
    download it), and the school's technician, DSL and headteacher with e-mail addresses."""
    lists(lab, "import", "--id", "ut1", str(REFERENCE.DATA / "ut1"))
    with lab.session() as session:
        for email, role in STAFF_TEAM.items():
            session.add(ConsoleUser(site="kingswood", username=role, display_name=role.title(), email=email,
                                    password_hash="x", roles=[UserRole(role=role)]))
        session.commit()
    return lab


def mailer(port: int) -> SmtpMailer:
    return SmtpMailer(MailConfig(host="127.0.0.1", port=port, sender="schoolgate@kingswood.example"))


def verdicts(report: object) -> dict[tuple[str, str, str], str]:
    """(role, check, subject) -> status, for the checks that ask as a device."""
    return {(r.role, r.check, r.subject): r.status.value for r in report.results if r.role}  # type: ignore[attr-defined]


def test_the_selftest_passes_and_the_gateway_sees_what_the_devices_see(staffed: LabClient) -> None:
    staffed.set_clock(LESSON)
    started = time.monotonic()
    devices = run_lab_selftest(staffed.lab, from_devices=True, trigger="lab test")
    gateway = run_lab_selftest(staffed.lab, from_devices=False, trigger="lab test")
    elapsed = time.monotonic() - started
    for report in (devices, gateway):
        assert report.passed, [r.line() for r in report.failures]
        assert not report.filtering_down and report.check_id is not None
    print(f"\nself-test: from devices {devices.duration_ms} ms, from the gateway {gateway.duration_ms} ms "
          f"({len(gateway.results)} checks; both runs {elapsed:.1f} s)")
    from_devices, from_gateway = verdicts(devices), verdicts(gateway)
    # The probe address in each network is answered as that network's devices are.
    for role in ("pupil", "staff", "guest"):
        device_side = {k[1:]: v for k, v in from_devices.items() if k[0] == role}
        gateway_side = {k[1:]: v for k, v in from_gateway.items() if k[0] == role}
        assert device_side and device_side == gateway_side, role
    blocked = [r for r in gateway.results if r.check == "category" and r.role == "pupil"
               and r.subject.startswith("Social media")]
    assert blocked and all("blocked" in r.message for r in blocked)
    # The banned device is asked too: supervised, everything but the curriculum closed.
    assert any(r.role == "supervised" and "supervised-everything-else" in r.message for r in devices.results)
    with staffed.session() as session:
        rows = session.scalars(select(CheckRecord).where(CheckRecord.kind == "selftest")).all()
        assert {r.id for r in rows} >= {devices.check_id, gateway.check_id}
        assert all(r.result == "pass" and r.failures == 0 for r in rows if r.id == gateway.check_id)


def test_the_selftests_own_questions_raise_no_alert(staffed: LabClient) -> None:
    from schoolgate.store.models import AccessEvent, Alert

    run_lab_selftest(staffed.lab, from_devices=False, trigger="lab test")

    def logged() -> list[AccessEvent]:
        with staffed.session() as session:
            return list(session.scalars(select(AccessEvent).where(
                AccessEvent.device_id.startswith("schoolgate-selftest-"), AccessEvent.verdict == "block")))

    # The probe devices' blocked questions are logged under their own names (once written).
    wait_for(lambda: bool(logged()), timeout=10, what="the self-test's events")
    probes = logged()
    # The scheduler scans for alerts every 30 s: wait until it has passed the self-test's events.
    def scanned() -> bool:
        with staffed.session() as session:
            mark = session.get(Generation, ("kingswood", "alerts_cursor"))
            return mark is not None and mark.value >= max(p.id for p in probes)

    wait_for(scanned, timeout=120, what="the scheduler's alert scan to pass the self-test's events")
    with staffed.session() as session:
        cases = session.scalars(select(Alert).where(Alert.device_id.startswith("schoolgate-selftest-"))).all()
        assert cases == []


@pytest.fixture
def dns_paused(staffed: LabClient) -> Iterator[int]:
    """The DNS daemon stopped dead (SIGSTOP to its supervising process and every worker): the
    appliance's supervisor sees it alive, devices get no answers."""
    from schoolgate.dns.daemon import worker_pids

    pid = staffed.lab.daemon_pid("dns")
    assert pid is not None
    answering = worker_pids(pid)  # its workers, or the daemon itself when it is its one worker
    assert answering, "the DNS daemon has no process answering to stop"
    stopped = sorted({pid, *answering})
    # Stopped inside a transaction (its status row, written each second), it would hold SQLite's
    # write lock and stop every writer of the appliance: a stopped database, not the stopped DNS
    # this test is about.
    stop_between_transactions(stopped, staffed.lab.data_dir / "schoolgate.db")
    try:
        yield pid
    finally:
        resume(stopped)


def test_a_stopped_dns_daemon_is_filtering_down_and_mails_the_dsl_and_head(
    staffed: LabClient, dns_paused: int, mail_server: tuple[Inbox, int]
) -> None:
    inbox, port = mail_server
    staffed.set_clock(LESSON)
    report = run_lab_selftest(staffed.lab, from_devices=False, mailer=mailer(port), trigger="lab test")
    assert not report.passed and report.filtering_down
    silent = [r for r in report.failures if r.check == "category" and "did not answer" in r.message]
    assert silent and all(r.filtering for r in silent)
    ((recipients, message),) = inbox.wait(1, timeout=30)
    assert sorted(recipients) == sorted(STAFF_TEAM)
    assert message["Subject"] == "schoolgate: filtering is NOT working at Kingswood Primary School"
    text = Inbox.text(message)
    assert "NOT working" in text and "did not answer the DNS question" in text and "schoolgate-dns" in text
    with staffed.session() as session:
        row = session.get(CheckRecord, report.check_id)
        assert row is not None and (row.result, row.filtering_down) == ("fail", True)
        assert set(row.notified.split(", ")) == set(STAFF_TEAM)


@pytest.fixture
def upstream_down(staffed: LabClient) -> Iterator[None]:
    """The internet's resolver stops answering (its namespace drops DNS to it)."""
    ns = staffed.lab.names.internet
    rules = (f"table inet labfault {{\n chain input {{\n type filter hook input priority -10;\n"
             f" ip daddr {RESOLVER_IP} meta l4proto {{ tcp, udp }} th dport 53 drop\n }}\n}}\n")
    run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input_text=rules)
    try:
        yield
    finally:
        exec_in(ns, ["nft", "delete", "table", "inet", "labfault"], check=False)


def test_an_upstream_that_stops_answering_mails_the_technician_only(
    staffed: LabClient, upstream_down: None, mail_server: tuple[Inbox, int]
) -> None:
    inbox, port = mail_server
    staffed.set_clock(LESSON)
    report = run_lab_selftest(staffed.lab, from_devices=False, mailer=mailer(port), trigger="lab test")
    assert not report.passed
    assert not report.filtering_down  # blocked names stay blocked: the policy is decided here
    assert any(r.check == "upstream" and r.failed for r in report.results)
    assert not any(r.filtering for r in report.failures)
    ((recipients, message),) = inbox.wait(1, timeout=30)
    assert recipients == ["tech@kingswood.example"]
    assert message["Subject"] == "schoolgate self-test failed at Kingswood Primary School"
    assert "Filtering itself passed its checks" in Inbox.text(message)


def test_the_scheduler_runs_a_selftest_when_the_console_asks(staffed: LabClient) -> None:
    from schoolgate.services.common import advance_mark

    with staffed.session() as session:
        before = session.scalar(select(CheckRecord.id).order_by(CheckRecord.id.desc()).limit(1)) or 0
        advance_mark(session, "kingswood", "selftest_requested", datetime.now(UTC))
        session.commit()

    def logged() -> bool:
        with staffed.session() as session:
            return session.scalars(select(CheckRecord).where(CheckRecord.id > before,
                                                             CheckRecord.trigger == "on_request")).first() is not None

    # The scheduler looks every 30 s; a self-test takes a few seconds.
    wait_for(logged, timeout=90, what="the scheduler's self-test in the check log")


def test_a_list_not_confirmed_current_for_days_is_caught_and_mailed(
    staffed: LabClient, mail_server: tuple[Inbox, int]
) -> None:
    """The UT1 subscription's last confirmation is moved four days back (as if the school's
    internet had blocked every update since): stale, so the technician hears of it."""
    import json as json_module
    from datetime import timedelta

    from schoolgate.config import load_config
    from schoolgate.lists.state import ListState, state_dir_of

    inbox, port = mail_server
    state = ListState(state_dir_of(load_config(staffed.lab.config_path)))
    manifest = state.manifest()
    entry = manifest["lists"]["ut1"]
    original = json_module.loads(json_module.dumps(entry))
    aged = (staffed.lab.clock_now() - timedelta(days=4)).isoformat()
    entry["installed_at"] = entry["verified_at"] = entry["checked_at"] = aged
    state.write_manifest(manifest)
    try:
        report = run_lab_selftest(staffed.lab, from_devices=False, mailer=mailer(port), trigger="lab test")
    finally:
        manifest["lists"]["ut1"] = original
        state.write_manifest(manifest)
    (stale,) = [r for r in report.failures if r.check == "list"]
    assert stale.subject == "ut1" and "STALE" in stale.message and not stale.filtering
    # The rules and the names already installed still block.
    assert not report.filtering_down, [r.line() for r in report.failures if r.filtering]
    ((recipients, message),) = inbox.wait(1, timeout=30)
    assert recipients == ["tech@kingswood.example"]
    assert "ut1" in Inbox.text(message) and "lists update" in Inbox.text(message)
