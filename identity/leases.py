"""Importing a dnsmasq DHCP lease file into the device register.

dnsmasq writes one lease per line: ``expiry mac ip hostname client-id`` (expiry in Unix
seconds, 0 for an infinite lease; ``*`` for an unknown hostname or client id). After a
``duid SERVER-DUID`` line come the DHCPv6 leases, whose second field is an IAID rather
than a MAC: they cannot be tied to a device by MAC, so they are reported and skipped.

New MACs become new devices named after the hostname; known MACs get their address and
last-seen time updated. Every change is audited and the overlay generation is bumped
once, all in the caller's transaction. A bad line is reported with its number and skipped;
the good lines are imported all the same.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from schoolgate.identity.leaseformats import LeaseProblem
from schoolgate.identity.macs import normalise_mac
from schoolgate.store import audit
from schoolgate.store.models import Device
from schoolgate.store.overlay import POLICY_OVERLAY, bump_generation

_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*$")
MAX_NAME = 100  # Device.device_id's length


@dataclass(frozen=True)
class Lease:
    line: int
    expiry: datetime | None  # None: infinite
    mac: str
    ip: str
    hostname: str | None
    client_id: str | None


@dataclass
class ParsedLeases:
    leases: list[Lease] = field(default_factory=list)
    problems: list[LeaseProblem] = field(default_factory=list)
    ipv6_skipped: int = 0


def parse_leases(text: str | Iterable[str]) -> ParsedLeases:
    """Parse a lease file; bad lines become problems, never exceptions."""
    lines = text.splitlines() if isinstance(text, str) else list(text)
    result = ParsedLeases()
    in_v6 = False
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if fields[0] == "duid":
            in_v6 = True
            continue
        problem = _parse_line(number, line, fields, in_v6, result)
        if problem is not None:
            result.problems.append(LeaseProblem(number, line, problem))
    return result


def _parse_line(number: int, line: str, fields: list[str], in_v6: bool, out: ParsedLeases) -> str | None:
    if len(fields) < 4 or len(fields) > 5:
        return f"expected 'expiry mac ip hostname [client-id]', found {len(fields)} fields"
    expiry_text, mac_text, ip_text, host_text = fields[:4]
    client_id = fields[4] if len(fields) == 5 and fields[4] != "*" else None
    if not expiry_text.isdigit():
        return f"expiry {expiry_text!r} is not a number of seconds"
    try:
        address = ipaddress.ip_address(ip_text)
    except ValueError:
        return f"{ip_text!r} is not an IP address"
    if isinstance(address, ipaddress.IPv6Address):
        if in_v6 or mac_text.isdigit():
            out.ipv6_skipped += 1  # an IAID, not a MAC: nothing to tie it to a device by
            return None
        return "an IPv6 address in an IPv4 lease line"
    mac = normalise_mac(mac_text)
    if mac is None:
        return f"{mac_text!r} is not an Ethernet MAC address"
    hostname: str | None = None
    if host_text != "*":
        if not _HOSTNAME.match(host_text) or len(host_text) > MAX_NAME:
            return f"hostname {host_text!r} is not a valid host name"
        hostname = host_text
    seconds = int(expiry_text)
    expiry = None if seconds == 0 else datetime.fromtimestamp(seconds, UTC)
    out.leases.append(Lease(number, expiry, mac, str(address), hostname, client_id))
    return None


@dataclass
class ImportReport:
    created: list[str] = field(default_factory=list)  # device ids
    updated: list[str] = field(default_factory=list)
    unchanged: int = 0
    expired: int = 0
    ipv6_skipped: int = 0
    problems: list[LeaseProblem] = field(default_factory=list)
    generation: int | None = None

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated)

    def summary(self) -> str:
        parts = [
            f"{len(self.created)} new",
            f"{len(self.updated)} updated",
            f"{self.unchanged} unchanged",
        ]
        if self.expired:
            parts.append(f"{self.expired} expired leases skipped")
        if self.ipv6_skipped:
            parts.append(f"{self.ipv6_skipped} DHCPv6 leases skipped (no MAC)")
        if self.problems:
            parts.append(f"{len(self.problems)} bad lines skipped")
        return ", ".join(parts)


def _unique_device_id(wanted: str, mac: str, taken: set[str]) -> str:
    base = wanted[:MAX_NAME]
    if base not in taken:
        return base
    suffix = "-" + mac.replace(":", "")[-6:]
    candidate = base[: MAX_NAME - len(suffix)] + suffix
    n = 2
    while candidate in taken:
        tail = f"{suffix}-{n}"
        candidate = base[: MAX_NAME - len(tail)] + tail
        n += 1
    return candidate


def import_leases(
    session: Session,
    site: str,
    text: str | Iterable[str],
    *,
    actor: str,
    now: datetime,
    include_expired: bool = False,
) -> ImportReport:
    """Create or update devices from a lease file, in the caller's transaction."""
    parsed = parse_leases(text)
    report = ImportReport(problems=list(parsed.problems), ipv6_skipped=parsed.ipv6_skipped)
    devices = list(session.scalars(select(Device).where(Device.site == site).order_by(Device.id)))
    by_mac: dict[str, Device] = {}
    for device in devices:
        mac = normalise_mac(device.mac) if device.mac else None
        if mac:
            by_mac.setdefault(mac, device)
    by_ip = {d.ip: d for d in devices if d.ip}
    taken = {d.device_id for d in devices}

    # The last line for a MAC wins (dnsmasq keeps one lease per client; a hand-edited file may not).
    latest: dict[str, Lease] = {}
    for lease in parsed.leases:
        if lease.expiry is not None and lease.expiry < now and not include_expired:
            report.expired += 1
            continue
        latest[lease.mac] = lease

    for lease in latest.values():
        # The address now belongs to this MAC: take it from any other device that had it.
        holder = by_ip.get(lease.ip)
        if holder is not None and (normalise_mac(holder.mac or "") != lease.mac):
            old = holder.ip
            holder.ip = None
            by_ip.pop(lease.ip, None)
            audit.record(
                session,
                site=site,
                actor=actor,
                action="device.update",
                object_type="device",
                object_id=holder.device_id,
                detail={"source": "dhcp-leases", "line": lease.line, "ip": [old, None]},
                at=now,
            )
            if holder.device_id not in report.updated:
                report.updated.append(holder.device_id)
        known = by_mac.get(lease.mac)
        if known is None:
            device_id = _unique_device_id(lease.hostname or "mac-" + lease.mac.replace(":", ""), lease.mac, taken)
            taken.add(device_id)
            device = Device(
                site=site,
                device_id=device_id,
                name=lease.hostname or lease.mac,
                mac=lease.mac,
                ip=lease.ip,
                kind="",
                notes="added from the DHCP leases",
                last_seen=now,
                created_at=now,
            )
            session.add(device)
            by_mac[lease.mac] = device
            by_ip[lease.ip] = device
            report.created.append(device_id)
            audit.record(
                session,
                site=site,
                actor=actor,
                action="device.create",
                object_type="device",
                object_id=device_id,
                detail={
                    "source": "dhcp-leases",
                    "line": lease.line,
                    "name": device.name,
                    "mac": lease.mac,
                    "ip": lease.ip,
                },
                at=now,
            )
            continue
        device = known
        changes: dict[str, list[str | None]] = {}
        if device.ip != lease.ip:
            changes["ip"] = [device.ip, lease.ip]
            if device.ip:
                by_ip.pop(device.ip, None)
            device.ip = lease.ip
            by_ip[lease.ip] = device
        device.last_seen = now
        if changes:
            audit.record(
                session,
                site=site,
                actor=actor,
                action="device.update",
                object_type="device",
                object_id=device.device_id,
                detail={"source": "dhcp-leases", "line": lease.line, **changes},
                at=now,
            )
            if device.device_id not in report.updated:
                report.updated.append(device.device_id)
        elif device.device_id not in report.updated:
            report.unchanged += 1
    session.flush()
    if report.changed:
        report.generation = bump_generation(session, site, POLICY_OVERLAY)
    return report
