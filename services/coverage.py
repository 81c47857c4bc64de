"""The coverage watchdog: every device seen on the LAN, and whether schoolgate filters it.

The iPads of the 2021 inquest had no working filter while staff believed one was in place.
Here the evidence comes from three sides and is kept per device (`lan_devices`):

- the kernel (schoolgate.gateway.census): the neighbour table, the connections the gateway
  forwarded for the device, its connections to VPN ports;
- schoolgate's own events: the device's last DNS question through the appliance (blocked ones
  in full, allowed ones folded per minute: both are events), and circumvention attempts the
  gateway refused (DoH, DoT, QUIC, other resolvers);
- the device register (DHCP leases, imports, the console): its name, role and whether it
  trusts the school CA; and the school's own DHCP server's current leases (schoolgate.identity),
  which list a device the gateway has not seen.

A device that forwards traffic but has not asked schoolgate's DNS for `dns_silence_hours`
(after a short grace for a device that has just joined), or that talks to VPN ports, is "not
filtered", and the technician is told once; a device that comes back under the filter can be
told about again if it slips out later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from schoolgate.services.common import read_mark, write_mark
from schoolgate.services.selftest_devices import not_selftest
from schoolgate.store.models import AccessEvent, Device, DhcpLeaseRow, LanDevice

if TYPE_CHECKING:
    from schoolgate.gateway.census import Census

FILTERED = "filtered"
NOT_FILTERED = "not_filtered"
NEW = "new"  # forwarding for less than the grace period, no DNS yet
IDLE = "idle"
STATUSES = (NOT_FILTERED, NEW, FILTERED, IDLE)
CURSOR = "coverage_cursor"
BATCH = 20_000
KEEP = timedelta(days=30)  # a device not seen for this long drops off the page
CIRCUMVENTION_LABELS = {
    "gateway.redirect.dns": "DNS to other resolvers",
    "gateway.refuse.doh": "encrypted DNS (DoH)",
    "gateway.refuse.dot": "encrypted DNS (DoT)",
    "gateway.refuse.quic": "QUIC to watched services",
}
CIRCUMVENTION_RULES = tuple(CIRCUMVENTION_LABELS)


@dataclass(frozen=True)
class Settings:
    dns_silence: timedelta = timedelta(hours=24)
    grace: timedelta = timedelta(minutes=15)

    @classmethod
    def from_config(cls, config: Any) -> Settings:
        coverage = config.coverage
        return cls(timedelta(hours=coverage.dns_silence_hours), timedelta(minutes=coverage.grace_minutes))


def key_for(ip: str, mac: str | None) -> str:
    return f"mac:{mac.lower()}" if mac else f"ip:{ip}"


class _Rows:
    """The site's rows, found by MAC first (addresses change with DHCP), else by address."""

    def __init__(self, session: Session, site: str) -> None:
        self.session = session
        self.site = site
        rows = session.scalars(select(LanDevice).where(LanDevice.site == site)).all()
        self.by_key = {r.key: r for r in rows}
        self.by_ip: dict[str, LanDevice] = {}
        for row in sorted(rows, key=lambda r: r.last_seen):
            self.by_ip[row.ip] = row

    def get(self, ip: str, mac: str | None, at: datetime) -> LanDevice:
        row = self.by_key.get(key_for(ip, mac)) if mac else self.by_ip.get(ip)
        if row is None and mac:
            # Known so far only by its address: the MAC makes it the same device, now keyed by MAC.
            loose = self.by_key.get(key_for(ip, None))
            if loose is not None:
                del self.by_key[loose.key]
                loose.key, loose.mac = key_for(ip, mac), mac.lower()
                self.by_key[loose.key] = loose
                row = loose
        if row is None:
            row = LanDevice(site=self.site, key=key_for(ip, mac), ip=ip, mac=mac.lower() if mac else None,
                            first_seen=at, last_seen=at, forwarded_connections=0, vpn_detail="",
                            circumvention_detail="", status=NEW, reason="")
            self.session.add(row)
            self.by_key[row.key] = row
        if at >= row.last_seen:
            row.last_seen, row.ip = at, ip
            self.by_ip[ip] = row
        return row


