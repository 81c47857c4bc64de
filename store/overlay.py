"""The dynamic part of the policy (exceptions, bans, site blocks) and the change counters.

Anything a console user changes at run time lives in the database, not in policy.toml.
``load_overlay`` reads it for one site as the policy engine's own value types. Each
service that changes exceptions, bans, site blocks or devices calls ``bump_generation``
in the same transaction; the daemons poll ``read_generation`` (one row) every second and
reload the overlay and the device register when the number moves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from schoolgate.policy.types import Ban, ExceptionScope, PolicyException, Role, SiteBlock
from schoolgate.store.coltypes import utcnow
from schoolgate.store.models import BanRow, Generation, PolicyExceptionRow, SiteBlockRow

log = logging.getLogger(__name__)

POLICY_OVERLAY = "policy_overlay"  # exceptions, bans, site blocks and the device register


@dataclass(frozen=True, slots=True)
class Overlay:
    """What the database adds to the compiled policy for one site, at one generation."""

    site: str
    generation: int
    exceptions: tuple[PolicyException, ...] = ()
    bans: tuple[Ban, ...] = ()
    site_blocks: tuple[SiteBlock, ...] = ()
    skipped: tuple[str, ...] = ()  # rows that could not be understood, and why


def bump_generation(session: Session, site: str, name: str = POLICY_OVERLAY) -> int:
    """Add one to a change counter in the caller's transaction; returns the new value.

    The UPDATE also serialises: it holds SQLite's write lock or PostgreSQL's row lock on the
    counter until the caller commits.
    """
    now = utcnow()
    stmt = (
        update(Generation)
        .where(Generation.site == site, Generation.name == name)
        .values(value=Generation.value + 1, changed_at=now)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(session.execute(stmt)) == 0:
        try:
            with session.begin_nested():
                session.add(Generation(site=site, name=name, value=1, changed_at=now))
            return 1
        except IntegrityError:
            # Another transaction created the row first (PostgreSQL); it is committed now.
            session.execute(stmt)
    return read_generation(session, site, name)


def _rowcount(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def read_generation(session: Session, site: str, name: str = POLICY_OVERLAY) -> int:
    """The counter's value; 0 if nothing has been changed yet."""
    value = session.execute(
        select(Generation.value).where(Generation.site == site, Generation.name == name)
    ).scalar_one_or_none()
    return int(value) if value is not None else 0


def _roles(text: str) -> tuple[frozenset[Role], list[str]]:
    roles: set[Role] = set()
    unknown: list[str] = []
    for name in (part.strip() for part in text.split(",")):
        if not name:
            continue
        try:
            roles.add(Role(name))
        except ValueError:
            unknown.append(name)
    return frozenset(roles), unknown


def load_overlay(session: Session, site: str, now: datetime) -> Overlay:
    """Current and future exceptions (not revoked), bans not lifted or ended, site blocks.

    A row the policy types cannot express (an unknown scope or role) is left out and named
    in ``skipped``: a bad row must not stop every other exception from applying.
    """
    if now.tzinfo is None:
        raise ValueError("load_overlay needs an aware datetime")
    generation = read_generation(session, site)
    skipped: list[str] = []

    exceptions: list[PolicyException] = []
    for ex in session.scalars(
        select(PolicyExceptionRow)
        .where(
            PolicyExceptionRow.site == site,
            PolicyExceptionRow.revoked_at.is_(None),
            PolicyExceptionRow.expires > now,
        )
        .order_by(PolicyExceptionRow.id)
    ):
        try:
            scope = ExceptionScope(ex.scope)
        except ValueError:
            skipped.append(f"exception {ex.id}: unknown scope {ex.scope!r}")
            continue
        if not ex.domain and not ex.url_prefix:
            skipped.append(f"exception {ex.id}: neither a domain nor a URL prefix")
            continue
        exceptions.append(
            PolicyException(
                id=ex.id,
                scope=scope,
                subject=ex.subject,
                domain=ex.domain,
                url_prefix=ex.url_prefix,
                starts=ex.starts,
                expires=ex.expires,
                reason=ex.reason,
                request_id=ex.request_id,
            )
        )

    bans: list[Ban] = []
    for ban in session.scalars(
        select(BanRow)
        .where(BanRow.site == site, BanRow.lifted_at.is_(None), or_(BanRow.until.is_(None), BanRow.until > now))
        .order_by(BanRow.id)
    ):
        if not (ban.device_id or ban.person_id or ban.mac):
            skipped.append(f"ban {ban.id}: names no device, person or MAC")
            continue
        bans.append(
            Ban(
                id=ban.id,
                device_id=ban.device_id,
                person_id=ban.person_id,
                mac=ban.mac.lower() if ban.mac else None,
                starts=ban.starts,
                until=ban.until,
                reason=ban.reason,
            )
        )

    blocks: list[SiteBlock] = []
    for block in session.scalars(
        select(SiteBlockRow)
        .where(SiteBlockRow.site == site, SiteBlockRow.removed_at.is_(None))
        .order_by(SiteBlockRow.id)
    ):
        roles, unknown = _roles(block.roles)
        if unknown:
            # Blocking for more roles than meant is safer than for none: keep the known ones,
            # or every role if none is known.
            skipped.append(f"site block {block.id}: unknown role(s) {', '.join(unknown)}")
        if not block.domain and not block.url_prefix:
            skipped.append(f"site block {block.id}: neither a domain nor a URL prefix")
            continue
        blocks.append(
            SiteBlock(
                id=block.id,
                domain=block.domain,
                url_prefix=block.url_prefix,
                roles=roles,
                reason=block.reason,
                report_id=block.report_id,
            )
        )
    for message in skipped:
        log.warning("policy overlay for %s: %s", site, message)
    return Overlay(
        site=site,
        generation=generation,
        exceptions=tuple(exceptions),
        bans=tuple(bans),
        site_blocks=tuple(blocks),
        skipped=tuple(skipped),
    )
