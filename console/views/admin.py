"""Console accounts: add people, give and take roles, reset passwords and second factors."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from sqlalchemy import select

from schoolgate.console import accounts, sessions, web
from schoolgate.console.accounts import AccountError
from schoolgate.console.csvout import csv_response, wants_csv
from schoolgate.console.reauth import throttle
from schoolgate.services.permissions import ROLES, ConsoleRole, parse_roles
from schoolgate.services.permissions import Permission as Perm
from schoolgate.store.models import ConsoleUser

bp = Blueprint("admin", __name__, url_prefix="/users")

#: The roles a school's account may hold, as the accounts pages describe them.
ROLE_TEXT = {spec.role: f"{spec.title}: {spec.summary}" for spec in ROLES.values() if not spec.trust_wide}


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


@bp.route("")
@web.requires(Perm.MANAGE_USERS)
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
        return render_template("admin/new.html", values={}, role_text=ROLE_TEXT, error=None)
    form = request.form
    values: dict[str, Any] = {k: form.get(k, "")[:200] for k in ("username", "display_name", "email")}
    values["roles"] = form.getlist("roles")
    password = accounts.generate_password()
    with web.outside_transaction("hashing a password"):
        password_hash = accounts.hash_password(password)
    try:
        user = accounts.create_user(
            web.db(), username=values["username"], display_name=values["display_name"],
            roles=parse_roles(form.getlist("roles")), password_hash=password_hash, site=web.site_id(),
            email=values["email"] or None,
        )
        _audit("user.create", user, {"roles": sorted(user.role_names)})
    except (AccountError, ValueError) as err:
        web.db().rollback()
        return render_template("admin/new.html", values=values, role_text=ROLE_TEXT, error=str(err)), 400
    web.db().commit()
    return render_template("admin/password.html", user=user, password=password, created=True)


def _edit_page(user: ConsoleUser, error: str | None, status: int = 200) -> Any:
    slowed = throttle().slowed_accounts([user.username], web.now()).get(user.username)
    return render_template("admin/edit.html", user=user, role_text=ROLE_TEXT, error=error, slowed=slowed), status


@bp.route("/<int:user_id>", methods=["GET", "POST"])
@web.requires(Perm.MANAGE_USERS)
def edit(user_id: int) -> Any:
    user = _load(user_id)
    if request.method == "GET":
        return _edit_page(user, None)
    me = web.current_user()
    assert me is not None
    try:
        roles = parse_roles(request.form.getlist("roles"))
        active = request.form.get("active") == "1"
        if user.id == me.id and (ConsoleRole.ADMIN not in roles or not active):
            raise AccountError("You cannot remove your own admin role or disable your own account.")
        before = sorted(user.role_names)
        accounts.set_roles(user, roles)
        user.active = active
        user.display_name = request.form.get("display_name", user.display_name)[:200].strip() or user.display_name
        user.email = request.form.get("email", "")[:200].strip() or None
        user.receives_digest = request.form.get("receives_digest") == "1"
        web.db().flush()
        ended = 0
        if before != sorted(user.role_names) or not active:
            # What the account may do changed: its other browsers sign in again under the new roles.
            reason = sessions.ROLES_CHANGED if active else sessions.DISABLED
            ended = sessions.end_all(web.db(), user.id, now=web.now(), reason=reason,
                                     keep=web.session_token() if user.id == me.id else None)
        _audit("user.update", user, {"roles_before": before, "roles": sorted(user.role_names), "active": active,
                                     "receives_digest": user.receives_digest, "sessions_ended": ended})
    except (AccountError, ValueError) as err:
        web.db().rollback()
        return _edit_page(_load(user_id), str(err), 400)
    web.db().commit()
    flash(f"{user.username} saved.")
    return redirect(url_for("admin.users"))


@bp.route("/<int:user_id>/reset-password", methods=["POST"])
@web.requires(Perm.MANAGE_USERS)
def reset_password(user_id: int) -> Any:
    password = accounts.generate_password()
    with web.outside_transaction("hashing a password"):
        password_hash = accounts.hash_password(password)
    user = _load(user_id)
    user.password_hash = password_hash
    ended = sessions.end_all(web.db(), user.id, now=web.now(), reason=sessions.RESET_BY_ADMIN)
    throttle().forgive_account(user.username)
    _audit("user.reset_password", user, {"sessions_ended": ended})
    web.db().commit()
    return render_template("admin/password.html", user=user, password=password, created=False)


@bp.route("/<int:user_id>/reset-totp", methods=["POST"])
@web.requires(Perm.MANAGE_USERS)
def reset_totp(user_id: int) -> Any:
    """For a lost phone: the user sets up a new authenticator at their next sign-in."""
    user = _load(user_id)
    user.totp_secret = None
    ended = sessions.end_all(web.db(), user.id, now=web.now(), reason=sessions.SECOND_FACTOR_RESET)
    _audit("user.reset_totp", user, {"sessions_ended": ended})
    web.db().commit()
    flash(f"{user.username} will set up two-factor sign-in again at their next sign-in.")
    return redirect(url_for("admin.edit", user_id=user.id))


@bp.route("/<int:user_id>/unlock", methods=["POST"])
@web.requires(Perm.MANAGE_USERS)
def unlock(user_id: int) -> Any:
    user = _load(user_id)
    throttle().forgive_account(user.username)
    _audit("user.unlock", user, {})
    web.db().commit()
    flash(f"{user.username} is unlocked.")
    return redirect(url_for("admin.edit", user_id=user.id))