def _tally(detail: str) -> dict[str, int]:
    """"A x3, B x1" -> {"A": 3, "B": 1} (the counts kept in a row's detail text)."""
    found: dict[str, int] = {}
    for part in detail.split(", "):
        name, sep, number = part.rpartition(" x")
        if sep and number.isdigit():
            found[name] = int(number)
    return found


def _later(current: datetime | None, seen: datetime) -> datetime:
    return seen if current is None or seen > current else current


def record_census(session: Session, site: str, census: Census) -> int:
    """Fold a census from the gateway into the table; the caller commits."""
    rows = _Rows(session, site)
    touched: set[str] = set()
    for ip, mac in census.neighbours.items():
        row = rows.get(ip, mac, census.at)
        row.neighbour_at = census.at
        touched.add(row.key)
    for seen in census.forwarding:
        row = rows.get(seen.ip, seen.mac, seen.last_at)
        row.forwarded_at = _later(row.forwarded_at, seen.last_at)
        if row.first_forwarded_at is None or seen.last_at < row.first_forwarded_at:
            row.first_forwarded_at = seen.last_at  # the earliest this appliance knows of
        row.forwarded_connections = seen.connections
        touched.add(row.key)
    vpn: dict[str, list[str]] = {}
    for use in census.vpn:
        row = rows.get(use.ip, use.mac, use.last_at)
        row.vpn_at = _later(row.vpn_at, use.last_at)
        vpn.setdefault(row.key, []).append(f"{use.label} x{use.connections}")
        touched.add(row.key)
    for key, labels in vpn.items():
        rows.by_key[key].vpn_detail = ", ".join(sorted(labels))[:200]
    session.flush()
    return len(touched)


def scan_events(session: Session, site: str, now: datetime, *, batch: int = BATCH) -> int:
    """Fold the events since the cursor into the table: last DNS through schoolgate, and
    circumvention the gateway refused. One batch of ids per call; the caller commits."""
    cursor = read_mark(session, site, CURSOR, lock=True)
    last = session.scalar(select(func.max(AccessEvent.id)).where(AccessEvent.id > cursor))
    if last is None:
        write_mark(session, site, CURSOR, cursor, now)
        return 0
    upper = min(int(last), cursor + batch)
    in_batch = [AccessEvent.site == site, AccessEvent.id > cursor, AccessEvent.id <= upper,
                not_selftest(AccessEvent.device_id)]
    rows = _Rows(session, site)
    asked = session.execute(
        select(AccessEvent.client_ip, AccessEvent.mac, func.max(AccessEvent.ts))
        .where(*in_batch, AccessEvent.source == "dns")
        .group_by(AccessEvent.client_ip, AccessEvent.mac)
    ).all()
    for ip, mac, ts in asked:
        row = rows.get(str(ip), mac, ts)
        row.dns_at = _later(row.dns_at, ts)
    attempts = session.execute(
        select(AccessEvent.client_ip, AccessEvent.mac, AccessEvent.rule_id, func.max(AccessEvent.ts),
               func.sum(AccessEvent.count))  # a row may hold a burst's repeated attempts
        .where(*in_batch, AccessEvent.rule_id.in_(CIRCUMVENTION_RULES))
        .group_by(AccessEvent.client_ip, AccessEvent.mac, AccessEvent.rule_id)
    ).all()
    for ip, mac, rule_id, ts, count in attempts:
        row = rows.get(str(ip), mac, ts)
        row.circumvention_at = _later(row.circumvention_at, ts)
        tally = _tally(row.circumvention_detail)
        label = CIRCUMVENTION_LABELS.get(str(rule_id), str(rule_id))
        tally[label] = tally.get(label, 0) + int(count)
        row.circumvention_detail = ", ".join(f"{name} x{n}" for name, n in sorted(tally.items()))[:200]
    write_mark(session, site, CURSOR, upper, now)
    session.flush()
    return upper - cursor


def record_ca_trust(session: Session, site: str, seen: dict[str, Any]) -> int:
    """What the proxy learnt (its status row's `ca_trust`: ip -> [trusted, when]); the caller commits."""
    rows = _Rows(session, site)
    changed = 0
    for ip, value in seen.items():
        row = rows.by_ip.get(str(ip))
        if row is None or not isinstance(value, list) or not value or not isinstance(value[0], bool):
            continue
        if row.ca_trusted is not value[0]:
            row.ca_trusted = value[0]
            changed += 1
    session.flush()
    return changed


