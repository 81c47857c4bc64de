"""Console accounts: add people, give and take roles, reset passwords and second factors.

An admin manages accounts; the DSL and headteacher roles, and the accounts holding them, are
the headteacher's (schoolgate.console.duties): she gives or takes those roles and resets those
accounts, confirming it is her each time, and a headteacher's own account is reset by two
admins. Passwords are hashed before any transaction opens.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from sqlalchemy import select

from schoolgate.console import accounts, duties, sessions, web
from schoolgate.console.accounts import AccountError
from schoolgate.console.csvout import csv_response, wants_csv
from schoolgate.console.reauth import ReauthFailed, sign, throttle
from schoolgate.services import notices
from schoolgate.services.permissions import GUARDED_ROLES, ROLES, ConsoleRole, parse_roles
from schoolgate.services.permissions import Permission as Perm
from schoolgate.store.models import ConsoleUser

bp = Blueprint("admin", __name__, url_prefix="/users")

#: The roles a school's account may hold, as the accounts pages describe them.
ROLE_TEXT = {spec.role: f"{spec.title}: {spec.summary}" for spec in ROLES.values() if not spec.trust_wide}
#: The roles an admin gives when adding an account (the guarded ones are the headteacher's).
ADMIN_ROLE_TEXT = {role: text for role, text in ROLE_TEXT.items() if role not in GUARDED_ROLES}
GUARDED_ROLE_TEXT = {role: text for role, text in ROLE_TEXT.items() if role in GUARDED_ROLES}


def _audit(action: str, user: ConsoleUser, detail: dict[str, Any]) -> None:
    accounts.audit_user(web.db(), site=web.site_id(), actor=web.actor().name, action=action, user=user,
                        detail=detail, now=web.now())


def _site_users() -> Any:
    site = web.site_id()
    # Trust-wide accounts (no site) are the trust's to manage, never a school admin's.
    return select(ConsoleUser).where(ConsoleUser.site == site)


def _load(user_id: int) -> ConsoleUser:
    user = web.db().get(ConsoleUser, user_id)
    if user is None or user.site != web.site_id():
        abort(404)
    return user


def _read(user_id: int) -> ConsoleUser:
    """The account, from a short read of its own (before a password is checked or hashed)."""
    with web.read_session() as reading:
        user = reading.get(ConsoleUser, user_id)
    if user is None or user.site != web.site_id():
        abort(404)
    return user


def _me() -> ConsoleUser:
    me = web.current_user()
    assert me is not None
    return me


@bp.route("")
@web.requires(Perm.VIEW_USERS)
def users() -> Any:
    rows = web.db().scalars(_site_users().order_by(ConsoleUser.username)).all()
    slowed = throttle().slowed_accounts((u.username for u in rows), web.now())
    if wants_csv():
        return csv_response("console-users.csv", ["username", "display_name", "roles", "active", "totp", "last_login"],
                            ([u.username, u.display_name, " ".join(sorted(u.role_names)), u.active,
                              bool(u.totp_secret), u.last_login] for u in rows))
    return render_template("admin/users.html", users=rows, now=web.now(), slowed=slowed)


@bp.route("/new", methods=["GET", "POST"])
@web.requires(Perm.MANAGE_USERS)
def new() -> Any:
    if request.method == "GET":
        return render_template("admin/new.html", values={}, role_text=ADMIN_ROLE_TEXT, error=None)
    form = request.form
    values: dict[str, Any] = {k: form.get(k, "") for k in ("username", "display_name", "email")}
    values["roles"] = form.getlist("roles")
    try:
        roles = parse_roles(form.getlist("roles"))
        guarded = accounts.guarded_roles_of(roles)
        if guarded:
            raise duties.DutyRefused(
                "Only the headteacher can give the DSL or headteacher role: add the account without it, "
                "then ask the headteacher."
            )
    except (AccountError, ValueError) as err:
        status = 403 if isinstance(err, duties.DutyRefused) else 400
        return render_template("admin/new.html", values=values, role_text=ADMIN_ROLE_TEXT, error=str(err)), status
    password = accounts.generate_password()
    with web.outside_transaction("hashing a password"):
        password_hash = accounts.hash_password(password)
    try:
        user = accounts.create_user(
            web.db(), username=values["username"], display_name=values["display_name"], roles=roles,
            password_hash=password_hash, site=web.site_id(), email=values["email"] or None,
        )
        _audit("user.create", user, {"roles": sorted(user.role_names)})
    except (AccountError, ValueError) as err:
        web.db().rollback()
        return render_template("admin/new.html", values=values, role_text=ADMIN_ROLE_TEXT, error=str(err)), 400
    web.db().commit()
    return render_template("admin/password.html", user=user, password=password, created=True)


def _edit_page(user: ConsoleUser, error: str | None, status: int = 200) -> Any:
    now = web.now()
    slowed = throttle().slowed_accounts([user.username], now).get(user.username)
    routes = duties.reset_routes(user)
    pending = {kind: duties.pending_reset(web.db(), user, kind, now) for kind in duties.RESET_KINDS}
    return render_template(
        "admin/edit.html", user=user, role_text=ROLE_TEXT, guarded_role_text=GUARDED_ROLE_TEXT,
        guarded_roles={r.value for r in GUARDED_ROLES}, holds_guarded=bool(accounts.guarded_roles_of(user.role_names)),
        error=error, slowed=slowed, routes={r.value for r in routes}, pending=pending,
        is_me=user.id == _me().id,
    ), status


def _contact_change(user: ConsoleUser, email: str | None) -> dict[str, Any]:
    """For the audit entry: the e-mail address before and after, when it changes."""
    return {"email_before": user.email, "email": email} if email != user.email else {}


def _tell_of_address_change(user: ConsoleUser, contact: dict[str, Any]) -> None:
    """A changed address is its own audit entry, which the notifications job mails to the old and
    the new address (schoolgate.services.notices)."""
    if "email_before" in contact:
        _audit(notices.ADDRESS_CHANGED, user, {"username": user.username, "email_before": contact["email_before"],
                                              "email": contact["email"]})


def _end_sessions(user: ConsoleUser, reason: str) -> int:
    keep = web.session_token() if user.id == _me().id else None
    return sessions.end_all(web.db(), user.id, now=web.now(), reason=reason, keep=keep)


@bp.route("/<int:user_id>", methods=["GET", "POST"])
@web.requires(Perm.VIEW_USERS, POST=Perm.MANAGE_USERS)
def edit(user_id: int) -> Any:
    user = _load(user_id)
    if request.method == "GET":
        return _edit_page(user, None)
    me = _me()
    try:
        roles = duties.roles_an_admin_may_set(user, parse_roles(request.form.getlist("roles")))
        active = request.form.get("active") == "1"
        if user.id == me.id and (ConsoleRole.ADMIN not in roles or not active):
            raise AccountError("You cannot remove your own admin role or disable your own account.")
        duties.check_admin_may_disable(user, active)
        before = sorted(user.role_names)
        accounts.set_roles(user, roles)
        user.active = active
        display_name = " ".join(request.form.get("display_name", "").split())
        email = request.form.get("email", "").strip()
        if len(display_name) > 200 or len(email) > 200:
            raise AccountError("The name and the e-mail address are each at most 200 characters.")
        receives_digest = request.form.get("receives_digest") == "1"
        duties.check_admin_may_change_contact(user, email=email or None, receives_digest=receives_digest,
                                              acting_user_id=me.id)
        contact = _contact_change(user, email or None)
        user.display_name = display_name or user.display_name
        user.email = email or None
        user.receives_digest = receives_digest
        web.db().flush()
        ended = 0
        if before != sorted(user.role_names) or not active:
            # What the account may do changed: its browsers sign in again under the new roles.
            ended = _end_sessions(user, sessions.ROLES_CHANGED if active else sessions.DISABLED)
        _audit("user.update", user, {"roles_before": before, "roles": sorted(user.role_names), "active": active,
                                     "receives_digest": user.receives_digest, "sessions_ended": ended, **contact})
        _tell_of_address_change(user, contact)
    except (AccountError, ValueError) as err:
        web.db().rollback()
        return _edit_page(_load(user_id), str(err), 403 if isinstance(err, duties.DutyRefused) else 400)
    web.db().commit()
    flash(f"{user.username} saved.")
    return redirect(url_for("admin.users"))


def _signature(user_id: int) -> str | Any:
    """The headteacher's confirmation for a guarded change: her password and code, checked with
    no transaction open. The signature's text, or the page to show instead."""
    try:
        signature = sign(_me().display_name, request.form.get("password", ""), request.form.get("code", ""))
    except ReauthFailed as err:
        if err.signed_out:
            flash(err.message)
            return redirect(url_for("auth.login"))
        return _edit_page(_load(user_id), err.message, 429 if "Try again after" in err.message else 400)
    return signature.as_text()


