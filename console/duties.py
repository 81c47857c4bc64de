"""Separation of duties on console accounts.

The DSL and headteacher roles are guarded (RoleSpec.guarded in the permission table): they
decide what children may reach and read safeguarding cases, so no one account may give them
to itself, and an admin alone may neither give nor take them, nor take over an account that
holds one by resetting its password or second factor.

- Giving or taking a guarded role: the headteacher, re-authenticated, for someone else.
- Resetting the password or second factor of a DSL's account: the headteacher, re-authenticated.
- Resetting it for a headteacher's account (she cannot prove it is her after losing her phone):
  another headteacher, re-authenticated, or two different admins, the second confirming the
  first's request within `RESET_REQUEST_LIFETIME`. Two accounts are two admins only if neither
  made the other's credentials: an admin who added an account, or reset its password or second
  factor, could sign in as it and confirm their own request. The headteacher is told of both
  steps (schoolgate.services.notices).
- Everything else about accounts stays the admin's. The appliance's own command line
  (`schoolgate users`, root on the appliance) is outside these rules: it sets up the first
  headteacher.
Every step is audited by the caller.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import Enum

from sqlalchemy import select
from sqlalchemy.orm import Session

from schoolgate.console.accounts import AccountError, guarded_roles_of
from schoolgate.services.permissions import ConsoleRole
from schoolgate.store.models import AccountReset, AuditEntry, ConsoleUser

RESET_REQUEST_LIFETIME = timedelta(hours=24)
RESET_KINDS = ("password", "totp")
#: Audit actions by which one account sets another's credentials (console/views/admin.py).
CREDENTIAL_ACTIONS = ("user.create", "user.reset_password", "user.reset_totp", "user.reset_password_confirmed",
                      "user.reset_totp_confirmed")


class DutyRefused(AccountError):
    """The change needs someone else (the headteacher, or a second admin)."""


def _names(roles: frozenset[ConsoleRole]) -> str:
    return " and ".join(sorted(r.value.replace("dsl", "DSL") for r in roles))


def roles_an_admin_may_set(target: ConsoleUser, requested: frozenset[ConsoleRole]) -> frozenset[ConsoleRole]:
    """The roles an admin's edit gives `target`: the guarded ones stay as they are."""
    held = guarded_roles_of(target.role_names)
    added = guarded_roles_of(requested) - held
    if added:
        raise DutyRefused(
            f"Only the headteacher can give the {_names(added)} role, after confirming it is them; "
            "save the account without it and ask the headteacher."
        )
    return frozenset(r for r in requested if r not in guarded_roles_of(requested)) | held


def check_admin_may_disable(target: ConsoleUser, active: bool) -> None:
    if not active and target.active and guarded_roles_of(target.role_names):
        raise DutyRefused(
            "This account holds the DSL or headteacher role: ask the headteacher to take the role away first."
        )


def check_admin_may_change_contact(
    target: ConsoleUser, *, email: str | None, receives_digest: bool, acting_user_id: int
) -> None:
    """The e-mail address of a DSL's or headteacher's account receives safeguarding cases about
    named children and the DSL's digest: an admin who could change it could read them, or stop
    the DSL hearing of them. So it, and whether the digest goes to it, are the headteacher's to
    set (roles_the_headteacher_sets's form), or the holder's own."""
    if target.id == acting_user_id or not guarded_roles_of(target.role_names):
        return
    if email != target.email or receives_digest != target.receives_digest:
        raise DutyRefused(
            "This account holds the DSL or headteacher role: its e-mail address receives safeguarding cases "
            "about named children, so only the headteacher changes it, or whether it receives the digest."
        )


def roles_the_headteacher_sets(
    target: ConsoleUser, guarded: frozenset[ConsoleRole], *, acting_user_id: int
) -> frozenset[ConsoleRole]:
    """The roles `target` gets when the headteacher sets its guarded roles to `guarded`."""
    if target.id == acting_user_id:
        raise DutyRefused(
            "No one can change their own DSL or headteacher role; ask another headteacher, or the "
            "appliance's administrator (schoolgate users on the appliance)."
        )
    stray = frozenset(guarded) - guarded_roles_of(frozenset(guarded))
    if stray:
        raise DutyRefused(f"{_names(stray)} is not a role the headteacher gives here.")
    kept = frozenset(ConsoleRole(r) for r in target.role_names) - guarded_roles_of(target.role_names)
    return kept | frozenset(guarded)