def verdict(row: LanDevice, now: datetime, settings: Settings) -> tuple[str, str]:
    """(status, reason) for one device at `now`."""
    since = now - settings.dns_silence
    if row.vpn_at is not None and row.vpn_at >= since:
        return NOT_FILTERED, f"connects to VPN ports: {row.vpn_detail}"
    forwarding = row.forwarded_at is not None and row.forwarded_at >= since
    asked = row.dns_at is not None and row.dns_at >= since
    if forwarding and not asked:
        began = row.first_forwarded_at or row.forwarded_at
        if began is not None and now - began < settings.grace:
            return NEW, "joined the network moments ago and has not asked schoolgate's DNS yet"
        hours = int(settings.dns_silence.total_seconds() // 3600)
        if row.dns_at is None:
            return NOT_FILTERED, "sends traffic through the gateway but has never asked schoolgate's DNS"
        return NOT_FILTERED, f"sends traffic through the gateway but has not asked schoolgate's DNS for {hours} hours"
    if asked:
        return FILTERED, "asks schoolgate's DNS"
    return IDLE, "not active in the last day"


def classify(session: Session, site: str, now: datetime, settings: Settings) -> list[LanDevice]:
    """Bring every device's status up to date; returns the ones newly found not filtered
    (not yet told about). The caller commits."""
    due: list[LanDevice] = []
    rows = session.scalars(
        select(LanDevice).where(LanDevice.site == site, LanDevice.last_seen >= now - KEEP)
    ).all()
    for row in rows:
        status, reason = verdict(row, now, settings)
        if status != row.status:
            row.status, row.status_since = status, now
            if status != NOT_FILTERED:
                row.notified_at = None  # back under the filter: a later slip is news again
        row.reason = reason[:300]
        if status == NOT_FILTERED and row.notified_at is None:
            due.append(row)
    session.flush()
    return due


def mark_notified(session: Session, ids: Sequence[int], now: datetime) -> None:
    for row_id in ids:
        row = session.get(LanDevice, row_id)
        if row is not None:
            row.notified_at = now
    session.flush()


@dataclass(frozen=True)
class CoverageLine:
    """One device on the coverage page."""

    key: str
    ip: str
    mac: str | None
    name: str  # from the register, or ""
    device_id: str | None
    role: str  # the role the policy gives it
    status: str
    reason: str
    last_seen: datetime
    dns_at: datetime | None
    forwarded_at: datetime | None
    neighbour_at: datetime | None
    vpn_detail: str
    circumvention_detail: str
    trusts_school_ca: bool | None  # the register's flag (None: not registered)
    ca_seen: bool | None  # what the proxy learnt
    notified_at: datetime | None
    registered: bool


def coverage_lines(session: Session, site: str, now: datetime, policy: Any = None) -> list[CoverageLine]:
    """Every device seen in the last 30 days and every registered device with a recent lease,
    worst first: not filtered, new, filtered, idle."""
    from schoolgate.identity.register import load_register
    from schoolgate.identity.resolver import IdentityResolver
    from schoolgate.services.selftest_devices import KIND as SELFTEST_KIND

    identities = IdentityResolver(load_register(session, site))
    devices = session.scalars(select(Device).where(Device.site == site, Device.kind != SELFTEST_KIND)).all()
    by_mac = {d.mac.lower(): d for d in devices if d.mac}
    by_ip = {d.ip: d for d in devices if d.ip}
    lines: list[CoverageLine] = []
    seen_devices: set[int] = set()
    rows = session.scalars(
        select(LanDevice).where(LanDevice.site == site, LanDevice.last_seen >= now - KEEP)
    ).all()
    for row in rows:
        device = (by_mac.get(row.mac) if row.mac else None) or by_ip.get(row.ip)
        if device is not None:
            seen_devices.add(device.id)
        lines.append(CoverageLine(
            key=row.key, ip=row.ip, mac=row.mac, name=device.name if device else "",
            device_id=device.device_id if device else None,
            role=_role(policy, identities, row.ip, row.mac, now),
            status=row.status, reason=row.reason, last_seen=row.last_seen, dns_at=row.dns_at,
            forwarded_at=row.forwarded_at, neighbour_at=row.neighbour_at, vpn_detail=row.vpn_detail,
            circumvention_detail=row.circumvention_detail,
            trusts_school_ca=device.trusts_school_ca if device else None, ca_seen=row.ca_trusted,
            notified_at=row.notified_at, registered=device is not None,
        ))
    for device in devices:
        if device.id in seen_devices or device.last_seen is None or device.last_seen < now - KEEP:
            continue
        lines.append(CoverageLine(
            key=f"device:{device.device_id}", ip=device.ip or "", mac=device.mac, name=device.name,
            device_id=device.device_id, role=_role(policy, identities, device.ip or "", device.mac, now),
            status=IDLE, reason="has a DHCP lease but the gateway has not seen it", last_seen=device.last_seen,
            dns_at=None, forwarded_at=None, neighbour_at=None, vpn_detail="", circumvention_detail="",
            trusts_school_ca=device.trusts_school_ca, ca_seen=None, notified_at=None, registered=True,
        ))
    lines.extend(_leased_unseen(session, site, now, lines, policy=policy, identities=identities))
    rank = {status: index for index, status in enumerate(STATUSES)}
    lines.sort(key=lambda line: (rank.get(line.status, len(rank)), -line.last_seen.timestamp()))
    return lines


def _leased_unseen(session: Session, site: str, now: datetime, lines: Sequence[CoverageLine], *, policy: Any,
                   identities: Any) -> list[CoverageLine]:
    """Devices holding a lease from the school's own DHCP server now (schoolgate.identity's
    lease store) that neither the gateway nor the register has put on the page: in bridge or
    DNS-only mode, or behind another router, these may be the only trace of a device."""
    known_macs = {line.mac.lower() for line in lines if line.mac}
    known_ips = {line.ip for line in lines if line.ip}
    current = session.scalars(
        select(DhcpLeaseRow)
        .where(DhcpLeaseRow.site == site, DhcpLeaseRow.starts <= now,
               or_(DhcpLeaseRow.ends.is_(None), DhcpLeaseRow.ends > now))
        .order_by(DhcpLeaseRow.renewed.desc(), DhcpLeaseRow.id.desc())
    ).all()
    found: list[CoverageLine] = []
    for lease in current:
        mac = lease.mac.lower()
        if mac in known_macs or lease.ip in known_ips:
            continue
        known_macs.add(mac)
        known_ips.add(lease.ip)
        found.append(CoverageLine(
            key=f"lease:{mac}", ip=lease.ip, mac=mac, name=lease.hostname or "", device_id=None,
            role=_role(policy, identities, lease.ip, mac, now), status=IDLE,
            reason=f"holds a lease from the school's DHCP server ({lease.source}) but the gateway has not seen it",
            last_seen=lease.renewed, dns_at=None, forwarded_at=None, neighbour_at=None, vpn_detail="",
            circumvention_detail="", trusts_school_ca=None, ca_seen=None, notified_at=None, registered=False,
        ))
    return found


def _role(policy: Any, identities: Any, ip: str, mac: str | None, now: datetime) -> str:
    """The role the policy gives the device (its register role, a ban, or its network's)."""
    client = identities.resolve(ip, mac)
    if policy is None:
        return client.role.value if client.role is not None else ""
    from schoolgate.policy import Target, decide

    try:
        return str(decide(policy, client, Target(host="coverage.schoolgate.invalid"), now).role.value)
    except Exception:  # an address no network covers: the policy's own fallback applies
        return client.role.value if client.role is not None else ""


def counts(session: Session, site: str, now: datetime) -> dict[str, int]:
    """How many devices are in each state (the dashboard, the review pack, the metrics)."""
    rows = session.execute(
        select(LanDevice.status, func.count())
        .where(LanDevice.site == site, LanDevice.last_seen >= now - KEEP)
        .group_by(LanDevice.status)
    ).all()
    found = dict.fromkeys(STATUSES, 0)
    found.update({str(status): int(count) for status, count in rows})
    return found


def not_filtered_since(session: Session, site: str, since: datetime) -> int:
    """Devices found not filtered at any time since `since` (still, or since fixed)."""
    return int(session.scalar(
        select(func.count()).select_from(LanDevice).where(
            LanDevice.site == site,
            or_(LanDevice.status == NOT_FILTERED, LanDevice.notified_at >= since),
            LanDevice.last_seen >= since,
        )
    ) or 0)
