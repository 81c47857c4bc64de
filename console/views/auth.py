"""Signing in (password, then a TOTP code), TOTP enrolment, password change, signing out.

Every password check and hash runs with no database transaction open: what it needs is read in
a short transaction first, and the outcome written in another afterwards (see
schoolgate.console.accounts). Wrong passwords and codes are slowed down by the sign-in throttle
(schoolgate.console.throttle), never answered by locking the account, and the replies are the
same whether or not the username exists.
"""

from __future__ import annotations

from datetime import timedelta

import segno
from flask import Blueprint, current_app, flash, redirect, render_template, request, session, url_for
from markupsafe import Markup
from sqlalchemy import update
from werkzeug.wrappers import Response

from schoolgate.console import accounts, known_devices, sessions, web
from schoolgate.console.accounts import AccountError, TotpPurpose
from schoolgate.console.reauth import (
    ReauthFailed,
    confirm_code,
    confirm_password,
    throttle,
    totp_guard,
    wait_text,
)
from schoolgate.console.security import rotate_csrf_token
from schoolgate.console.throttle import account_key, source_key
from schoolgate.store.models import ConsoleUser

bp = Blueprint("auth", __name__)

STAGE_TOTP = "totp"
STAGE_ENROL = "enrol"
STAGE_FULL = "full"
#: How long the half-signed-in state (password right, code still to come) lasts.
PENDING_LIFETIME = timedelta(minutes=5)
NOT_RIGHT = "The username or password is not right."


def _pending_user() -> ConsoleUser | None:
    """The account whose password was right, while its code (or enrolment) is still to come."""
    uid = session.get("uid")
    if not isinstance(uid, int) or session.get("stage") not in (STAGE_TOTP, STAGE_ENROL):
        return None
    with web.read_session() as reading:
        user = reading.get(ConsoleUser, uid)
    if user is None or not user.active or session.get("pwd") != web.password_fingerprint(user.password_hash):
        return None
    started = session.get("pending_at")
    if not isinstance(started, (int, float)) or web.now().timestamp() - started > PENDING_LIFETIME.total_seconds():
        session.clear()
        flash("The sign-in took too long to finish. Please sign in again.")
        return None
    return user


def _attempt(account: str) -> tuple[str, str, str | None]:
    return source_key(request.remote_addr), account, known_devices.device_for(request, account)


def _finish_sign_in(user_id: int) -> Response:
    """Password and code are right: start the session on the server and in the cookie."""
    current = web.now()
    nxt = web.safe_next(session.get("next"))
    db = web.db()
    user = db.get(ConsoleUser, user_id)
    assert user is not None
    user.last_login = current
    lifetime = timedelta(hours=max(1, web.state().config.console.session_max_hours))
    token = sessions.start(db, user, now=current, lifetime=lifetime, client_ip=request.remote_addr)
    handed_over = accounts.password_handed_over(db, user)
    db.commit()
    session.clear()
    rotate_csrf_token()
    session.permanent = True
    session[web.SESSION_TOKEN] = token
    session["uid"] = user.id
    session["stage"] = STAGE_FULL
    session["seen"] = int(current.timestamp())
    if handed_over:
        session[web.MUST_CHOOSE_PASSWORD] = True
        nxt = url_for("auth.account")
    response = redirect(nxt or web.home_url(user))
    secure = bool(current_app.config["SESSION_COOKIE_SECURE"])
    device = known_devices.remember(request, response, user.username, secure=secure)
    throttle().success(account=user.username, device=device)
    return response


def _start_pending(user_id: int, password_hash: str) -> None:
    nxt = web.safe_next(request.args.get("next"))
    session.clear()
    rotate_csrf_token()
    session["uid"] = user_id
    session["pwd"] = web.password_fingerprint(password_hash)
    session["pending_at"] = int(web.now().timestamp())
    if nxt:
        session["next"] = nxt


