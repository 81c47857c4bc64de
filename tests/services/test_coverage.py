"""The coverage watchdog: the kernel's census and schoolgate's events per device, the verdict,
and the technician told once per device."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from schoolgate.gateway.census import Census, Forwarding, VpnUse
from schoolgate.services import coverage
from schoolgate.store.models import AccessEvent, LanDevice

SITE = "testschool"
T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
SETTINGS = coverage.Settings(dns_silence=timedelta(hours=24), grace=timedelta(minutes=15))
A = ("10.41.20.11", "02:41:00:00:20:11")  # asks schoolgate's DNS
B = ("10.41.20.12", "02:41:00:00:20:12")  # forwards, never asks: its own resolver
C = ("10.41.20.13", "02:41:00:00:20:13")  # talks to a VPN port
D = ("10.41.20.14", "02:41:00:00:20:14")  # has only just joined


def dns_event(session: Session, ip: str, mac: str | None, at: datetime, **extra: object) -> None:
    values: dict[str, object] = dict(site=SITE, ts=at, source="dns", client_ip=ip, mac=mac, role="pupil",
                                     host="www.bbc.co.uk", verdict="allow", rule_id="default", flags="", count=3)
    values.update(extra)
    session.add(AccessEvent(**values))
    session.flush()


def census(at: datetime, *forwarding: tuple[str, str, datetime], vpn: tuple[str, str] | None = None) -> Census:
    return Census(
        at=at,
        forwarding=[Forwarding(ip, mac, 5, when) for ip, mac, when in forwarding],
        vpn=[VpnUse(vpn[0], vpn[1], "udp", 1194, 3, at)] if vpn else [],
        neighbours={ip: mac for ip, mac, _ in forwarding},
    )


def statuses(session: Session) -> dict[str, tuple[str, str]]:
    return {row.ip: (row.status, row.reason) for row in session.scalars(select(LanDevice))}


def test_each_device_gets_the_verdict_its_evidence_supports(session: Session) -> None:
    now = T0 + timedelta(hours=2)
    coverage.record_census(session, SITE, census(T0, (*A, T0), (*B, T0), (*C, T0)))
    coverage.record_census(session, SITE, census(now, (*A, now), (*B, now), (*D, now - timedelta(minutes=5)),
                                                  vpn=C))
    dns_event(session, *A, now - timedelta(minutes=3))
    dns_event(session, A[0], None, now - timedelta(minutes=1))  # no MAC in the event: found by address
    # The self-test's own questions from its probe address are not a device's.
    dns_event(session, "10.41.23.254", None, now, device_id="schoolgate-selftest-pupils")
    assert coverage.scan_events(session, SITE, now) == 3
    due = coverage.classify(session, SITE, now, SETTINGS)
    state = statuses(session)
    assert state[A[0]][0] == coverage.FILTERED
    assert state[B[0]] == (coverage.NOT_FILTERED,
                           "sends traffic through the gateway but has never asked schoolgate's DNS")
    assert state[C[0]] == (coverage.NOT_FILTERED, "connects to VPN ports: OpenVPN (udp/1194) x3")
    assert state[D[0]][0] == coverage.NEW
    assert "10.41.23.254" not in state
    assert sorted(row.ip for row in due) == [B[0], C[0]]
    row_a = session.scalars(select(LanDevice).where(LanDevice.ip == A[0])).one()
    assert row_a.dns_at == now - timedelta(minutes=1) and row_a.key == f"mac:{A[1]}"


def test_the_technician_is_told_once_and_again_only_after_a_recovery(session: Session) -> None:
    now = T0 + timedelta(hours=1)
    coverage.record_census(session, SITE, census(T0, (*B, T0)))
    coverage.record_census(session, SITE, census(now, (*B, now)))
    (due,) = coverage.classify(session, SITE, now, SETTINGS)
    coverage.mark_notified(session, [due.id], now)
    assert coverage.classify(session, SITE, now + timedelta(minutes=1), SETTINGS) == []
    # Its DNS is fixed: it asks schoolgate now.
    later = now + timedelta(hours=2)
    dns_event(session, *B, later)
    coverage.scan_events(session, SITE, later)
    assert coverage.classify(session, SITE, later, SETTINGS) == []
    assert statuses(session)[B[0]][0] == coverage.FILTERED
    # A day and more without schoolgate's DNS while still forwarding: news again.
    much_later = later + timedelta(hours=25)
    coverage.record_census(session, SITE, census(much_later, (*B, much_later)))
    (again,) = coverage.classify(session, SITE, much_later, SETTINGS)
    assert again.ip == B[0] and "for 24 hours" in again.reason


def test_circumvention_the_gateway_refused_is_counted_per_device(session: Session) -> None:
    now = T0 + timedelta(minutes=30)
    coverage.record_census(session, SITE, census(now, (*A, now)))
    # A row may hold a burst's repeated attempts (its count): two refusals folded into one row.
    for rule, count in (("gateway.refuse.doh", 2), ("gateway.redirect.dns", 1)):
        dns_event(session, *A, now, source="gateway", rule_id=rule, verdict="block", host="1.1.1.1", count=count)
    coverage.scan_events(session, SITE, now)
    dns_event(session, *A, now, source="gateway", rule_id="gateway.refuse.doh", verdict="block", host="1.1.1.1",
              count=1)
    coverage.scan_events(session, SITE, now)
    row = session.scalars(select(LanDevice).where(LanDevice.ip == A[0])).one()
    assert row.circumvention_detail == "DNS to other resolvers x1, encrypted DNS (DoH) x3"


def test_the_page_lines_join_the_register_and_list_leased_devices_never_seen(session: Session) -> None:
    from schoolgate.store.models import Device

    now = T0 + timedelta(hours=1)
    session.add(Device(site=SITE, device_id="IPAD-11", name="Class iPad 11", mac=A[1], ip=None, kind="ipad",
                       trusts_school_ca=True))
    session.add(Device(site=SITE, device_id="LAPTOP-9", name="Laptop 9", mac="02:41:00:00:20:99", ip="10.41.20.99",
                       kind="laptop", last_seen=now - timedelta(hours=2)))
    coverage.record_census(session, SITE, census(T0, (*A, T0), (*B, T0)))
    coverage.classify(session, SITE, now, SETTINGS)
    lines = {line.ip: line for line in coverage.coverage_lines(session, SITE, now)}
    assert lines[A[0]].name == "Class iPad 11" and lines[A[0]].trusts_school_ca is True
    assert lines[B[0]].registered is False and lines[B[0]].status == coverage.NOT_FILTERED
    assert lines["10.41.20.99"].reason == "has a DHCP lease but the gateway has not seen it"
    # Neither has asked schoolgate's DNS: both not filtered, listed before the leased laptop.
    assert [line.status for line in lines.values()] == [coverage.NOT_FILTERED] * 2 + [coverage.IDLE]
    assert coverage.counts(session, SITE, now)[coverage.NOT_FILTERED] == 2


def test_a_device_with_a_lease_from_the_schools_dhcp_server_is_listed_once(session: Session) -> None:
    """The school's own DHCP server's leases (as the identity service stores them) put a device
    on the page that the gateway never saw; a device already there is not listed twice, and a
    lease that has ended lists nothing."""
    from schoolgate.identity.leaseformats import parse_lease_file
    from schoolgate.identity.leasestore import record_leases

    now = T0 + timedelta(hours=1)
    leases = parse_lease_file(
        f"""