class ResetRoute(Enum):
    ADMIN = "admin"  # an ordinary account: an admin resets it
    HEADTEACHER = "headteacher"  # a guarded account: the headteacher, re-authenticated
    TWO_ADMINS = "two admins"  # a headteacher's account: also two admins


def reset_routes(target: ConsoleUser) -> frozenset[ResetRoute]:
    """Who may reset `target`'s password or second factor."""
    guarded = guarded_roles_of(target.role_names)
    if not guarded:
        return frozenset({ResetRoute.ADMIN})
    if ConsoleRole.HEADTEACHER in guarded:
        return frozenset({ResetRoute.HEADTEACHER, ResetRoute.TWO_ADMINS})
    return frozenset({ResetRoute.HEADTEACHER})


def check_headteacher_may_reset(target: ConsoleUser, *, acting_user_id: int) -> None:
    if ResetRoute.HEADTEACHER not in reset_routes(target):
        raise DutyRefused("This account holds no guarded role: an admin resets it.")
    if target.id == acting_user_id:
        raise DutyRefused(
            "You cannot reset your own account here: change your password or second factor on your "
            "account page, or ask two admins (one asks, another confirms) if you have lost your phone."
        )


def pending_reset(session: Session, target: ConsoleUser, kind: str, now: datetime) -> AccountReset | None:
    return session.scalars(
        select(AccountReset)
        .where(
            AccountReset.user_id == target.id,
            AccountReset.kind == kind,
            AccountReset.completed_at.is_(None),
            AccountReset.requested_at > now - RESET_REQUEST_LIFETIME,
        )
        .order_by(AccountReset.id.desc())
    ).first()


def admin_reset(session: Session, target: ConsoleUser, kind: str, *, admin: str, now: datetime) -> AccountReset | None:
    """An admin's press of "reset" on an account. Returns None if the admin may reset it at
    once; for a headteacher's account, the request: `completed_at` set when this admin was the
    second to ask (do it now), unset when a second admin must still confirm. The caller commits."""
    if kind not in RESET_KINDS:
        raise AccountError(f"Unknown reset {kind!r}.")
    routes = reset_routes(target)
    if ResetRoute.ADMIN in routes:
        return None
    if ResetRoute.TWO_ADMINS not in routes:
        raise DutyRefused(
            "This account holds the DSL role: only the headteacher can reset its password or second factor."
        )
    if target.username == admin:
        raise DutyRefused("You cannot reset your own account here.")
    pending = pending_reset(session, target, kind, now)
    if pending is None:
        pending = AccountReset(site=target.site or "", user_id=target.id, kind=kind, requested_by=admin,
                               requested_at=now)
        session.add(pending)
        session.flush()
        return pending
    if pending.requested_by == admin:
        raise DutyRefused("You asked for this reset already: a second admin must confirm it.")
    if credentials_made_by_either(session, target.site, pending.requested_by, admin):
        raise DutyRefused(
            f"You cannot confirm {pending.requested_by}'s request: one of you added the other's account or "
            "reset its password or second factor, so it takes an admin who is independent of them."
        )
    pending.completed_by = admin
    pending.completed_at = now
    return pending


def credentials_made_by_either(session: Session, site: str | None, first: str, second: str) -> bool:
    """Whether the account `first` added `second`'s account or reset its password or second
    factor, or the other way round (from the audit log, which keeps every such step)."""
    users = {u.username: u.id for u in session.scalars(
        select(ConsoleUser).where(ConsoleUser.username.in_([first, second])))}
    pairs = [(actor, users[other]) for actor, other in ((first, second), (second, first)) if other in users]
    for actor, other_id in pairs:
        made = session.scalar(
            select(AuditEntry.id)
            .where(
                AuditEntry.site == (site or ""),
                AuditEntry.actor == actor,
                AuditEntry.object_type == "console_user",
                AuditEntry.object_id == str(other_id),
                AuditEntry.action.in_(CREDENTIAL_ACTIONS),
            )
            .limit(1)
        )
        if made is not None:
            return True
    return False