@bp.route("/<int:user_id>/guarded-roles", methods=["POST"])
@web.requires(Perm.GRANT_GUARDED_ROLES)
def guarded_roles(user_id: int) -> Any:
    """The headteacher gives or takes the DSL and headteacher roles, confirming it is her."""
    target = _read(user_id)
    try:
        wanted = parse_roles(request.form.getlist("guarded"))
        roles = duties.roles_the_headteacher_sets(target, wanted, acting_user_id=_me().id)
        accounts.check_account_scope(roles, target.site)
    except (AccountError, ValueError) as err:
        return _edit_page(_load(user_id), str(err), 403 if isinstance(err, duties.DutyRefused) else 400)
    signature = _signature(user_id)
    if not isinstance(signature, str):
        return signature
    user = _load(user_id)
    before = sorted(user.role_names)
    contact: dict[str, Any] = {}
    try:
        accounts.set_roles(user, roles)
        if "email" in request.form:  # the form sets the address too: a DSL's cases go to it
            email = request.form.get("email", "").strip()
            if len(email) > 200:
                raise AccountError("The e-mail address is at most 200 characters.")
            contact = _contact_change(user, email or None)
            user.email = email or None
            user.receives_digest = request.form.get("receives_digest") == "1"
            contact["receives_digest"] = user.receives_digest
    except AccountError as err:
        web.db().rollback()
        return _edit_page(_load(user_id), str(err), 400)
    web.db().flush()
    ended = _end_sessions(user, sessions.ROLES_CHANGED) if before != sorted(user.role_names) else 0
    _audit("user.guarded_roles", user, {"roles_before": before, "roles": sorted(user.role_names),
                                        "signature": signature, "sessions_ended": ended, **contact})
    _tell_of_address_change(user, contact)
    web.db().commit()
    flash(f"{user.username}'s roles are now: {', '.join(sorted(user.role_names))}.")
    return redirect(url_for("admin.edit", user_id=user.id))


