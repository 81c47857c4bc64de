"""Console accounts: password hashing, account rules, and TOTP second factors.

Passwords are hashed with Argon2id (memory-hard, so a stolen database is slow to crack on
a GPU). Hashing and checking a password take a good fraction of a second on a Raspberry Pi,
so they are done with no database transaction open (the caller reads what it needs first and
writes the outcome afterwards, each in a short transaction of its own): a transaction held
across a hash would hold SQLite's write lock and stall the DNS and proxy log writers.
Failed attempts are slowed by schoolgate.console.throttle, never by locking the account.
TOTP codes are checked with one step of clock drift either way and each code is accepted
once per purpose.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import select
from sqlalchemy.orm import Session

from schoolgate.services.permissions import ROLES, SECOND_FACTOR_ROLES, ConsoleRole
from schoolgate.store.models import AuditEntry, ConsoleUser, UserRole

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1000
_HASHER = PasswordHasher()  # argon2id, 64 MiB, t=3: the library's RFC 9106 "low memory" profile
# A hash to verify against when the username is unknown, so that the response time does not
# reveal which usernames exist: made with _HASHER's parameters (a test holds it to them) from a
# random password nobody kept. Written here rather than hashed at import, which cost every
# start of the console (and so every wake of a console on demand) a 64 MiB, ~0.4 s Argon2 run.
_DUMMY_HASH = "$argon2id$v=19$m=65536,t=3,p=4$DqhKk+c5wPX6dDXFkqgGXA$becUq8MPPan4ZlMpbuxU8ZuLOdwseudLuO/L/CUb87w"


class AccountError(ValueError):
    """A user-facing problem with an account operation (unknown user, weak password...)."""


def audit_user(
    session: Session,
    *,
    site: str,
    actor: str,
    action: str,
    user: ConsoleUser,
    detail: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> None:
    """Record a change to a console account in the hash-chained audit log."""
    from schoolgate.store import audit

    audit.record(
        session,
        site=site,
        actor=actor,
        action=action,
        object_type="console_user",
        object_id=user.id,
        detail={"username": user.username, **(detail or {})},
        at=now,
    )


def hash_password(password: str) -> str:
    """Slow: call with no database transaction open."""
    return _HASHER.hash(password)


def check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password must be at least {MIN_PASSWORD_LENGTH} characters long")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AccountError(f"the password must be at most {MAX_PASSWORD_LENGTH} characters long")
    if password.strip() != password:
        raise AccountError("the password must not start or end with spaces")


def new_password_hash(password: str) -> str:
    """Check a new password's strength and hash it. Slow: no transaction may be open."""
    check_password_strength(password)
    return hash_password(password)


