"""Importing dnsmasq DHCP leases into the device register."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.cli import main
from schoolgate.identity.leases import import_leases, parse_leases
from schoolgate.store import audit
from schoolgate.store.models import AuditEntry, Device
from schoolgate.store.overlay import read_generation

SITE = "testschool"
NOW = datetime(2026, 11, 23, 8, 30, tzinfo=UTC)
LATER = int((NOW + timedelta(hours=12)).timestamp())
EARLIER = int((NOW - timedelta(hours=1)).timestamp())

GOOD = f"""\
{LATER} 02:00:00:00:00:01 10.10.1.11 ipad-01 01:02:00:00:00:00:01
{LATER} 02:00:00:00:00:02 10.10.1.12 * *
0 02:00:00:00:00:03 10.10.1.13 office-pc *
duid 00:01:00:01:2c:5e:7a:1b:02:00:00:00:00:01
{LATER} 1234567 fd00::1:11 ipad-01 00:01:00:01:2c:5e:7a:1b:02:00:00:00:00:01
"""


def devices(sessions: sessionmaker[Session]) -> dict[str, Device]:
    with sessions() as s:
        return {d.mac or "": d for d in s.scalars(select(Device).where(Device.site == SITE))}


def run_import(sessions: sessionmaker[Session], text: str, now: datetime = NOW):  # type: ignore[no-untyped-def]
    with sessions.begin() as s:
        return import_leases(s, SITE, text, actor="tech", now=now)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("garbage", "found 1 fields"),
        (f"{LATER} 02:00:00:00:00:09 10.0.0.9 a b c", "found 6 fields"),
        ("soon 02:00:00:00:00:09 10.0.0.9 host *", "not a number"),
        (f"{LATER} 02:00:00:00:09 10.0.0.9 host *", "not an Ethernet MAC"),
        (f"{LATER} 06-02:00:00:00:00:09 10.0.0.9 host *", "not an Ethernet MAC"),
        (f"{LATER} 02:00:00:00:00:09 10.0.0.300 host *", "not an IP address"),
        (f"{LATER} 02:00:00:00:00:09 fd00::9 host *", "IPv6 address in an IPv4 lease"),
        (f"{LATER} 02:00:00:00:00:09 10.0.0.9 <script> *", "not a valid host name"),
    ],
)
def test_malformed_lines_are_reported_with_their_number(line: str, reason: str) -> None:
    parsed = parse_leases(f"{LATER} 02:00:00:00:00:01 10.0.0.1 good *\n{line}\n")
    assert [lease.mac for lease in parsed.leases] == ["02:00:00:00:00:01"]
    assert len(parsed.problems) == 1
    assert parsed.problems[0].line == 2
    assert reason in parsed.problems[0].reason
    assert str(parsed.problems[0]).startswith("line 2: ")


def test_parse_a_dnsmasq_file() -> None:
    parsed = parse_leases(GOOD)
    assert parsed.problems == []
    assert parsed.ipv6_skipped == 1
    assert [(lease.line, lease.mac, lease.ip, lease.hostname) for lease in parsed.leases] == [
        (1, "02:00:00:00:00:01", "10.10.1.11", "ipad-01"),
        (2, "02:00:00:00:00:02", "10.10.1.12", None),
        (3, "02:00:00:00:00:03", "10.10.1.13", "office-pc"),
    ]
    assert parsed.leases[2].expiry is None  # 0: infinite
    assert parsed.leases[0].client_id == "01:02:00:00:00:00:01"


def test_import_creates_devices_audits_and_bumps_the_generation(sessions: sessionmaker[Session]) -> None:
    report = run_import(sessions, GOOD)
    assert sorted(report.created) == ["ipad-01", "mac-020000000002", "office-pc"]
    assert report.ipv6_skipped == 1
    found = devices(sessions)
    assert (found["02:00:00:00:00:01"].name, found["02:00:00:00:00:01"].ip) == ("ipad-01", "10.10.1.11")
    assert found["02:00:00:00:00:02"].name == "02:00:00:00:00:02"
    assert found["02:00:00:00:00:03"].last_seen == NOW
    with sessions() as s:
        assert read_generation(s, SITE) == 1
        entries = s.scalars(select(AuditEntry).order_by(AuditEntry.seq)).all()
        assert [e.action for e in entries] == ["device.create"] * 3
        assert {e.actor for e in entries} == {"tech"}
        assert audit.verify(s, SITE).ok


def test_reimport_duplicates_nothing_and_updates_addresses(sessions: sessionmaker[Session]) -> None:
    run_import(sessions, GOOD)
    later = NOW + timedelta(hours=1)
    report = run_import(sessions, GOOD, now=later)
    assert (report.created, report.updated, report.unchanged) == ([], [], 3)
    assert report.generation is None  # nothing changed: the daemons need not reload
    assert len(devices(sessions)) == 3
    assert devices(sessions)["02:00:00:00:00:01"].last_seen == later

    moved = GOOD.replace("10.10.1.11", "10.10.1.50")
    report = run_import(sessions, moved, now=later)
    assert report.updated == ["ipad-01"]
    assert devices(sessions)["02:00:00:00:00:01"].ip == "10.10.1.50"
    with sessions() as s:
        last = s.scalars(select(AuditEntry).order_by(AuditEntry.seq.desc())).first()
        assert last is not None
        assert (last.action, last.object_id) == ("device.update", "ipad-01")
        assert '"ip":["10.10.1.11","10.10.1.50"]' in last.detail
        assert read_generation(s, SITE) == 2


def test_an_address_passed_to_another_device_is_taken_from_the_first(sessions: sessionmaker[Session]) -> None:
    run_import(sessions, f"{LATER} 02:00:00:00:00:01 10.10.1.11 first *\n")
    run_import(sessions, f"{LATER} 02:00:00:00:00:05 10.10.1.11 second *\n")
    found = devices(sessions)
    assert found["02:00:00:00:00:01"].ip is None
    assert found["02:00:00:00:00:05"].ip == "10.10.1.11"


def test_existing_devices_are_matched_by_mac_whatever_its_spelling(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        s.add(Device(site=SITE, device_id="ASSET-1", name="Hall PC", mac="02-00-00-00-00-01"))
    report = run_import(sessions, GOOD)
    assert "ASSET-1" in report.updated
    assert len(devices(sessions)) == 3


def test_hostname_clash_gets_a_unique_device_id(sessions: sessionmaker[Session]) -> None:
    run_import(
        sessions,
        f"{LATER} 02:00:00:00:00:01 10.10.1.11 ipad *\n{LATER} 02:00:00:00:00:02 10.10.1.12 ipad *\n",
    )
    ids = sorted(d.device_id for d in devices(sessions).values())
    assert ids == ["ipad", "ipad-000002"]


def test_expired_leases_are_skipped(sessions: sessionmaker[Session]) -> None:
    report = run_import(sessions, f"{EARLIER} 02:00:00:00:00:01 10.10.1.11 gone *\n")
    assert (report.created, report.expired) == ([], 1)


def test_bad_lines_never_lose_the_good_ones(sessions: sessionmaker[Session]) -> None:
    text = GOOD + "this is not a lease\n" + f"{LATER} 02:00:00:00:00:07 10.10.1.17 late-one *\n"
    report = run_import(sessions, text)
    assert len(report.created) == 4
    assert [p.line for p in report.problems] == [6]
    assert "1 bad lines skipped" in report.summary()


def test_import_leases_cli(
    config_file: Path, tmp_path: Path, sessions: sessionmaker[Session], capsys: pytest.CaptureFixture[str]
) -> None:
    lease_file = tmp_path / "dnsmasq.leases"
    future = int((datetime.now(UTC) + timedelta(hours=6)).timestamp())
    lease_file.write_text(
        f"{future} 02:00:00:00:00:01 10.10.1.11 ipad-01 *\nbroken line\n{future} 02:00:00:00:00:02 10.10.1.12 lap *\n",
        encoding="utf-8",
    )
    assert main(["devices", "import-leases", str(lease_file), "--config", str(config_file)]) == 1
    out = capsys.readouterr()
    assert "line 2:" in out.err
    assert "2 new" in out.out
    assert len(devices(sessions)) == 2
    assert main(["devices", "import-leases", str(lease_file), "--config", str(config_file)]) == 1
    assert "0 new, 0 updated, 2 unchanged" in capsys.readouterr().out
    assert main(["devices", "import-leases", str(tmp_path / "missing"), "--config", str(config_file)]) == 2


@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=80), max_size=30))
@settings(max_examples=300, deadline=None)
def test_any_text_parses_without_raising(lines: list[str]) -> None:
    text = "\n".join(line.replace("\n", " ").replace("\r", " ") for line in lines)
    parsed = parse_leases(text)
    accounted = len(parsed.leases) + len(parsed.problems) + parsed.ipv6_skipped
    meaningful = [line for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    duids = sum(1 for line in meaningful if line.split()[0] == "duid")
    assert accounted + duids == len(meaningful)
