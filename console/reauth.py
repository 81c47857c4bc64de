"""Proving it is still you: the password (and code) typed again by someone already signed in.

Appendix A asks for the authoriser's signature. A session cookie alone proves little (a
browser left open in the staff room), so a decision is signed by proving the password and the
second factor at the moment of signing; changing one's password or second factor asks for the
current one the same way. Wrong answers count in the sign-in throttle's buckets for this
browser (schoolgate.console.throttle), and after as many as a sign-in would allow, the session
ends: whoever is at the keyboard is not its owner. The account itself is never locked, so the
headteacher can still sign in from her phone.

The password check is a slow step and runs with no database transaction open.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from flask import current_app, request

from schoolgate.console import accounts, known_devices, sessions, web
from schoolgate.console.accounts import TotpCheck, TotpPurpose, TotpReplayGuard
from schoolgate.console.throttle import SignInThrottle, source_key
from schoolgate.services.actor import Signature
from schoolgate.store.models import ConsoleUser


class ReauthFailed(Exception):
    """The password or code given did not check out; `signed_out` when the session was ended."""

    def __init__(self, message: str, *, signed_out: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.signed_out = signed_out


def throttle() -> SignInThrottle:
    found: SignInThrottle = current_app.extensions["schoolgate.throttle"]
    return found


def totp_guard() -> TotpReplayGuard:
    guard: TotpReplayGuard = current_app.extensions["schoolgate.totp_guard"]
    return guard


def wait_text(until: datetime) -> str:
    """"Try again after 10:42:30." in the school's time, to the second (waits start at 30 s)."""
    local = until.astimezone(web.zone())
    return f"Too many attempts that were not right. Try again after {local:%H:%M:%S}."


def _attempt(user: ConsoleUser) -> tuple[str, str, str | None]:
    """(source, account, device) of an attempt from this browser, as the throttle counts it. A
    signed-in browser is a known device even without its device cookie: the session vouches
    for it, so others' guessing at the sign-in page never stops the headteacher signing."""
    device = known_devices.device_for(request, user.username)
    if device is None:
        token = web.session_token()
        device = f"session:{hashlib.sha256(token.encode()).hexdigest()[:16]}" if token else None
    return source_key(request.remote_addr), user.username, device


def _me() -> ConsoleUser:
    user = web.current_user()
    if user is None:
        raise ReauthFailed("Please sign in again.", signed_out=True)
    return user


def refuse_while_waiting() -> None:
    """Refuse at once, without checking anything, while this browser must wait."""
    user = _me()
    source, account, device = _attempt(user)
    until = throttle().wait_until(source=source, account=account, device=device, now=web.now())
    if until is not None:
        raise ReauthFailed(wait_text(until))


def failed(message: str) -> ReauthFailed:
    """Count a wrong password or code; end the session once this browser has had its allowance."""
    user = _me()
    source, account, device = _attempt(user)
    count = throttle().failure(source=source, account=account, device=device, now=web.now())
    if count < throttle().settings.account_free_failures:
        return ReauthFailed(message)
    web.end_session_quietly(web.session_token(), sessions.FAILED_SIGNATURES)
    from flask import session

    session.clear()
    return ReauthFailed(
        f"{message} After {count} attempts that were not right you have been signed out; "
        "sign in again to carry on.",
        signed_out=True,
    )


def confirm_password(password: str, *, refused: str) -> None:
    """The signed-in person's password, typed again; `refused` says what did not happen."""
    user = _me()
    refuse_while_waiting()
    with web.outside_transaction("checking a password"):
        right = accounts.verify_password(user.password_hash, password)
    if not right:
        raise failed(f"The password is not right, so {refused}.")


def confirm_code(code: str, purpose: TotpPurpose, *, refused: str) -> None:
    """The current code from the signed-in person's authenticator, for `purpose`."""
    user = _me()
    assert user.totp_secret is not None
    checked = totp_guard().check(user.id, user.totp_secret, code[:20], web.now(), purpose)
    if checked is TotpCheck.REUSED:
        # A right code, already spent on the previous signature: not a guess, so not counted.
        raise ReauthFailed(
            f"That code was already used, so {refused}. Wait for your authenticator to show the next code "
            "(a new one every 30 seconds) and try again; nothing was counted against you."
        )
    if checked is not TotpCheck.OK:
        raise failed(f"The six-digit code is not right, so {refused}.")


def sign(printed_name: str, password: str, code: str) -> Signature:
    """Appendix A's signature: the password and the code, checked now. A code already used to
    sign in may be used again to sign (a separate purpose), but not for a second signature."""
    user = _me()
    refused = "the decision was not signed"
    name = " ".join(printed_name.split())
    if len(name) > 200:
        raise ReauthFailed(f"The printed name is too long ({len(name):,} characters, at most 200), so {refused}.")
    if not user.totp_secret and accounts.totp_required(user):
        raise ReauthFailed("Set up two-factor sign-in on your account page before signing decisions.")
    confirm_password(password, refused=refused)
    method = "password"
    if user.totp_secret:
        confirm_code(code, TotpPurpose.SIGNATURE, refused=refused)
        method = "password+totp"
    return Signature(user_id=user.id, username=user.username, name=name or user.display_name, signed_at=web.now(),
                     method=method)
