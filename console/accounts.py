"""Console accounts: password hashing, sign-in checks with lockout, and TOTP second factors.

Passwords are hashed with Argon2id (memory-hard, so a stolen database is slow to crack on
a GPU). Failed sign-ins are counted on the account row, so a lockout holds across server
workers and restarts. TOTP codes are checked with one step of clock drift either way and
each code is accepted once only.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import select
from sqlalchemy.orm import Session

from schoolgate.services.permissions import SECOND_FACTOR_ROLES, ConsoleRole
from schoolgate.store.models import ConsoleUser, UserRole

MIN_PASSWORD_LENGTH = 12
_HASHER = PasswordHasher()  # argon2id, 64 MiB, t=3: the library's RFC 9106 "low memory" profile
# A hash to verify against when the username is unknown, so that the response time does not
# reveal which usernames exist.
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))


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
    return _HASHER.hash(password)


def check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password must be at least {MIN_PASSWORD_LENGTH} characters long")
    if password.strip() != password:
        raise AccountError("the password must not start or end with spaces")


def generate_password() -> str:
    """A one-time password to hand to a new user: 20 URL-safe characters (~120 bits)."""
    return secrets.token_urlsafe(15)


def verify_password(user: ConsoleUser | None, password: str) -> bool:
    if user is None:
        with contextlib.suppress(VerificationError):
            _HASHER.verify(_DUMMY_HASH, password)
        return False
    try:
        return _HASHER.verify(user.password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(user: ConsoleUser) -> bool:
    try:
        return _HASHER.check_needs_rehash(user.password_hash)
    except InvalidHashError:
        return False


def totp_required(user: ConsoleUser) -> bool:
    return bool(user.role_names & {r.value for r in SECOND_FACTOR_ROLES})


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
    password: str,
    site: str | None,
    email: str | None = None,
) -> ConsoleUser:
    username = username.strip().lower()
    if not username or not all(c.isalnum() or c in "._-" for c in username) or len(username) > 100:
        raise AccountError("a username is 1-100 letters, digits, dots, dashes or underscores")
    if not roles:
        raise AccountError("give the account at least one role")
    check_account_scope(roles, site)
    if find_user(session, username) is not None:
        raise AccountError(f"the username {username!r} is taken")
    check_password_strength(password)
    user = ConsoleUser(
        site=site,
        username=username,
        display_name=display_name.strip() or username,
        email=(email or "").strip() or None,
        password_hash=hash_password(password),
        active=True,
        failed_logins=0,
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


def reset_password(user: ConsoleUser, password: str) -> None:
    check_password_strength(password)
    user.password_hash = hash_password(password)
    user.failed_logins = 0
    user.locked_until = None


@dataclass(frozen=True)
class LockoutPolicy:
    max_failures: int = 5
    lock_minutes: int = 15


@dataclass(frozen=True)
class SignInResult:
    user: ConsoleUser | None
    locked_until: datetime | None = None

    @property
    def ok(self) -> bool:
        return self.user is not None


def check_sign_in(
    session: Session, username: str, password: str, now: datetime, lockout: LockoutPolicy
) -> SignInResult:
    """Check a username and password, counting failures; the caller commits the session."""
    user = find_user(session, username)
    if user is not None and user.locked_until is not None and user.locked_until > now:
        # Still locked: do not even check the password, so guessing during a lockout is useless.
        verify_password(None, password)
        return SignInResult(None, locked_until=user.locked_until)
    if not verify_password(user, password) or user is None or not user.active:
        if user is not None:
            user.failed_logins = (user.failed_logins or 0) + 1
            if user.failed_logins >= lockout.max_failures:
                user.locked_until = now + timedelta(minutes=lockout.lock_minutes)
                user.failed_logins = 0
                return SignInResult(None, locked_until=user.locked_until)
        return SignInResult(None)
    if not user.totp_secret:
        # Signed in. With a second factor the count stands until the code is right too: a
        # right password must not wipe the failed codes, or someone who has the password
        # could guess codes for ever, a few at a time between sign-ins.
        user.failed_logins = 0
    user.locked_until = None
    if needs_rehash(user):
        user.password_hash = hash_password(password)
    return SignInResult(user)


def new_totp_secret() -> str:
    return pyotp.random_base32()


def totp_uri(secret: str, username: str, issuer: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=issuer)


class TotpCheck(Enum):
    OK = "ok"
    WRONG = "wrong"
    REUSED = "reused"


class TotpReplayGuard:
    """Remembers the last time step accepted per user so a code cannot be used twice.

    Kept in memory: the console runs as one server process (see schoolgate.console.server),
    and after a restart a replayed code is at most 30 seconds old anyway.
    """

    def __init__(self) -> None:
        # Keyed by secret too: while replacing a second factor, the old and the new secret's
        # codes for the same 30 seconds are different codes, both usable once.
        self._last_step: dict[tuple[int, str], int] = {}
        self._lock = threading.Lock()

    def verify(self, user_id: int, secret: str, code: str, now: datetime) -> bool:
        return self.check(user_id, secret, code, now) is TotpCheck.OK

    def check(self, user_id: int, secret: str, code: str, now: datetime) -> TotpCheck:
        """OK, WRONG, or REUSED: a right code from a step already used (e.g. a second
        signature within the same 30 seconds), which the caller may treat more kindly."""
        code = "".join(code.split())
        if not (code.isdigit() and len(code) == 6):
            return TotpCheck.WRONG
        totp = pyotp.TOTP(secret)
        current = totp.timecode(now)
        with self._lock:
            for step in (current - 1, current, current + 1):
                if secrets.compare_digest(totp.generate_otp(step), code):
                    key = (user_id, secret)
                    if step <= self._last_step.get(key, -1):
                        return TotpCheck.REUSED
                    self._last_step[key] = step
                    return TotpCheck.OK
        return TotpCheck.WRONG