def _do_reset(user: ConsoleUser, kind: str, password_hash: str | None, detail: dict[str, Any],
              action: str = "user.reset_{kind}") -> None:
    """Reset the password (to `password_hash`) or the second factor; the account's sessions end."""
    if kind == "password":
        assert password_hash is not None
        user.password_hash = password_hash
        ended = sessions.end_all(web.db(), user.id, now=web.now(), reason=sessions.RESET_BY_ADMIN)
        throttle().forgive_account(user.username)
    else:
        user.totp_secret = None
        ended = sessions.end_all(web.db(), user.id, now=web.now(), reason=sessions.SECOND_FACTOR_RESET)
    _audit(action.format(kind=kind), user, {**detail, "sessions_ended": ended})


def _reset_done(user: ConsoleUser, kind: str, password: str | None) -> Any:
    if kind == "password":
        return render_template("admin/password.html", user=user, password=password, created=False)
    flash(f"{user.username} will set up two-factor sign-in again at their next sign-in.")
    return redirect(url_for("admin.edit", user_id=user.id))


def _admin_reset(user_id: int, kind: str) -> Any:
    """An admin's reset: at once for an ordinary account; for a headteacher's account, the first
    admin asks and a second confirms; never for a DSL's (that is the headteacher's)."""
    password = accounts.generate_password() if kind == "password" else None
    if password is not None:
        with web.outside_transaction("hashing a password"):
            password_hash: str | None = accounts.hash_password(password)
    else:
        password_hash = None
    user = _load(user_id)
    admin = web.actor().name
    try:
        request_row = duties.admin_reset(web.db(), user, kind, admin=admin, now=web.now())
    except duties.DutyRefused as err:
        web.db().rollback()
        return _edit_page(_load(user_id), str(err), 403)
    if request_row is not None and request_row.completed_at is None:
        _audit(f"user.reset_{kind}_requested", user, {"request": request_row.id})
        web.db().commit()
        flash(f"Reset asked for. {user.username} holds the headteacher role, so a second admin must confirm it "
              "(within 24 hours) by pressing the same button.")
        return redirect(url_for("admin.edit", user_id=user.id))
    if request_row is None:
        _do_reset(user, kind, password_hash, {})
    else:  # the second admin's confirmation of a headteacher's reset: the headteachers are told
        _do_reset(user, kind, password_hash,
                  {"requested_by": request_row.requested_by, "confirmed_by": admin, "request": request_row.id},
                  action="user.reset_{kind}_confirmed")
    web.db().commit()
    return _reset_done(user, kind, password)


