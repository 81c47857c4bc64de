"""Console sessions kept on the server (the `console_sessions` table).

The browser's cookie (signed by Flask) carries a random token; the table keeps its SHA-256, the
account, when the sign-in began and the latest it may last. A request is signed in only while
its row is live, so signing out, changing a password or roles, an admin's reset or disabling
an account end the session where it matters: a copied cookie replayed afterwards is refused.
Rows are written when a sign-in starts and ends, never on ordinary page views.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from schoolgate.store.models import ConsoleSession, ConsoleUser

#: How long ended and expired rows are kept (what was signed in when, for an investigation).
KEEP_ENDED = timedelta(days=90)

# Why a session ended (ended_reason); shown to the person whose browser it was.
SIGNED_OUT = "signed out"
PASSWORD_CHANGED = "password changed"  # noqa: S105 (a reason, not a password)
ROLES_CHANGED = "roles changed"
RESET_BY_ADMIN = "reset by an admin"
SECOND_FACTOR_RESET = "second factor reset"
DISABLED = "account disabled"
IDLE = "idle"
FAILED_SIGNATURES = "too many failed confirmations"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start(session: Session, user: ConsoleUser, *, now: datetime, lifetime: timedelta, client_ip: str | None) -> str:
    """Record a new sign-in; returns the token for the cookie. The caller commits."""
    token = secrets.token_urlsafe(32)
    session.add(
        ConsoleSession(
            token_hash=_hash(token),
            user_id=user.id,
            client_ip=(client_ip or "")[:45] or None,
            created_at=now,
            expires_at=now + lifetime,
            ended_reason="",
        )
    )
    # Old rows of this account go as it signs in: the table stays small without a job.
    session.execute(
        delete(ConsoleSession).where(
            ConsoleSession.user_id == user.id,
            or_(ConsoleSession.ended_at < now - KEEP_ENDED, ConsoleSession.expires_at < now - KEEP_ENDED),
        )
    )
    return token


def find(session: Session, token: str | None) -> ConsoleSession | None:
    """The row for a cookie's token, live or not; None for an unknown token."""
    if not isinstance(token, str) or not token:
        return None
    return session.scalar(select(ConsoleSession).where(ConsoleSession.token_hash == _hash(token)))


def is_live(row: ConsoleSession | None, now: datetime) -> bool:
    return row is not None and row.ended_at is None and row.expires_at > now


def end(session: Session, token: str | None, *, now: datetime, reason: str) -> None:
    """End one session (signing out). The caller commits."""
    if not isinstance(token, str) or not token:
        return
    session.execute(
        update(ConsoleSession)
        .where(ConsoleSession.token_hash == _hash(token), ConsoleSession.ended_at.is_(None))
        .values(ended_at=now, ended_reason=reason[:60])
    )


def end_all(session: Session, user_id: int, *, now: datetime, reason: str, keep: str | None = None) -> int:
    """End every live session of an account, except the one whose token is `keep` (the
    browser making the change). Returns how many ended. The caller commits."""
    conditions = [ConsoleSession.user_id == user_id, ConsoleSession.ended_at.is_(None)]
    if keep:
        conditions.append(ConsoleSession.token_hash != _hash(keep))
    result = session.execute(update(ConsoleSession).where(*conditions).values(ended_at=now, ended_reason=reason[:60]))
    return int(getattr(result, "rowcount", 0) or 0)


def live_count(session: Session, user_id: int, now: datetime) -> int:
    rows = session.scalars(
        select(ConsoleSession.id).where(
            ConsoleSession.user_id == user_id, ConsoleSession.ended_at.is_(None), ConsoleSession.expires_at > now
        )
    )
    return len(list(rows))