@bp.route("/login", methods=["GET", "POST"])
@web.public
def login() -> tuple[str, int] | Response:
    if web.current_user() is not None:
        return redirect(web.home_url())
    if request.method == "GET":
        return render_template("auth/login.html", error=None), 200
    current = web.now()
    password = request.form.get("password", "")
    source, account, device = _attempt(account_key(request.form.get("username", "")))
    wait = throttle().wait_until(source=source, account=account, device=device, now=current)
    if wait is not None:
        # Refused before any password is checked, for known and unknown usernames alike.
        return render_template("auth/login.html", error=wait_text(wait)), 429
    with web.read_session() as reading:
        found = accounts.credentials_for(reading, account)
    with web.outside_transaction("checking a password"):
        right = accounts.verify_password(found.password_hash if found is not None else None, password)
        fresh_hash = accounts.rehash_if_needed(found.password_hash, password) if right and found else None
    if found is None or not right or not found.active:
        throttle().failure(source=source, account=account, device=device, now=current)
        return render_template("auth/login.html", error=NOT_RIGHT), 400
    password_hash = found.password_hash
    if fresh_hash is not None:
        db = web.db()
        same = (ConsoleUser.id == found.user_id) & (ConsoleUser.password_hash == password_hash)
        db.execute(update(ConsoleUser).where(same).values(password_hash=fresh_hash))
        db.commit()
        password_hash = fresh_hash
    _start_pending(found.user_id, password_hash)
    if found.totp_secret:
        session["stage"] = STAGE_TOTP
        return redirect(url_for("auth.login_code"))
    if found.second_factor_required:
        session["stage"] = STAGE_ENROL
        return redirect(url_for("auth.enrol"))
    return _finish_sign_in(found.user_id)


@bp.route("/login/code", methods=["GET", "POST"])
@web.public
def login_code() -> str | Response | tuple[str, int]:
    user = _pending_user()
    if user is None or session.get("stage") != STAGE_TOTP or not user.totp_secret:
        return redirect(url_for("auth.login"))
    if request.method == "GET":
        return render_template("auth/code.html", error=None)
    current = web.now()
    source, account, device = _attempt(user.username)
    wait = throttle().wait_until(source=source, account=account, device=device, now=current)
    if wait is not None:
        return render_template("auth/code.html", error=wait_text(wait)), 429
    if totp_guard().verify(user.id, user.totp_secret, request.form.get("code", "")[:20], current, TotpPurpose.SIGN_IN):
        return _finish_sign_in(user.id)
    throttle().failure(source=source, account=account, device=device, now=current)
    error = "That code is not right. Use the current six-digit code from your authenticator app."
    return render_template("auth/code.html", error=error), 400


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


def _new_secret_confirmed(user: ConsoleUser) -> str | None:
    """The secret being set up, if the code typed from it is right."""
    secret = session.get("totp_pending")
    code = request.form.get("code", "")[:20]
    if not isinstance(secret, str) or not totp_guard().verify(user.id, secret, code, web.now(), TotpPurpose.ENROL):
        return None
    return secret


def _store_secret(user: ConsoleUser, secret: str, *, keep: str | None) -> None:
    """Save a confirmed second factor; every other session of the account ends. The caller commits."""
    db = web.db()
    stored = db.get(ConsoleUser, user.id)
    assert stored is not None
    replaced = stored.totp_secret is not None
    stored.totp_secret = secret
    session.pop("totp_pending", None)
    if replaced:
        sessions.end_all(db, stored.id, now=web.now(), reason=sessions.SECOND_FACTOR_RESET, keep=keep)
    accounts.audit_user(db, site=web.site_id(), actor=stored.username, action="user.totp_enrol", user=stored,
                        detail={"replaced": replaced}, now=web.now())