@bp.route("/<int:user_id>/reset-password", methods=["POST"])
@web.requires(Perm.MANAGE_USERS)
def reset_password(user_id: int) -> Any:
    return _admin_reset(user_id, "password")


@bp.route("/<int:user_id>/reset-totp", methods=["POST"])
@web.requires(Perm.MANAGE_USERS)
def reset_totp(user_id: int) -> Any:
    """For a lost phone: the user sets up a new authenticator at their next sign-in."""
    return _admin_reset(user_id, "totp")


@bp.route("/<int:user_id>/guarded-reset", methods=["POST"])
@web.requires(Perm.GRANT_GUARDED_ROLES)
def guarded_reset(user_id: int) -> Any:
    """The headteacher resets a DSL's (or another headteacher's) password or second factor."""
    kind = request.form.get("kind", "")
    target = _read(user_id)
    try:
        if kind not in duties.RESET_KINDS:
            raise AccountError("Choose the password or the second factor.")
        duties.check_headteacher_may_reset(target, acting_user_id=_me().id)
    except AccountError as err:
        return _edit_page(_load(user_id), str(err), 403 if isinstance(err, duties.DutyRefused) else 400)
    signature = _signature(user_id)
    if not isinstance(signature, str):
        return signature
    password = accounts.generate_password() if kind == "password" else None
    password_hash = None
    if password is not None:
        with web.outside_transaction("hashing a password"):
            password_hash = accounts.hash_password(password)
    user = _load(user_id)
    _do_reset(user, kind, password_hash, {"signature": signature})
    web.db().commit()
    return _reset_done(user, kind, password)


@bp.route("/<int:user_id>/unlock", methods=["POST"])
@web.requires(Perm.MANAGE_USERS)
def unlock(user_id: int) -> Any:
    user = _load(user_id)
    throttle().forgive_account(user.username)
    _audit("user.unlock", user, {})
    web.db().commit()
    flash(f"Sign-ins to {user.username} no longer wait.")
    return redirect(url_for("admin.edit", user_id=user.id))