def generate_password() -> str:
    """A one-time password to hand to a new user: 20 URL-safe characters (~120 bits)."""
    return secrets.token_urlsafe(15)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether `password` matches; with no hash (unknown user) a dummy is checked, so the time
    taken is the same. Slow: no transaction may be open."""
    if password_hash is None or len(password) > MAX_PASSWORD_LENGTH:
        with contextlib.suppress(VerificationError):
            _HASHER.verify(_DUMMY_HASH, password[:MAX_PASSWORD_LENGTH])
        return False
    try:
        return _HASHER.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def rehash_if_needed(password_hash: str, password: str) -> str | None:
    """A new hash when the stored one uses older parameters (after a right password). Slow."""
    try:
        if _HASHER.check_needs_rehash(password_hash):
            return _HASHER.hash(password)
    except InvalidHashError:
        pass
    return None


@dataclass(frozen=True, slots=True)
class Credentials:
    """What checking a sign-in needs, read in a short transaction and then let go of."""

    user_id: int
    username: str
    password_hash: str
    active: bool
    totp_secret: str | None
    second_factor_required: bool


def credentials_for(session: Session, username: str) -> Credentials | None:
    user = find_user(session, username)
    if user is None:
        return None
    return Credentials(user.id, user.username, user.password_hash, user.active, user.totp_secret,
                       totp_required(user))


def totp_required(user: ConsoleUser) -> bool:
    return bool(user.role_names & {r.value for r in SECOND_FACTOR_ROLES})


#: Audit actions by which someone else sets an account's password in the console: an admin's new
#: account or reset, the headteacher's reset, two admins' reset (console/views/admin.py).
PASSWORD_SET_BY_OTHERS = ("user.create", "user.reset_password", "user.reset_password_confirmed")
PASSWORD_CHOSEN = "user.change_password"  # noqa: S105 (an audit action, not a password)
#: The appliance's command line (root on the appliance, who sets up the first headteacher and
#: may hand over a password they chose with its holder): its passwords are not forced to change.
CLI_ACTOR = "system:cli"


def password_handed_over(session: Session, user: ConsoleUser) -> bool:
    """Whether the account's password was last set in the console by someone else, who has seen
    it: then its holder chooses their own before doing anything else, so that the "one-time
    password" an admin (or the second of two admins resetting a headteacher's account) read is
    of no use to them afterwards. From the audit log, which records every such step."""
    last = session.scalars(
        select(AuditEntry)
        .where(
            AuditEntry.object_type == "console_user",
            AuditEntry.object_id == str(user.id),
            AuditEntry.action.in_([*PASSWORD_SET_BY_OTHERS, PASSWORD_CHOSEN]),
        )
        .order_by(AuditEntry.id.desc())
        .limit(1)
    ).first()
    return (last is not None and last.action != PASSWORD_CHOSEN
            and last.actor not in (user.username, CLI_ACTOR))


def find_user(session: Session, username: str) -> ConsoleUser | None:
    username = username.strip().lower()
    if not username:
        return None
    return session.scalar(select(ConsoleUser).where(ConsoleUser.username == username))


def check_account_scope(roles: frozenset[ConsoleRole] | frozenset[str], site: str | None) -> None:
    """A trust-wide account (no site) holds the trust admin role and nothing else; a school's
    account never holds it. So no school admin can make an account that reads other schools,
    and no trust account acts inside a school."""
    trust = ConsoleRole.TRUST_ADMIN.value in {str(r) for r in roles}
    if site is None and not (trust and len(roles) == 1):
        raise AccountError("a trust-wide account (no school) holds the trust_admin role only")
    if site is not None and trust:
        raise AccountError("the trust_admin role belongs to trust-wide accounts; a school's account cannot hold it")


def create_user(
    session: Session,
    *,
    username: str,
    display_name: str,
    roles: frozenset[ConsoleRole],
    password_hash: str,
    site: str | None,
    email: str | None = None,
) -> ConsoleUser:
    """Add an account; `password_hash` comes from new_password_hash, made before the transaction."""
    username = username.strip().lower()
    if not username or not all(c.isalnum() or c in "._-" for c in username) or len(username) > 100:
        raise AccountError("a username is 1-100 letters, digits, dots, dashes or underscores")
    if not roles:
        raise AccountError("give the account at least one role")
    if len(display_name.strip()) > 200 or len((email or "").strip()) > 200:
        raise AccountError("the name and the e-mail address are each at most 200 characters")
    check_account_scope(roles, site)
    if find_user(session, username) is not None:
        raise AccountError(f"the username {username!r} is taken")
    user = ConsoleUser(
        site=site,
        username=username,
        display_name=display_name.strip() or username,
        email=(email or "").strip() or None,
        password_hash=password_hash,
        active=True,
    )
    user.roles = [UserRole(role=r.value) for r in sorted(roles)]
    session.add(user)
    session.flush()
    return user


def set_roles(user: ConsoleUser, roles: frozenset[ConsoleRole]) -> None:
    if not roles:
        raise AccountError("give the account at least one role")
    check_account_scope(roles, user.site)
    wanted = {r.value for r in roles}
    user.roles = [r for r in user.roles if r.role in wanted]
    for name in sorted(wanted - user.role_names):
        user.roles.append(UserRole(role=name))


def guarded_roles_of(roles: frozenset[str] | frozenset[ConsoleRole]) -> frozenset[ConsoleRole]:
    """The roles among `roles` that only the headteacher may give or take (DSL, headteacher)."""
    return frozenset(ConsoleRole(str(r)) for r in roles if ROLES[ConsoleRole(str(r))].guarded)


def new_totp_secret() -> str:
    return pyotp.random_base32()


def totp_uri(secret: str, username: str, issuer: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=issuer)


class TotpCheck(Enum):
    OK = "ok"
    WRONG = "wrong"
    REUSED = "reused"


class TotpPurpose(Enum):
    """What a code is typed for. A code is used once per purpose: signing in and then, within
    the same 30 seconds, signing a decision are two uses, not a replay."""

    SIGN_IN = "sign-in"
    SIGNATURE = "signature"
    SECOND_FACTOR_CHANGE = "second-factor-change"
    ENROL = "enrol"


TOTP_STEP_S = 30  # the step of the codes `pyotp.TOTP(secret)` checks (its default interval)


class TotpReplayGuard:
    """Remembers the last time step accepted per user, secret and purpose, so a code cannot be
    used twice for the same thing.

    Kept in memory: the console runs as one server process (see schoolgate.console.server),
    and after a restart a replayed code is at most 30 seconds old anyway.
    """

    def __init__(self) -> None:
        # Keyed by secret too: while replacing a second factor, the old and the new secret's
        # codes for the same 30 seconds are different codes, both usable once.
        self._last_step: dict[tuple[int, str, TotpPurpose], int] = {}
        self._lock = threading.Lock()

    def remembers_usable_codes(self, now: datetime) -> bool:
        """Whether a code it has accepted could still be accepted again (its step is within the
        one step either side that `check` allows): what a console going to sleep would forget."""
        current = int(now.timestamp()) // TOTP_STEP_S
        with self._lock:
            return any(step >= current - 1 for step in self._last_step.values())

    def verify(self, user_id: int, secret: str, code: str, now: datetime, purpose: TotpPurpose) -> bool:
        return self.check(user_id, secret, code, now, purpose) is TotpCheck.OK

    def check(self, user_id: int, secret: str, code: str, now: datetime, purpose: TotpPurpose) -> TotpCheck:
        """OK, WRONG, or REUSED: a right code from a step already used for this purpose (e.g. a
        second signature within the same 30 seconds), which the caller may treat more kindly."""
        code = "".join(code.split())
        if not (code.isdigit() and len(code) == 6):
            return TotpCheck.WRONG
        totp = pyotp.TOTP(secret)
        current = totp.timecode(now)
        with self._lock:
            for step in (current - 1, current, current + 1):
                if secrets.compare_digest(totp.generate_otp(step), code):
                    key = (user_id, secret, purpose)
                    if step <= self._last_step.get(key, -1):
                        return TotpCheck.REUSED
                    self._last_step[key] = step
                    return TotpCheck.OK
        return TotpCheck.WRONG
