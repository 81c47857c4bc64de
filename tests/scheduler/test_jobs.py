"""Expiry, retention and heartbeat jobs with injected time; the command and SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.config import AppConfig
from schoolgate.scheduler import jobs
from schoolgate.store import audit as store_audit
from schoolgate.store.models import (
    AccessEvent,
    Alert,
    AlertHistory,
    AuditEntry,
    BanRow,
    DaemonStatus,
    PolicyExceptionRow,
)
from schoolgate.store.overlay import read_generation

SITE = "testschool"
NOW = datetime(2026, 10, 6, 9, 0, tzinfo=UTC)


def test_expiry_audits_and_bumps_once(make_config: Callable[..., AppConfig], factory: sessionmaker[Session]) -> None:
    config = make_config()
    with factory() as session:
        session.add_all(
            [
                PolicyExceptionRow(
                    site=SITE,
                    scope="device",
                    subject="A",
                    domain="a.example",
                    starts=NOW,
                    expires=NOW + timedelta(minutes=10),
                    created_by="head",
                ),
                PolicyExceptionRow(
                    site=SITE,
                    scope="device",
                    subject="B",
                    domain="b.example",
                    starts=NOW,
                    expires=NOW + timedelta(minutes=10),
                    created_by="head",
                    revoked_at=NOW,
                ),
                PolicyExceptionRow(
                    site=SITE,
                    scope="device",
                    subject="C",
                    domain="c.example",
                    starts=NOW,
                    expires=NOW + timedelta(days=10),
                    created_by="head",
                ),
                BanRow(site=SITE, device_id="D", starts=NOW, until=NOW + timedelta(minutes=20), created_by="dsl"),
            ]
        )
        session.commit()
    first = jobs.expiry_job(config, factory, NOW + timedelta(minutes=1))
    assert (first.exceptions, first.bans, first.generation) == ([], [], None)
    second = jobs.expiry_job(config, factory, NOW + timedelta(minutes=30))
    assert len(second.exceptions) == 1 and len(second.bans) == 1 and second.generation == 1
    third = jobs.expiry_job(config, factory, NOW + timedelta(minutes=31))
    assert (third.exceptions, third.bans, third.generation) == ([], [], None)
    with factory() as session:
        actions = list(session.scalars(select(AuditEntry.action).order_by(AuditEntry.seq)))
        assert actions == ["exception.expire", "ban.expire"]
        assert read_generation(session, SITE) == 1
        assert store_audit.verify(session, SITE).ok


def test_retention_purges_by_kind(make_config: Callable[..., AppConfig], factory: sessionmaker[Session]) -> None:
    config = make_config()  # allowed 30 days, blocked 365 days, alerts 2190 days

    def ev(days_ago: float, verdict: str, flags: str = "") -> AccessEvent:
        return AccessEvent(
            site=SITE,
            ts=NOW - timedelta(days=days_ago),
            source="dns",
            client_ip="10.0.0.1",
            role="pupil",
            host="x.example",
            verdict=verdict,
            rule_id="r",
            flags=flags,
        )

    with factory() as session:
        session.add_all(
            [ev(31, "allow") for _ in range(7)]
            + [ev(29, "allow"), ev(31, "safe_search"), ev(31, "allow", "vpn"), ev(366, "allow", "vpn")]
            + [ev(364, "block"), ev(366, "block"), ev(400, "block")]
        )
        session.add(
            AccessEvent(
                site="other",
                ts=NOW - timedelta(days=999),
                source="dns",
                client_ip="1.1.1.1",
                role="pupil",
                host="x",
                verdict="allow",
                rule_id="r",
                flags="",
            )
        )
        old = Alert(
            site=SITE,
            kind="k",
            severity="low",
            status="resolved",
            title="t",
            first_seen=NOW,
            last_seen=NOW,
            updated_at=NOW - timedelta(days=2200),
            created_at=NOW - timedelta(days=2200),
        )
        old.history.append(AlertHistory(actor="dsl", action="note", detail="n"))
        kept = Alert(
            site=SITE,
            kind="k",
            severity="low",
            status="new",
            title="t",
            first_seen=NOW,
            last_seen=NOW,
            updated_at=NOW - timedelta(days=2200),
            created_at=NOW - timedelta(days=2200),
        )
        session.add_all([old, kept])
        session.commit()
        kept_id = kept.id
    original_batch = jobs.PURGE_BATCH
    jobs.PURGE_BATCH = 3  # several batches, each its own transaction
    try:
        outcome = jobs.retention_job(config, factory, NOW)
    finally:
        jobs.PURGE_BATCH = original_batch
    assert outcome == jobs.RetentionOutcome(allowed_deleted=8, blocked_deleted=3, alerts_deleted=1)
    with factory() as session:
        left = session.execute(select(AccessEvent.verdict, AccessEvent.flags, AccessEvent.site)).all()
        assert sorted(left) == sorted(
            [("allow", "", SITE), ("allow", "vpn", SITE), ("block", "", SITE), ("allow", "", "other")]
        )
        assert [a.id for a in session.scalars(select(Alert))] == [kept_id]
        assert session.scalar(select(func.count()).select_from(AlertHistory)) == 0
        entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "retention.purge")).one()
        assert json.loads(entry.detail)["allowed_events"] == 8
    assert jobs.retention_job(config, factory, NOW) == jobs.RetentionOutcome(0, 0, 0)


def test_heartbeat(make_config: Callable[..., AppConfig], factory: sessionmaker[Session]) -> None:
    jobs.heartbeat_job(make_config(), factory, NOW, pid=1234, started_at=NOW, stats={"runs": {"alerts": 2}})
    with factory() as session:
        row = session.get(DaemonStatus, (SITE, "scheduler"))
        assert row is not None and row.pid == 1234 and json.loads(row.stats)["runs"] == {"alerts": 2}


def write_config(tmp_path: Path, db_path: Path, policy_file: Path) -> Path:
    path = tmp_path / "schoolgate.toml"
    path.write_text(
        f'policy = "{policy_file}"\ndata_dir = "{tmp_path}"\n\n[site]\nid = "{SITE}"\nname = "Test Primary"\n\n'
        f'[database]\nurl = "sqlite:///{db_path}"\n',
        encoding="utf-8",
    )
    return path


def test_command_runs_a_job_and_stops_on_sigterm(
    tmp_path: Path, db_path: Path, policy_file: Path, factory: sessionmaker[Session]
) -> None:
    config = write_config(tmp_path, db_path, policy_file)
    command = [sys.executable, "-m", "schoolgate", "scheduler", "--config", str(config)]
    once = subprocess.run([*command, "--run", "expiry"], capture_output=True, text=True, timeout=60, check=False)
    assert once.returncode == 0, once.stderr
    assert once.stdout.startswith("expiry: ExpiryOutcome(")

    bad = subprocess.run(
        [sys.executable, "-m", "schoolgate", "scheduler", "--config", str(tmp_path / "none.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2 and "cannot read the file" in bad.stderr

    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    try:
        deadline = time.monotonic() + 30
        beat = None
        while time.monotonic() < deadline and beat is None:
            with factory() as session:
                beat = session.get(DaemonStatus, (SITE, "scheduler"))
            if beat is None:
                time.sleep(0.1)
        assert beat is not None and beat.pid == process.pid
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr
        assert "scheduler stopped" in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize(("mode", "banned"), [("automatic", True), ("offer", False)])
def test_the_alert_job_bans_a_confirmed_attempt_only_where_the_school_chose_automatic_bans(
    make_config: Callable[..., AppConfig], factory: sessionmaker[Session], policy_file: Path, mode: str, banned: bool
) -> None:
    """Seed 001 §9 "will result in a ban": the scheduler's alert scan bans a pupil's own phone (by
    its MAC, until lifted) where `[bans] on_circumvention = "automatic"`; under "offer" the case
    waits for the DSL."""
    from schoolgate.policy import load_policy

    policy_file.write_text(policy_file.read_text(encoding="utf-8") + (
        f'\n[bans]\non_circumvention = "{mode}"\nautomatic_roles = ["pupil"]\ndays = 0\n'
        'supervisor = "the class teacher"\n'), encoding="utf-8")
    policy = load_policy(policy_file)
    phone = "02:41:00:00:20:77"
    with factory() as session:
        for offset in (0.0, 0.3):  # the VPN site looked up, then connected to: certain intent
            session.add(AccessEvent(site=SITE, ts=NOW - timedelta(minutes=5, seconds=-offset),
                                    source="dns" if offset == 0 else "proxy", client_ip="10.0.0.77", mac=phone,
                                    role="pupil", host="nordvpn.com", verdict="block", rule_id="no-circumvention",
                                    category="circumvention", service="vpn", flags="", count=1))
        session.commit()
        generation = read_generation(session, SITE)
    outcome = jobs.alerts_job(make_config(), factory, NOW, policy=policy)
    with factory() as session:
        (case,) = session.scalars(select(Alert).where(Alert.kind == "circumvention")).all()
        assert case.severity == "high"
        rows = session.scalars(select(BanRow)).all()
        if not banned:
            assert rows == [] and outcome.bans == []
            return
        (ban,) = rows
        assert outcome.bans == [ban.id]
        assert (ban.mac, ban.device_id, ban.until, ban.supervisor, ban.alert_id) == (
            phone, None, None, "the class teacher", case.id)
        assert (read_generation(session, SITE) or 0) > (generation or 0)  # DNS and the proxy pick it up
    # A second scan over the same case bans nothing more.
    assert jobs.alerts_job(make_config(), factory, NOW + timedelta(minutes=1), policy=policy).bans == []