lease 10.41.20.50 {{
  starts 1 2026/11/23 07:30:00; ends 1 2026/11/23 15:30:00;
  binding state active; hardware ethernet 02:41:00:00:20:50; client-hostname "Year5-Chromebook";
}}
lease {A[0]} {{
  starts 1 2026/11/23 07:00:00; ends 1 2026/11/23 15:00:00;
  binding state active; hardware ethernet {A[1]}; client-hostname "seen-by-the-gateway";
}}
lease 10.41.20.51 {{
  starts 1 2026/11/23 06:00:00; ends 1 2026/11/23 07:00:00;
  binding state free; hardware ethernet 02:41:00:00:20:51; client-hostname "gone-home";
}}
""",
        "isc",
        tz=UTC,
    )
    assert len(leases.leases) == 3, leases.problems
    record_leases(session, SITE, leases, origin="dhcpd.leases", now=now)
    coverage.record_census(session, SITE, census(T0, (*A, T0)))
    coverage.classify(session, SITE, now, SETTINGS)
    lines = coverage.coverage_lines(session, SITE, now)
    by_ip = {line.ip: line for line in lines}
    assert sorted(by_ip) == [A[0], "10.41.20.50"] and len(lines) == 2
    leased = by_ip["10.41.20.50"]
    assert (leased.name, leased.mac, leased.status, leased.registered) == (
        "Year5-Chromebook", "02:41:00:00:20:50", coverage.IDLE, False)
    assert "lease from the school's DHCP server (isc)" in leased.reason
    assert by_ip[A[0]].key == f"mac:{A[1]}"  # the gateway's line, not a second one from the lease
