"""Loading the identity evidence (leases, Wi-Fi sessions, the directory) into an Evidence snapshot.

Read at the edge (daemon start, and whenever the `identity_evidence` or `policy_overlay`
generation moves), in one short read-only session, and swapped whole into the resolver.
Only what can still matter is loaded: leases and sessions that ended more than a day before
the daemon's "now" are history, kept in the database for reviews but not in memory.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from schoolgate.identity.evidence import Evidence, LeaseSpan, PersonInfo, SessionSpan
from schoolgate.identity.leasestore import EVIDENCE_GENERATION
from schoolgate.identity.register import parse_groups, parse_role
from schoolgate.store.models import DhcpLeaseRow, Person, RadiusSession
from schoolgate.store.overlay import read_generation

KEEP = timedelta(days=1)


def load_evidence(session: Session, site: str, now: datetime) -> Evidence:
    generation = read_generation(session, site, EVIDENCE_GENERATION)
    since = now - KEEP
    leases: dict[str, list[LeaseSpan]] = {}
    rows = session.execute(
        select(DhcpLeaseRow.ip, DhcpLeaseRow.mac, DhcpLeaseRow.hostname, DhcpLeaseRow.starts,
               DhcpLeaseRow.ends, DhcpLeaseRow.renewed)
        .where(DhcpLeaseRow.site == site, or_(DhcpLeaseRow.ends.is_(None), DhcpLeaseRow.ends > since))
    )
    for ip, mac, hostname, starts, ends, renewed in rows:
        leases.setdefault(ip, []).append(LeaseSpan(mac, hostname, starts, ends, renewed))
    sessions = [
        SessionSpan(username, mac, ip, started, updated, stopped)
        for username, mac, ip, started, updated, stopped in session.execute(
            select(RadiusSession.username, RadiusSession.mac, RadiusSession.ip, RadiusSession.started_at,
                   RadiusSession.updated_at, RadiusSession.stopped_at)
            .where(RadiusSession.site == site,
                   or_(RadiusSession.stopped_at.is_(None), RadiusSession.stopped_at > since))
        )
    ]
    return Evidence(site, leases=leases, sessions=sessions, people=people_by_username(session, site),
                    generation=generation)


def people_by_username(session: Session, site: str) -> dict[str, PersonInfo]:
    """The directory's people under every name a Wi-Fi sign-in may use: their id, their e-mail
    address, and the e-mail's local part when no one else shares it."""
    people = list(session.scalars(select(Person).where(Person.site == site, Person.active.is_(True))))
    local_parts = Counter((p.email or "").lower().split("@", 1)[0] for p in people if p.email)
    found: dict[str, PersonInfo] = {}
    for person in people:
        info = PersonInfo(
            external_id=person.external_id,
            name=person.name,
            role=parse_role(person.role),
            year_group=person.year_group,
            groups=parse_groups(person.groups),
        )
        keys = [person.external_id.lower()]
        if person.email:
            email = person.email.lower()
            keys.append(email)
            local = email.split("@", 1)[0]
            if local_parts[local] == 1:
                keys.append(local)
        for key in keys:
            found.setdefault(key, info)
    return found
