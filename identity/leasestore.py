"""The school's DHCP leases in the database: one row per binding of a MAC to an address.

A lease file is a series of facts ("this address was given to this MAC from .. to .."), and
reading the same file twice, or a file that grew, must give the same rows. So each lease is
merged, in the file's order:

- the same MAC on the same address while its binding lasts (a renewal, or the same lease read
  again) extends that binding: its end becomes the file's, its last confirmation moves on;
- otherwise it starts a new binding, at the file's start time (or now, for a file that has
  none: Windows and dnsmasq); a lease the file records as released or expired ends it;
- a new binding ends any other MAC's binding on that address at its start: the address
  changed hands, and an event after that belongs to the new holder.

Every change bumps the `identity_evidence` generation once, in the caller's transaction, so
the daemons reload the leases within a second.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from schoolgate.identity.leaseformats import DhcpLease, LeaseFile
from schoolgate.store.models import DhcpLeaseRow
from schoolgate.store.overlay import bump_generation

EVIDENCE_GENERATION = "identity_evidence"
# A renewal may come a little after the lease ran out (a sleeping laptop): still the same binding.
RENEWAL_SLACK = timedelta(minutes=10)
_CHUNK = 500


@dataclass
class RecordReport:
    new: int = 0
    renewed: int = 0
    ended: int = 0  # bindings ended by a release, or by another MAC taking the address
    unchanged: int = 0
    generation: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.new or self.renewed or self.ended)

    def summary(self) -> str:
        return f"{self.new} new, {self.renewed} renewed, {self.ended} ended, {self.unchanged} unchanged"


def _same_binding(row: DhcpLeaseRow, at: datetime) -> bool:
    return row.starts <= at + RENEWAL_SLACK and (row.ends is None or at <= row.ends + RENEWAL_SLACK)


def _existing(session: Session, site: str, ips: Iterable[str]) -> dict[str, list[DhcpLeaseRow]]:
    wanted = sorted(set(ips))
    found: dict[str, list[DhcpLeaseRow]] = {ip: [] for ip in wanted}
    for index in range(0, len(wanted), _CHUNK):
        chunk = wanted[index : index + _CHUNK]
        rows = session.scalars(
            select(DhcpLeaseRow).where(DhcpLeaseRow.site == site, DhcpLeaseRow.ip.in_(chunk)).order_by(
                DhcpLeaseRow.starts, DhcpLeaseRow.id
            )
        )
        for row in rows:
            found[row.ip].append(row)
    return found


def record_leases(
    session: Session, site: str, leases: LeaseFile | Iterable[DhcpLease], *, origin: str, now: datetime,
    source: str | None = None,
) -> RecordReport:
    """Merge a lease file's leases into the store, in the caller's transaction."""
    items = list(leases.leases if isinstance(leases, LeaseFile) else leases)
    kind = source or (leases.format if isinstance(leases, LeaseFile) else "")
    report = RecordReport()
    by_ip = _existing(session, site, (lease.ip for lease in items))
    for lease in items:
        _merge(session, site, lease, by_ip[lease.ip], report, origin=origin, source=kind, now=now)
    session.flush()
    if report.changed:
        report.generation = bump_generation(session, site, EVIDENCE_GENERATION)
    return report


def _merge(
    session: Session, site: str, lease: DhcpLease, rows: list[DhcpLeaseRow], report: RecordReport, *,
    origin: str, source: str, now: datetime,
) -> None:
    at = lease.starts or now
    current = next((r for r in reversed(rows) if r.mac == lease.mac and _same_binding(r, at)), None)
    if current is not None and lease.starts is not None and lease.starts < current.renewed:
        report.unchanged += 1  # an older statement of a binding the store already has newer news of
        return
    if current is not None:
        changed = current.ends != lease.ends
        if changed:
            current.ends = lease.ends
            if lease.active:
                current.renewed = max(current.renewed, lease.starts or now)
        if lease.hostname and current.hostname != lease.hostname:
            current.hostname = lease.hostname
            changed = True
        current.last_seen = now
        if not changed:
            report.unchanged += 1
        elif lease.active:
            report.renewed += 1
        else:
            report.ended += 1
    else:
        row = DhcpLeaseRow(
            site=site, ip=lease.ip, mac=lease.mac, hostname=lease.hostname, starts=at, renewed=at,
            ends=lease.ends, source=source, origin=origin[:300], first_seen=now, last_seen=now,
        )
        session.add(row)
        rows.append(row)
        rows.sort(key=lambda r: r.starts)
        report.new += 1
    if not lease.active:
        return
    for other in rows:
        if other.mac != lease.mac and other.starts < at and (other.ends is None or other.ends > at):
            other.ends = at
            report.ended += 1


def leases_at(session: Session, site: str, ip: str, at: datetime) -> list[DhcpLeaseRow]:
    """The bindings of `ip` that cover `at` (normally one), newest first: for technicians and reviews."""
    rows = session.scalars(
        select(DhcpLeaseRow)
        .where(DhcpLeaseRow.site == site, DhcpLeaseRow.ip == ip, DhcpLeaseRow.starts <= at)
        .order_by(DhcpLeaseRow.starts.desc(), DhcpLeaseRow.id.desc())
    )
    return [row for row in rows if row.ends is None or at < row.ends]
