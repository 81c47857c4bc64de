"""Signing in (password, then a TOTP code), TOTP enrolment, password change, signing out."""

from __future__ import annotations

from datetime import datetime, timedelta

import segno
from flask import Blueprint, current_app, flash, redirect, render_template, request, session, url_for
from markupsafe import Markup
from werkzeug.wrappers import Response

from schoolgate.console import accounts, web
from schoolgate.console.accounts import AccountError, LockoutPolicy, TotpReplayGuard
from schoolgate.console.ratelimit import AttemptLimiter
from schoolgate.console.security import rotate_csrf_token
from schoolgate.store.models import ConsoleUser

bp = Blueprint("auth", __name__)

STAGE_TOTP = "totp"
STAGE_ENROL = "enrol"
STAGE_FULL = "full"
#: How long the half-signed-in state (password right, code still to come) lasts.
PENDING_LIFETIME = timedelta(minutes=5)


def _limiter() -> AttemptLimiter:
    limiter: AttemptLimiter = current_app.extensions["schoolgate.login_limiter"]
    return limiter


def _lockout() -> LockoutPolicy:
    policy: LockoutPolicy = current_app.extensions["schoolgate.lockout"]
    return policy


def totp_guard() -> TotpReplayGuard:
    guard: TotpReplayGuard = current_app.extensions["schoolgate.totp_guard"]
    return guard


def _client_key() -> str:
    return request.remote_addr or "unknown"


def _when(moment: datetime) -> str:
    return moment.strftime("%H:%M UTC")


def _pending_user() -> ConsoleUser | None:
    uid = session.get("uid")
    if not isinstance(uid, int) or session.get("stage") not in (STAGE_TOTP, STAGE_ENROL):
        return None
    user = web.db().get(ConsoleUser, uid)
    if user is None or not user.active or session.get("pwd") != web.password_fingerprint(user):
        return None
    started = session.get("pending_at")
    if not isinstance(started, (int, float)) or web.now().timestamp() - started > PENDING_LIFETIME.total_seconds():
        session.clear()
        flash("The sign-in took too long to finish. Please sign in again.")
        return None
    return user


def _finish_sign_in(user: ConsoleUser) -> Response:
    current = web.now()
    nxt = web.safe_next(session.get("next"))
    session.clear()
    rotate_csrf_token()
    session.permanent = True
    session["uid"] = user.id
    session["pwd"] = web.password_fingerprint(user)
    session["stage"] = STAGE_FULL
    session["seen"] = int(current.timestamp())
    session["since"] = int(current.timestamp())  # the absolute lifetime counts from here
    user.last_login = current
    web.db().commit()
    return redirect(nxt or web.home_url(user))


def _count_failure(user: ConsoleUser) -> None:
    """A wrong TOTP code counts towards the account's lockout like a wrong password."""
    policy = _lockout()
    user.failed_logins = (user.failed_logins or 0) + 1
    if user.failed_logins >= policy.max_failures:
        user.locked_until = web.now() + timedelta(minutes=policy.lock_minutes)
        user.failed_logins = 0
        session.clear()
    web.db().commit()


@bp.route("/login", methods=["GET", "POST"])
@web.public
def login() -> tuple[str, int] | Response:
    if web.current_user() is not None:
        return redirect(web.home_url())
    error = None
    if request.method == "POST":
        current = web.now()
        key = _client_key()
        username = request.form.get("username", "")[:100]
        password = request.form.get("password", "")[:1000]
        wait = _limiter().blocked_until(key, current)
        if wait is not None:
            error = f"Too many failed sign-ins from this computer. Try again after {_when(wait)}."
        else:
            result = accounts.check_sign_in(web.db(), username, password, current, _lockout())
            web.db().commit()
            if result.user is None:
                _limiter().record_failure(key, current)
                if result.locked_until is not None:
                    error = (
                        "This account is locked after too many failed sign-ins. "
                        f"Try again after {_when(result.locked_until)}, or ask an admin to reset it."
                    )
                else:
                    error = "The username or password is not right."
            else:
                user = result.user
                nxt = web.safe_next(request.args.get("next"))
                session.clear()
                rotate_csrf_token()
                session["uid"] = user.id
                session["pwd"] = web.password_fingerprint(user)
                session["pending_at"] = int(current.timestamp())
                if nxt:
                    session["next"] = nxt
                if user.totp_secret:
                    session["stage"] = STAGE_TOTP
                    return redirect(url_for("auth.login_code"))
                if accounts.totp_required(user):
                    session["stage"] = STAGE_ENROL
                    return redirect(url_for("auth.enrol"))
                return _finish_sign_in(user)
    return render_template("auth/login.html", error=error), (400 if error and request.method == "POST" else 200)


@bp.route("/login/code", methods=["GET", "POST"])
@web.public
def login_code() -> str | Response | tuple[str, int]:
    user = _pending_user()
    if user is None or session.get("stage") != STAGE_TOTP or not user.totp_secret:
        return redirect(url_for("auth.login"))
    error = None
    if request.method == "POST":
        current = web.now()
        if user.locked_until is not None and user.locked_until > current:
            session.clear()
            return redirect(url_for("auth.login"))
        if totp_guard().verify(user.id, user.totp_secret, request.form.get("code", "")[:20], current):
            user.failed_logins = 0
            return _finish_sign_in(user)
        _count_failure(user)
        if session.get("uid") is None:
            return redirect(url_for("auth.login"))
        error = "That code is not right. Use the current six-digit code from your authenticator app."
        return render_template("auth/code.html", error=error), 400
    return render_template("auth/code.html", error=error)


