"""Time-limited exceptions: list and revoke (they are created by approving access requests)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from schoolgate.services.actor import Actor
from schoolgate.services.common import Page, SiteScope, audit, bump_overlay, clean_text, in_scope, on_site
from schoolgate.services.errors import InvalidTransition, NotFound
from schoolgate.services.permissions import Permission
from schoolgate.store.models import PolicyExceptionRow

ACTIVE = "active"  # started, not expired, not revoked
UPCOMING = "upcoming"  # starts later
ENDED = "ended"  # expired or revoked
ALL = "all"


def exception_state(row: PolicyExceptionRow, now: datetime) -> str:
    if row.revoked_at is not None or row.expires <= now:
        return ENDED
    return UPCOMING if row.starts > now else ACTIVE


def list_exceptions(
    session: Session, site: SiteScope, *, now: datetime, state: str = ACTIVE, limit: int = 100, offset: int = 0
) -> Page[PolicyExceptionRow]:
    """`state`: active, upcoming, ended or all; soonest expiry first (newest first for ended)."""
    conditions = [on_site(PolicyExceptionRow.site, site)]
    order: list[Any] = [PolicyExceptionRow.expires.asc(), PolicyExceptionRow.id.asc()]
    live = [PolicyExceptionRow.revoked_at.is_(None), PolicyExceptionRow.expires > now]
    if state == ACTIVE:
        conditions += [*live, PolicyExceptionRow.starts <= now]
    elif state == UPCOMING:
        conditions += [*live, PolicyExceptionRow.starts > now]
    elif state == ENDED:
        conditions.append((PolicyExceptionRow.revoked_at.is_not(None)) | (PolicyExceptionRow.expires <= now))
        order = [PolicyExceptionRow.expires.desc(), PolicyExceptionRow.id.desc()]
    total = session.scalar(select(func.count()).select_from(PolicyExceptionRow).where(*conditions)) or 0
    rows = session.scalars(
        select(PolicyExceptionRow).where(*conditions).order_by(*order).limit(limit).offset(offset)
    ).all()
    return Page(items=rows, total=total, limit=limit, offset=offset)


def get_exception(session: Session, site: SiteScope, exception_id: int) -> PolicyExceptionRow:
    row = session.get(PolicyExceptionRow, exception_id)
    if row is None or not in_scope(row.site, site):
        raise NotFound(f"There is no exception {exception_id}.")
    return row


def revoke_exception(
    session: Session, *, site: str, now: datetime, actor: Actor, exception_id: int, reason: str
) -> PolicyExceptionRow:
    """End an exception now; DNS and the proxy drop it at their next generation poll."""
    actor.require(Permission.REVOKE_EXCEPTION, doing="revoke exceptions")
    row = get_exception(session, site, exception_id)
    if row.revoked_at is not None:
        raise InvalidTransition("That exception has already been revoked.")
    if row.expires <= now:
        raise InvalidTransition("That exception has already expired.")
    text = clean_text(reason, field="reason", max_len=2000, required=True)
    row.revoked_at = now
    session.flush()
    audit(
        session,
        site=site,
        actor=actor,
        action="exception.revoke",
        object_type="exception",
        object_id=row.id,
        detail={"reason": text, "domain": row.domain, "url_prefix": row.url_prefix},
        now=now,
    )
    bump_overlay(session, site=site, now=now)
    return row


def expire_due(session: Session, *, site: str, since: datetime, now: datetime) -> tuple[list[int], list[int]]:
    """Exceptions and bans whose end fell in (since, now]: (exception ids, ban ids).

    Used by the scheduler to audit expiries and bump the generation once when anything ended.
    """
    from schoolgate.store.models import BanRow

    exception_ids = list(
        session.scalars(
            select(PolicyExceptionRow.id).where(
                on_site(PolicyExceptionRow.site, site),
                PolicyExceptionRow.revoked_at.is_(None),
                PolicyExceptionRow.expires > since,
                PolicyExceptionRow.expires <= now,
            )
        )
    )
    ban_ids = list(
        session.scalars(
            select(BanRow.id).where(
                on_site(BanRow.site, site), BanRow.lifted_at.is_(None), BanRow.until.is_not(None), BanRow.until > since,
                BanRow.until <= now,
            )
        )
    )
    return exception_ids, ban_ids
