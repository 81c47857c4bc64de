"""Who is acting, and the headteacher's signature on a decision.

Views build an `Actor` from the signed-in console user; the scheduler and the block page
act under fixed system identities. The audit log records `Actor.name`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from schoolgate.services.errors import Forbidden
from schoolgate.services.permissions import ConsoleRole, Permission, holders_text, permissions_of

if TYPE_CHECKING:
    from schoolgate.store.models import ConsoleUser

# Role names, for queries on UserRole (e.g. who is e-mailed); what each role may do is the
# permission table's to say (schoolgate.services.permissions), never a check of these names.
TECHNICIAN, DSL, HEADTEACHER, ADMIN, TRUST_ADMIN = (
    ConsoleRole(name).value for name in ("technician", "dsl", "headteacher", "admin", "trust_admin")
)


@dataclass(frozen=True, slots=True)
class Actor:
    """The person (or system part) on whose behalf a service runs.

    `permissions` come from the one permission table (schoolgate.services.permissions): the
    console builds them from the account's roles and the school's policy; given only roles, the
    table's own grants apply. Services ask `actor.require(Permission.X, doing=...)`."""

    name: str  # the username: stable, recorded in the audit log
    display_name: str  # printed on forms, e.g. "Mrs J Patel"
    roles: frozenset[str] = frozenset()
    user_id: int | None = None
    permissions: frozenset[Permission] | None = None

    def __post_init__(self) -> None:
        if self.permissions is None:
            object.__setattr__(self, "permissions", permissions_of(self.roles))

    @classmethod
    def from_user(
        cls, user: ConsoleUser, policy_grants: Mapping[Permission, frozenset[str]] | None = None
    ) -> Actor:
        return cls(
            name=user.username,
            display_name=user.display_name,
            roles=user.role_names,
            user_id=user.id,
            permissions=permissions_of(user.role_names, policy_grants),
        )

    def may(self, permission: Permission) -> bool:
        return permission in (self.permissions or frozenset())

    def require(self, permission: Permission, *, doing: str) -> None:
        """Raise Forbidden unless the actor holds `permission`; `doing` completes the message."""
        if not self.may(permission):
            raise Forbidden(f"Only {holders_text(permission)} can {doing}.")


#: The scheduler's identity in the audit log (expiries, alert scans).
SCHEDULER = Actor(name="system:scheduler", display_name="schoolgate scheduler")
#: Someone on the school network using the block page's request form (no console account).
BLOCK_PAGE = Actor(name="system:block-page", display_name="block page request form")


@dataclass(frozen=True, slots=True)
class Signature:
    """Appendix A's signature: the console has just re-checked the signer's password (and TOTP).

    The console builds this only after a successful re-authentication, within the same
    request; services check that it belongs to the acting user and is fresh.
    """

    user_id: int
    username: str
    name: str  # the printed name on the form
    signed_at: datetime  # aware
    method: str  # e.g. "password", "password+totp"

    def as_text(self) -> str:
        """The stored form: fits the 200-character signature column."""
        stamp = self.signed_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"{self.username} ({self.method}) {stamp}"[:200]
