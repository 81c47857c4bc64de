"""Who is acting, and the headteacher's signature on a decision.

Views build an `Actor` from the signed-in console user; the scheduler and the block page
act under fixed system identities. The audit log records `Actor.name`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from schoolgate.services.errors import Forbidden

if TYPE_CHECKING:
    from schoolgate.store.models import ConsoleUser

TECHNICIAN = "technician"
DSL = "dsl"
HEADTEACHER = "headteacher"
ADMIN = "admin"
TRUST_ADMIN = "trust_admin"
CONSOLE_ROLES = (TECHNICIAN, DSL, HEADTEACHER, ADMIN, TRUST_ADMIN)


@dataclass(frozen=True, slots=True)
class Actor:
    """The person (or system part) on whose behalf a service runs."""

    name: str  # the username: stable, recorded in the audit log
    display_name: str  # printed on forms, e.g. "Mrs J Patel"
    roles: frozenset[str] = frozenset()
    user_id: int | None = None

    @classmethod
    def from_user(cls, user: ConsoleUser) -> Actor:
        return cls(
            name=user.username,
            display_name=user.display_name,
            roles=user.role_names,
            user_id=user.id,
        )

    def has_any(self, *roles: str) -> bool:
        return bool(self.roles.intersection(roles))

    def require(self, *roles: str, doing: str) -> None:
        """Raise Forbidden unless the actor holds one of `roles`; `doing` completes the message."""
        if not self.has_any(*roles):
            wanted = " or ".join(r.replace("_", " ") for r in roles)
            raise Forbidden(f"Only the {wanted} can {doing}.")


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