@bp.route("/login/enrol", methods=["GET", "POST"])
@web.public
def enrol() -> tuple[str, int] | Response:
    """First sign-in of a DSL, headteacher or admin: set up the second factor before going on."""
    user = _pending_user()
    if user is None or session.get("stage") != STAGE_ENROL:
        return redirect(url_for("auth.login"))
    if request.method == "POST":
        secret = _new_secret_confirmed(user)
        if secret is not None:
            _store_secret(user, secret, keep=None)
            return _finish_sign_in(user.id)
        return _enrolment_page(user, "That code is not right. Scan the QR code again and type the code shown.", 400)
    return _enrolment_page(user, None)


@bp.route("/account", methods=["GET"])
@web.signed_in
def account() -> str:
    return render_template("auth/account.html")


def _signed_out(err: ReauthFailed) -> Response:
    flash(err.message)
    return redirect(url_for("auth.login"))


@bp.route("/account/totp", methods=["GET", "POST"])
@web.signed_in
def account_totp() -> tuple[str, int] | Response:
    """Set up (or replace) the second factor from the account page.

    Replacing it needs the password and the current code: a browser left signed in must not let
    someone move the account's second factor to their own phone."""
    user = web.current_user()
    assert user is not None
    if request.method == "GET":
        return _enrolment_page(user, None)
    refused = "the second factor was not changed"
    try:
        confirm_password(request.form.get("current_password", ""), refused=refused)
        if user.totp_secret:
            confirm_code(request.form.get("current_code", ""), TotpPurpose.SECOND_FACTOR_CHANGE, refused=refused)
    except ReauthFailed as err:
        if err.signed_out:
            return _signed_out(err)
        return _enrolment_page(user, err.message, 429 if "Try again after" in err.message else 400)
    secret = _new_secret_confirmed(user)
    if secret is None:
        return _enrolment_page(user, "That code is not right. Scan the QR code again and type the code shown.", 400)
    _store_secret(user, secret, keep=web.session_token())
    web.db().commit()
    flash("Two-factor sign-in is set up. You will be asked for a code each time you sign in.")
    return redirect(url_for("auth.account"))


@bp.route("/account/password", methods=["POST"])
@web.signed_in
def change_password() -> Response | tuple[str, int]:
    user = web.current_user()
    assert user is not None
    new = request.form.get("new_password", "")
    if new != request.form.get("confirm_password", ""):
        return render_template("auth/account.html", error="The two new passwords differ."), 400
    try:
        accounts.check_password_strength(new)
        confirm_password(request.form.get("current_password", ""), refused="your password was not changed")
    except AccountError as err:
        return render_template("auth/account.html", error=f"Your password was not changed: {err}."), 400
    except ReauthFailed as err:
        if err.signed_out:
            return _signed_out(err)
        return render_template("auth/account.html", error=err.message), 429 if "Try again after" in err.message else 400
    with web.outside_transaction("hashing a password"):
        new_hash = accounts.hash_password(new)
    db = web.db()
    stored = db.get(ConsoleUser, user.id)
    if stored is None or stored.password_hash != user.password_hash:
        db.rollback()
        return render_template("auth/account.html", error="Your password was changed meanwhile; sign in again."), 409
    stored.password_hash = new_hash
    ended = sessions.end_all(db, stored.id, now=web.now(), reason=sessions.PASSWORD_CHANGED, keep=web.session_token())
    accounts.audit_user(db, site=web.site_id(), actor=stored.username, action="user.change_password", user=stored,
                        detail={"sessions_ended": ended}, now=web.now())
    db.commit()
    session.pop(web.MUST_CHOOSE_PASSWORD, None)
    flash("Your password is changed. Other signed-in browsers have been signed out.")
    return redirect(url_for("auth.account"))


@bp.route("/logout", methods=["POST"])
@web.public
def logout() -> Response:
    token = session.get(web.SESSION_TOKEN)
    if isinstance(token, str):
        db = web.db()
        sessions.end(db, token, now=web.now(), reason=sessions.SIGNED_OUT)
        db.commit()
    session.clear()
    flash("You are signed out.")
    return redirect(url_for("auth.login"))
