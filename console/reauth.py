"""Re-authentication as a signature: the signer types their password (and TOTP code) again.

Appendix A asks for the authoriser's signature. A session cookie alone proves little (a
browser left open in the staff room), so a decision is signed by proving the password and the
second factor at the moment of signing. Failures count towards the account's lockout.
"""

from __future__ import annotations

from datetime import timedelta

from schoolgate.console import accounts, web
from schoolgate.console.views.auth import totp_guard
from schoolgate.services.actor import Signature


class ReauthFailed(Exception):
    """The password or code given to sign did not check out."""


def _fail(message: str) -> ReauthFailed:
    from flask import current_app

    user = web.current_user()
    assert user is not None
    policy: accounts.LockoutPolicy = current_app.extensions["schoolgate.lockout"]
    user.failed_logins = (user.failed_logins or 0) + 1
    if user.failed_logins >= policy.max_failures:
        user.locked_until = web.now() + timedelta(minutes=policy.lock_minutes)
        user.failed_logins = 0
    return ReauthFailed(message)


def sign(printed_name: str, password: str, code: str) -> Signature:
    user = web.current_user()
    assert user is not None
    current = web.now()
    if user.locked_until is not None and user.locked_until > current:
        raise ReauthFailed("Your account is locked after too many failed attempts; try again later.")
    if not accounts.verify_password(user, password[:1000]):
        raise _fail("The password is not right, so the decision was not signed.")
    method = "password"
    if user.totp_secret:
        checked = totp_guard().check(user.id, user.totp_secret, code[:20], current)
        if checked is accounts.TotpCheck.REUSED:
            # A right code, already spent on the previous signature: not a guess, so not counted.
            raise ReauthFailed(
                "That code was already used for your previous signature. Wait for your authenticator "
                "to show the next code (a new one every 30 seconds) and sign again; nothing was counted against you."
            )
        if checked is not accounts.TotpCheck.OK:
            raise _fail("The six-digit code is not right, so the decision was not signed.")
        method = "password+totp"
    elif accounts.totp_required(user):
        raise ReauthFailed("Set up two-factor sign-in on your account page before signing decisions.")
    user.failed_logins = 0
    name = " ".join(printed_name.split())[:200] or user.display_name
    return Signature(user_id=user.id, username=user.username, name=name, signed_at=current, method=method)
