"""Wi-Fi sessions in the database, from the controller's accounting records.

A session is keyed by the controller and its Acct-Session-Id, so a retransmitted packet, or
records that arrive out of order, change nothing twice. A Start or an Interim-Update opens or
refreshes it (an Interim-Update for a session whose Start was lost opens it too); a Stop ends
it; Accounting-On or -Off from a controller ends every session it had open (it restarted, so
none of them is still running).

The daemons reload sessions when the `identity_evidence` generation moves. It moves when a
session starts, stops, or changes user, device or address, and when an Interim-Update refreshes
a session not refreshed for `REFRESH_EVERY`: enough to keep the daemons' copy fresh (a session
counts as over six hours after its last refresh) without a reload for every Interim-Update.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from schoolgate.identity.leasestore import EVIDENCE_GENERATION
from schoolgate.identity.radius import AccountingRecord
from schoolgate.store.models import RadiusSession
from schoolgate.store.overlay import bump_generation

REFRESH_EVERY = timedelta(minutes=15)


@dataclass
class SessionReport:
    started: int = 0
    refreshed: int = 0
    stopped: int = 0
    generation: int | None = None


def record_accounting(session: Session, site: str, records: Iterable[AccountingRecord]) -> SessionReport:
    """Apply accounting records in order, in the caller's transaction."""
    report = SessionReport()
    material = False
    items = list(records)
    known = _known(session, site, items)
    for record in items:
        if record.status in ("on", "off"):
            ended = session.execute(
                update(RadiusSession)
                .where(RadiusSession.site == site, RadiusSession.nas == record.nas, RadiusSession.stopped_at.is_(None),
                       RadiusSession.started_at <= record.at)
                .values(stopped_at=record.at, stop_cause="NAS-Reboot")
                .execution_options(synchronize_session=False)
            )
            count = int(getattr(ended, "rowcount", 0) or 0)
            report.stopped += count
            material |= count > 0
            continue
        material |= _apply(session, site, record, report, known)
    session.flush()
    if material:
        report.generation = bump_generation(session, site, EVIDENCE_GENERATION)
    return report


def _known(session: Session, site: str, records: list[AccountingRecord]) -> dict[tuple[str, str], RadiusSession]:
    """The stored sessions a batch of records is about, in one query."""
    ids = sorted({r.session_id for r in records if r.status not in ("on", "off")})
    found: dict[tuple[str, str], RadiusSession] = {}
    for start in range(0, len(ids), 500):
        rows = session.scalars(select(RadiusSession).where(RadiusSession.site == site,
                                                           RadiusSession.session_id.in_(ids[start : start + 500])))
        found.update({(row.nas, row.session_id): row for row in rows})
    return found


def _apply(session: Session, site: str, record: AccountingRecord, report: SessionReport,
           known: dict[tuple[str, str], RadiusSession]) -> bool:
    row = known.get((record.nas, record.session_id))
    if row is None:
        row = RadiusSession(
            site=site, nas=record.nas, session_id=record.session_id, username=record.username, mac=record.mac,
            ip=record.ip, started_at=record.at, updated_at=record.at,
            stopped_at=record.at if record.status == "stop" else None,
            stop_cause=record.terminate_cause if record.status == "stop" else "",
        )
        session.add(row)
        known[(record.nas, record.session_id)] = row
        if record.status == "stop":
            report.stopped += 1
        else:
            report.started += 1
        return True
    material = False
    for name in ("username", "mac", "ip"):
        value = getattr(record, name)
        if value and getattr(row, name) != value:
            setattr(row, name, value)
            material = True
    if record.at < row.started_at:
        row.started_at = record.at
        material = True
    if record.status == "stop":
        if row.stopped_at is None or row.stopped_at != record.at:
            row.stopped_at = record.at
            row.stop_cause = record.terminate_cause
            report.stopped += 1
            material = True
    elif record.at > row.updated_at:
        material |= record.at - row.updated_at >= REFRESH_EVERY
        row.updated_at = record.at
        if row.stopped_at is not None and row.stopped_at < record.at:
            row.stopped_at = None  # a record after the Stop: the Stop was early or out of order
            material = True
        report.refreshed += 1
    return material


def sessions_at(session: Session, site: str, at: datetime, *, ip: str | None = None,
                mac: str | None = None) -> list[RadiusSession]:
    """The sessions open at `at` (on an address or a device), for technicians and reviews."""
    query = select(RadiusSession).where(RadiusSession.site == site, RadiusSession.started_at <= at)
    if ip:
        query = query.where(RadiusSession.ip == ip)
    if mac:
        query = query.where(RadiusSession.mac == mac)
    rows = session.scalars(query.order_by(RadiusSession.updated_at.desc()))
    return [row for row in rows if row.stopped_at is None or at < row.stopped_at]