def _qr_svg(uri: str) -> Markup:
    # segno writes presentation attributes only (no inline style), so the strict CSP holds.
    svg = segno.make(uri, error="m").svg_inline(scale=5, dark="#000", light="#fff", title="TOTP QR code")
    return Markup(svg)  # noqa: S704 - generated by segno from our own URI, no user text


def _enrolment_page(user: ConsoleUser, error: str | None, status: int = 200) -> tuple[str, int]:
    secret = session.get("totp_pending")
    if not isinstance(secret, str):
        secret = accounts.new_totp_secret()
        session["totp_pending"] = secret
    uri = accounts.totp_uri(secret, user.username, f"schoolgate {web.state().config.site.name}")
    spaced = " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))
    return (
        render_template("auth/enrol.html", qr=_qr_svg(uri), secret=spaced, error=error, user=user),
        status,
    )


def _confirm_enrolment(user: ConsoleUser) -> bool:
    secret = session.get("totp_pending")
    code = request.form.get("code", "")[:20]
    if not isinstance(secret, str) or not totp_guard().verify(user.id, secret, code, web.now()):
        return False
    replaced = user.totp_secret is not None
    user.totp_secret = secret
    session.pop("totp_pending", None)
    accounts.audit_user(web.db(), site=web.site_id(), actor=user.username, action="user.totp_enrol", user=user,
                        detail={"replaced": replaced}, now=web.now())
    return True


@bp.route("/login/enrol", methods=["GET", "POST"])
@web.public
def enrol() -> tuple[str, int] | Response:
    """First sign-in of a DSL, headteacher or admin: set up the second factor before going on."""
    user = _pending_user()
    if user is None or session.get("stage") != STAGE_ENROL:
        return redirect(url_for("auth.login"))
    if request.method == "POST":
        if _confirm_enrolment(user):
            return _finish_sign_in(user)
        return _enrolment_page(user, "That code is not right. Scan the QR code again and type the code shown.", 400)
    return _enrolment_page(user, None)


@bp.route("/account", methods=["GET"])
@web.signed_in
def account() -> str:
    return render_template("auth/account.html")


@bp.route("/account/totp", methods=["GET", "POST"])
@web.signed_in
def account_totp() -> tuple[str, int] | Response:
    """Set up (or replace) the second factor from the account page."""
    user = web.current_user()
    assert user is not None
    if request.method == "POST":
        problem = _prove_current_factors(user)
        if problem is not None:
            web.db().commit()  # the counted failure
            return _enrolment_page(user, problem, 400)
        if _confirm_enrolment(user):
            web.db().commit()
            flash("Two-factor sign-in is set up. You will be asked for a code each time you sign in.")
            return redirect(url_for("auth.account"))
        return _enrolment_page(user, "That code is not right. Scan the QR code again and type the code shown.", 400)
    return _enrolment_page(user, None)


def _prove_current_factors(user: ConsoleUser) -> str | None:
    """Replacing the second factor needs the password and the current code: a browser left
    signed in must not let someone move the account's second factor to their own phone."""
    current = web.now()
    if user.locked_until is not None and user.locked_until > current:
        return "Your account is locked after too many failed attempts; try again later."
    if not accounts.verify_password(user, request.form.get("current_password", "")[:1000]):
        _count_failure_keep_session(user)
        return "Your current password is not right, so the second factor was not changed."
    if user.totp_secret and not totp_guard().verify(
        user.id, user.totp_secret, request.form.get("current_code", "")[:20], current
    ):
        _count_failure_keep_session(user)
        return "The code from your current authenticator is not right, so the second factor was not changed."
    return None


def _count_failure_keep_session(user: ConsoleUser) -> None:
    policy = _lockout()
    user.failed_logins = (user.failed_logins or 0) + 1
    if user.failed_logins >= policy.max_failures:
        user.locked_until = web.now() + timedelta(minutes=policy.lock_minutes)
        user.failed_logins = 0


@bp.route("/account/password", methods=["POST"])
@web.signed_in
def change_password() -> Response | tuple[str, int]:
    user = web.current_user()
    assert user is not None
    current_password = request.form.get("current_password", "")
    new = request.form.get("new_password", "")
    if not accounts.verify_password(user, current_password):
        return render_template("auth/account.html", error="Your current password is not right."), 400
    if new != request.form.get("confirm_password", ""):
        return render_template("auth/account.html", error="The two new passwords differ."), 400
    try:
        accounts.reset_password(user, new)
    except AccountError as err:
        return render_template("auth/account.html", error=str(err)), 400
    accounts.audit_user(web.db(), site=web.site_id(), actor=user.username, action="user.change_password", user=user,
                        now=web.now())
    web.db().commit()
    session["pwd"] = web.password_fingerprint(user)  # keep this session; others end
    flash("Your password is changed. Other signed-in browsers have been signed out.")
    return redirect(url_for("auth.account"))


@bp.route("/logout", methods=["POST"])
@web.public
def logout() -> Response:
    session.clear()
    flash("You are signed out.")
    return redirect(url_for("auth.login"))
