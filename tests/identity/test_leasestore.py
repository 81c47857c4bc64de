"""The lease store: bindings merged from lease files, and events put down to the lease of their time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.cli import main
from schoolgate.identity import IdentityResolver, RegisterReloader
from schoolgate.identity.leaseformats import DhcpLease, parse_lease_file
from schoolgate.identity.leasestore import EVIDENCE_GENERATION, leases_at, record_leases
from schoolgate.store.models import DhcpLeaseRow, Person
from schoolgate.store.overlay import bump_generation, read_generation

SITE = "testschool"
T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
H = timedelta(hours=1)
A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


def lease(ip: str, mac: str, starts: datetime | None, ends: datetime | None, *, active: bool = True,
          host: str | None = None) -> DhcpLease:
    return DhcpLease(1, ip, mac, host, starts, ends, active)


def record(sessions: sessionmaker[Session], leases: list[DhcpLease], now: datetime = T0):  # type: ignore[no-untyped-def]
    with sessions.begin() as session:
        return record_leases(session, SITE, leases, origin="test", now=now, source="isc")


def rows(sessions: sessionmaker[Session]) -> list[tuple[str, str, datetime, datetime | None]]:
    with sessions() as session:
        return [(r.ip, r.mac, r.starts, r.ends) for r in
                session.scalars(select(DhcpLeaseRow).order_by(DhcpLeaseRow.starts, DhcpLeaseRow.id))]


def test_a_renewal_extends_the_binding_and_reading_again_changes_nothing(sessions: sessionmaker[Session]) -> None:
    first = [lease("10.0.0.5", A, T0, T0 + 12 * H), lease("10.0.0.5", A, T0 + 6 * H, T0 + 18 * H)]
    report = record(sessions, first)
    assert (report.new, report.renewed) == (1, 1) and report.generation == 1
    assert rows(sessions) == [("10.0.0.5", A, T0, T0 + 18 * H)]
    again = record(sessions, first, now=T0 + 7 * H)
    assert not again.changed and again.generation is None  # the daemons need not reload
    with sessions() as session:
        assert read_generation(session, SITE, EVIDENCE_GENERATION) == 1


def test_another_mac_on_the_address_ends_the_first_binding(sessions: sessionmaker[Session]) -> None:
    record(sessions, [lease("10.0.0.5", A, T0, T0 + 12 * H)])
    report = record(sessions, [lease("10.0.0.5", B, T0 + 3 * H, T0 + 15 * H)])
    assert (report.new, report.ended) == (1, 1)
    assert rows(sessions) == [("10.0.0.5", A, T0, T0 + 3 * H), ("10.0.0.5", B, T0 + 3 * H, T0 + 15 * H)]
    with sessions() as session:
        assert [r.mac for r in leases_at(session, SITE, "10.0.0.5", T0 + 2 * H)] == [A]
        assert [r.mac for r in leases_at(session, SITE, "10.0.0.5", T0 + 4 * H)] == [B]
        assert leases_at(session, SITE, "10.0.0.5", T0 + 16 * H) == []


def test_a_release_ends_the_binding_and_lets_the_next_start_fresh(sessions: sessionmaker[Session]) -> None:
    record(sessions, [lease("10.0.0.5", A, T0, T0 + 12 * H)])
    record(sessions, [lease("10.0.0.5", A, T0 + H, T0 + 2 * H, active=False)])
    assert rows(sessions) == [("10.0.0.5", A, T0, T0 + 2 * H)]
    record(sessions, [lease("10.0.0.5", A, T0 + 5 * H, T0 + 17 * H)])
    assert rows(sessions)[-1] == ("10.0.0.5", A, T0 + 5 * H, T0 + 17 * H)


def test_files_without_start_times_start_when_first_seen(sessions: sessionmaker[Session]) -> None:
    record(sessions, [lease("10.0.0.7", A, None, T0 + 8 * H)], now=T0)
    record(sessions, [lease("10.0.0.7", A, None, T0 + 10 * H)], now=T0 + 2 * H)  # Windows: expiry moved on
    with sessions() as session:
        (row,) = session.scalars(select(DhcpLeaseRow))
        assert (row.starts, row.renewed, row.ends) == (T0, T0 + 2 * H, T0 + 10 * H)
    record(sessions, [lease("10.0.0.7", A, None, T0 + 40 * H)], now=T0 + 30 * H)  # back after it ran out
    assert [r[2] for r in rows(sessions)] == [T0, T0 + 30 * H]


def test_an_event_is_put_down_to_the_lease_valid_at_its_time(sessions: sessionmaker[Session]) -> None:
    """A routed network: no MAC is ever seen, only the DHCP server can say who had the address."""
    from schoolgate.store.models import Device

    with sessions.begin() as session:
        pupil = Person(site=SITE, external_id="p1", name="Ada Pupil", role="pupil", year_group=5)
        staff = Person(site=SITE, external_id="s1", name="Cara Teacher", role="staff")
        session.add_all([pupil, staff])
        session.flush()
        session.add_all([Device(site=SITE, device_id="ipad", name="iPad", mac=A, person_id=pupil.id),
                         Device(site=SITE, device_id="laptop", name="Laptop", mac=B, person_id=staff.id)])
        bump_generation(session, SITE)
    record(sessions, [lease("10.42.0.9", A, T0, T0 + 12 * H), lease("10.42.0.9", B, T0 + 3 * H, T0 + 15 * H)])
    clock = [T0 + H]
    resolver = IdentityResolver(now=lambda: clock[0], ttl=0, unknown_ttl=0)
    RegisterReloader(sessions, SITE, resolver).poll()
    before = resolver.resolve("10.42.0.9")
    assert (before.mac, before.device_id, before.person_name, before.identity_source) == (
        A, "ipad", "Ada Pupil", "dhcp")
    clock[0] = T0 + 4 * H
    after = resolver.resolve("10.42.0.9")
    assert (after.mac, after.device_id, after.person_name, after.role.value if after.role else None) == (
        B, "laptop", "Cara Teacher", "staff")
    clock[0] = T0 + 16 * H
    assert resolver.resolve("10.42.0.9").identity_source is None  # no lease: only the address


def test_the_reloader_follows_the_evidence_generation(sessions: sessionmaker[Session]) -> None:
    clock = [T0 + H]
    resolver = IdentityResolver(now=lambda: clock[0], ttl=0, unknown_ttl=0)
    reloader = RegisterReloader(sessions, SITE, resolver)
    assert reloader.poll() and not reloader.poll()  # nothing moved: nothing reloaded
    record(sessions, [lease("10.42.0.10", A, T0, T0 + 12 * H, host="phone-a")])
    assert reloader.poll() and reloader.evidence_reloads == 2
    client = resolver.resolve("10.42.0.10")
    assert (client.mac, client.device_name, client.identity_source) == (A, "phone-a", "dhcp")


def test_import_and_show_from_the_command_line(
    config_file: Path, tmp_path: Path, sessions: sessionmaker[Session], capsys: pytest.CaptureFixture[str]
) -> None:
    windows = tmp_path / "leases.csv"
    windows.write_bytes(
        ('#TYPE Microsoft.Management.Infrastructure.CimInstance#root/Microsoft/Windows/DHCP/DhcpServerv4Lease\r\n'
         '"IPAddress","AddressState","ClientId","HostName","LeaseExpiryTime"\r\n'
         '"10.41.20.11","Active","02-41-00-00-20-11","ipad-11","25/11/2036 14:03:22"\r\n'
         '"10.41.20.12","Active","not-a-mac","x","25/11/2036 14:03:22"\r\n').encode("utf-16")
    )
    assert main(["identity", "leases", "import", str(windows), "--config", str(config_file)]) == 1
    out = capsys.readouterr()
    assert "line 4: ClientId 'not-a-mac' is not an Ethernet MAC address" in out.err
    assert "1 leases (windows)" in out.out and "1 new" in out.out
    assert main(["identity", "leases", "show", "10.41.20.11", "--config", str(config_file)]) == 0
    assert "02:41:00:00:20:11 ipad-11" in capsys.readouterr().out
    assert main(["identity", "leases", "show", "10.41.20.99", "--config", str(config_file)]) == 1
    (tmp_path / "bad.bin").write_bytes(b"\x00\x01binary")
    assert main(["identity", "leases", "import", str(tmp_path / "bad.bin"), "--config", str(config_file)]) == 2
    assert "not a text file" in capsys.readouterr().err


def test_a_large_file_is_merged_in_one_pass(sessions: sessionmaker[Session]) -> None:
    text = "".join(
        f"lease 10.{i // 65536}.{i // 256 % 256}.{i % 256} {{\n  starts 1 2026/11/23 08:00:00;\n"
        f"  ends 1 2026/11/23 20:00:00;\n  hardware ethernet 02:00:00:{i // 65536:02x}:{i // 256 % 256:02x}:"
        f"{i % 256:02x};\n}}\n"
        for i in range(3000)
    )
    parsed = parse_lease_file(text, "isc", tz=ZoneInfo("Europe/London"))
    with sessions.begin() as session:
        report = record_leases(session, SITE, parsed, origin="big", now=T0)
    assert report.new == 3000 and len(rows(sessions)) == 3000


def test_directory_import_from_the_command_line(
    config_file: Path, tmp_path: Path, sessions: sessionmaker[Session], capsys: pytest.CaptureFixture[str]
) -> None:
    export = tmp_path / "users.csv"
    export.write_bytes(
        "MIS ID,Preferred Forename,Legal Surname,Year,Registration Group,Email\n"
        "1001,Ada,Pupil,Year 5,5B,ada.pupil@kingswood.sch.uk\n1002,,,Year 5,5B,\n".encode("cp1252")
    )
    assert main(["directory", "import", str(export), "--config", str(config_file)]) == 0
    out = capsys.readouterr()
    assert "add      1001 Ada Pupil" in out.out and "1 to add" in out.out
    assert "line 3: needs an id and a name" in out.err
    with sessions() as session:
        assert list(session.scalars(select(Person))) == []  # a preview changes nothing
    assert main(["directory", "import", str(export), "--apply", "--config", str(config_file)]) == 0
    assert "applied import" in capsys.readouterr().out
    with sessions() as session:
        (person,) = session.scalars(select(Person))
        assert (person.external_id, person.name, person.year_group, person.groups) == ("1001", "Ada Pupil", 5, "5B")
    assert main(["directory", "imports", "--config", str(config_file)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[2] for line in listed] == ["applied", "preview"]
    (tmp_path / "other.csv").write_text("colour,size\nred,4\n")
    assert main(["directory", "import", str(tmp_path / "other.csv"), "--config", str(config_file)]) == 2
    assert "matches no directory export" in capsys.readouterr().err


def test_local_lease_times_are_not_guessed_while_the_policy_cannot_be_read(
    config_file: Path, tmp_path: Path, sessions: sessionmaker[Session], capsys: pytest.CaptureFixture[str]
) -> None:
    """A Windows export writes local times: read in a guessed zone they would shift every lease
    and name the wrong pupil for a device, so nothing is recorded until the policy says the zone."""
    windows = tmp_path / "leases.csv"
    windows.write_text(
        '"IPAddress","AddressState","ClientId","HostName","LeaseExpiryTime"\n'
        '"10.41.20.11","Active","02-41-00-00-20-11","ipad-11","25/11/2036 14:03:22"\n',
        encoding="utf-8",
    )
    (tmp_path / "policy.toml").write_text("[school\n", encoding="utf-8")
    assert main(["identity", "leases", "import", str(windows), "--config", str(config_file)]) == 2
    err = capsys.readouterr().err
    assert "time zone is unknown until the policy can be read" in err and "policy.toml" in err, err
    assert "no lease was recorded" in err
    assert main(["identity", "leases", "show", "10.41.20.11", "--config", str(config_file)]) == 1


def test_the_daemon_follows_lease_files_once_the_policy_gives_the_zone(
    config_file: Path, tmp_path: Path, sessions: sessionmaker[Session], capsys: pytest.CaptureFixture[str]
) -> None:
    """While the policy is unreadable the identity daemon follows no local-time lease file and its
    status says why (doctor and the network page show it); once the policy reads, it follows."""
    import threading
    import time

    from schoolgate.config import load_config
    from schoolgate.identity.daemon import run_identity_daemon
    from schoolgate.store.events import read_status

    good_policy = (tmp_path / "policy.toml").read_text(encoding="utf-8")
    (tmp_path / "policy.toml").write_text("[school\n", encoding="utf-8")
    windows = tmp_path / "leases.csv"
    windows.write_text(
        '"IPAddress","AddressState","ClientId","HostName","LeaseExpiryTime"\n'
        '"10.41.20.11","Active","02-41-00-00-20-11","ipad-11","25/11/2036 14:03:22"\n',
        encoding="utf-8",
    )
    with config_file.open("a", encoding="utf-8") as config:
        config.write(f'\n[identity]\nlease_files = ["windows:{windows}"]\nlease_poll_s = 1\n')
    stop = threading.Event()
    daemon = threading.Thread(target=run_identity_daemon, args=(load_config(config_file),), kwargs={"stop": stop})
    daemon.start()

    def lease_problems() -> list[str]:
        with sessions() as session:
            stats = read_status(session, SITE).get("identity", {}).get("stats", {})
        return [str(f.get("problem") or "") for f in stats.get("lease_files", [])]

    def until(condition: object, what: str) -> None:
        deadline = time.monotonic() + 60
        while not condition():  # type: ignore[operator]
            assert daemon.is_alive(), "the identity daemon ended"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    try:
        until(lease_problems, "the status row")
        [problem] = lease_problems()
        assert problem.startswith("not followed: the school's time zone is unknown"), problem
        assert main(["identity", "leases", "show", "10.41.20.11", "--config", str(config_file)]) == 1
        (tmp_path / "policy.toml").write_text(good_policy, encoding="utf-8")
        until(
            lambda: main(["identity", "leases", "show", "10.41.20.11", "--config", str(config_file)]) == 0,
            "the lease to be recorded",
        )
    finally:
        stop.set()
        daemon.join(timeout=60)
    assert "02:41:00:00:20:11 ipad-11" in capsys.readouterr().out
    assert lease_problems() == [""]


def test_lease_times_are_shown_and_asked_on_the_school_clock(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In July the school's clock is an hour ahead of UTC: a technician types and reads it."""
    windows = tmp_path / "leases.csv"
    windows.write_text(
        '"IPAddress","AddressState","ClientId","HostName","LeaseExpiryTime"\n'
        '"10.41.20.11","Active","02-41-00-00-20-11","ipad-11","25/07/2036 14:03:22"\n',
        encoding="utf-8",
    )
    assert main(["identity", "leases", "import", str(windows), "--config", str(config_file)]) == 0
    capsys.readouterr()
    show = ["identity", "leases", "show", "10.41.20.11", "--config", str(config_file)]
    assert main([*show, "--at", "2036-07-25T14:00"]) == 0
    assert "to 2036-07-25 14:03:22+01:00" in capsys.readouterr().out
    assert main([*show, "--at", "2036-07-25T14:30"]) == 1
    assert "no lease covers 10.41.20.11 at 2036-07-25 14:30:00+01:00" in capsys.readouterr().out
    assert main([*show, "--at", "2036-07-25T13:00:00+00:00"]) == 0
    assert main([*show, "--at", "half past two"]) == 2
    assert "is not a time" in capsys.readouterr().err
