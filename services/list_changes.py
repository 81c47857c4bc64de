"""What the database learns about list subscriptions: each new version in the audit log, a
change counter the self-test and the daemons can watch, and the technician's e-mail about a
list that has gone stale (once per stale spell, not every run).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from schoolgate.services.actor import TECHNICIAN, Actor
from schoolgate.services.common import advance_mark, audit, read_mark, write_mark

#: A counter in `generations` that moves whenever a list version is installed: the hook the
#: scheduler's after-update work (the self-test) and anything else can react to.
LISTS_CHANGED = "lists_changed"
LISTS_ACTOR = Actor(name="system:lists", display_name="schoolgate list updates")


def stale_mark(list_id: str) -> str:
    return f"lists_stale:{list_id}"[:40]


def record_installed(
    session: Session, *, site: str, installed: Iterable[dict[str, object]], now: datetime, actor: Actor = LISTS_ACTOR
) -> int:
    """Audit each installed version ({"list", "version", "message", "origin"}) and move the
    change counter; returns how many were recorded. The caller commits."""
    count = 0
    for item in installed:
        audit(
            session, site=site, actor=actor, action="lists.version_installed", object_type="list",
            object_id=item.get("list"), detail=dict(item), now=now,
        )
        count += 1
    if count:
        advance_mark(session, site, LISTS_CHANGED, now)
    return count


def technician_emails(session: Session, site: str) -> list[str]:
    from schoolgate.store.models import ConsoleUser, UserRole

    emails = session.scalars(
        select(ConsoleUser.email)
        .join(UserRole, UserRole.user_id == ConsoleUser.id)
        .where(
            UserRole.role == TECHNICIAN,
            ConsoleUser.active.is_(True),
            ConsoleUser.email.is_not(None),
            or_(ConsoleUser.site == site, ConsoleUser.site.is_(None)),
        )
    ).all()
    return sorted({e.strip() for e in emails if e and "@" in e and "\n" not in e and "\r" not in e}, key=str.lower)


def stale_to_notify(session: Session, site: str, stale: Sequence[tuple[str, datetime | None]]) -> list[str]:
    """The stale lists ((id, confirmed-current-at)) not yet reported for this stale spell. A
    spell is named by the instant the list was last confirmed current: a list that recovers
    and goes stale again is reported again."""
    due: list[str] = []
    for list_id, verified in stale:
        spell = int(verified.timestamp()) if verified is not None else 1
        if read_mark(session, site, stale_mark(list_id)) != spell:
            due.append(list_id)
    return due


def mark_notified(session: Session, site: str, stale: Sequence[tuple[str, datetime | None]], now: datetime) -> None:
    for list_id, verified in stale:
        write_mark(session, site, stale_mark(list_id), int(verified.timestamp()) if verified is not None else 1, now)
