"""Per-request plumbing shared by every blueprint: the database session, the clock,
the signed-in user, and the access rule each view declares.

Access is deny-by-default: a view with no declared rule answers 403 to everyone, so a new
route can never be public by accident. Rules are declared with `public`, `signed_in` or
`requires(permission)` (per method where a page reads and writes: `requires(P.VIEW_X,
POST=P.EDIT_X)`); the permissions are the one table's (schoolgate.services.permissions), which the
services check too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from flask import Flask, abort, current_app, flash, g, redirect, request, session, url_for
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.wrappers import Response as WerkzeugResponse

from schoolgate.clock import Clock
from schoolgate.config import AppConfig
from schoolgate.console.policyref import ConsolePolicy, PolicyUnavailable
from schoolgate.policy import CompiledPolicy
from schoolgate.services.actor import Actor
from schoolgate.services.common import SiteScope
from schoolgate.services.keywords import KeywordList
from schoolgate.services.permissions import ConsoleRole, Permission
from schoolgate.store.models import ConsoleUser

F = TypeVar("F", bound=Callable[..., Any])
EXTENSION = "schoolgate"

ACCESS_ATTR = "_console_access"
#: Set at sign-in when someone else set the account's password (accounts.password_handed_over):
#: until its holder chooses their own, only their account page (and signing out) is open.
MUST_CHOOSE_PASSWORD = "must_choose_password"  # noqa: S105 (a session key, not a password)
#: The cookie key holding the server-side session's token.
SESSION_TOKEN = "sid"  # noqa: S105 (a cookie key, not a secret)
TOKEN_ATTR = "_console_token"  # noqa: S105 (an attribute name) - the bearer-token check of token_or
PUBLIC = "public"
SIGNED_IN = "signed_in"


@dataclass
class ConsoleState:
    """What the app factory wires in; kept in `app.extensions["schoolgate"]`."""

    config: AppConfig
    session_factory: sessionmaker[Session]
    read_session_factory: sessionmaker[Session]
    clock: Clock


def state(app: Flask | None = None) -> ConsoleState:
    return cast(ConsoleState, (app or current_app).extensions[EXTENSION])


def db() -> Session:
    """The request's database session, opened on first use and closed at teardown.

    GET requests only read, so on SQLite they get a deferred transaction that never takes the
    write lock: a slow page must not hold up the DNS and proxy event writers.
    """
    if "db" not in g:
        reading = request.method in ("GET", "HEAD")
        g.db = (state().read_session_factory if reading else state().session_factory)()
    return cast(Session, g.db)


def close_db(_error: BaseException | None = None) -> None:
    session_ = g.pop("db", None)
    if session_ is not None:
        session_.close()


def now() -> datetime:
    return state().clock.now()


#: The trust admin's choice of "all schools" in the school switcher.
WHOLE_TRUST = "*"
SITE_CHOICE = "site_view"


def _is_trust_admin(user: ConsoleUser | None) -> bool:
    return user is not None and user.site is None and ConsoleRole.TRUST_ADMIN.value in user.role_names


def site_id() -> str:
    """The one school this request works in.

    Signed out (the public request form): the appliance's own school. A school's account: the
    school on the account, whichever appliance's console it signs in to, so one central trust
    database never shows a school another school's rows. A trust admin: the school chosen in
    the switcher (the appliance's own school while "whole trust" is chosen).
    """
    user = current_user()
    if user is None:
        return state().config.site.id
    if _is_trust_admin(user):
        choice = session.get(SITE_CHOICE)
        if isinstance(choice, str) and choice != WHOLE_TRUST and choice in visible_sites():
            return choice
        return state().config.site.id
    return user.site or state().config.site.id


def site_scope() -> SiteScope:
    """The schools a list or a record lookup may cover: the chosen one, or the whole trust."""
    user = current_user()
    if _is_trust_admin(user) and session.get(SITE_CHOICE, WHOLE_TRUST) == WHOLE_TRUST:
        return tuple(visible_sites())
    return site_id()


def visible_sites() -> list[str]:
    """Every school the signed-in user may look at (a trust admin: all in `sites`)."""
    if "visible_sites" not in g:
        user = current_user()
        if _is_trust_admin(user):
            from sqlalchemy import select

            from schoolgate.store.models import Site

            known = set(db().scalars(select(Site.id)))
            known.add(state().config.site.id)
            g.visible_sites = sorted(known)
        else:
            g.visible_sites = [site_id()]
    return cast(list[str], g.visible_sites)


def site_names() -> dict[str, str]:
    """Site id -> school name, for the switcher and for labelling rows in the whole-trust view."""
    from sqlalchemy import select

    from schoolgate.store.models import Site

    names = {row.id: row.name for row in db().scalars(select(Site).where(Site.id.in_(visible_sites())))}
    names.setdefault(state().config.site.id, state().config.site.name)
    return {site: names.get(site, site) for site in visible_sites()}


def whole_trust() -> bool:
    return not isinstance(site_scope(), str)


def public(view: F) -> F:
    setattr(view, ACCESS_ATTR, PUBLIC)
    return view


def signed_in(view: F) -> F:
    setattr(view, ACCESS_ATTR, SIGNED_IN)
    return view


def requires(permission: Permission, **by_method: Permission) -> Callable[[F], F]:
    """The permission a view needs; `by_method` overrides it for some methods (POST=...)."""
    rules: dict[str, Permission] = {"*": permission, **{m.upper(): p for m, p in by_method.items()}}

    def mark(view: F) -> F:
        setattr(view, ACCESS_ATTR, rules)
        return view

    return mark


def token_or(token_ok: Callable[[], bool]) -> Callable[[F], F]:
    """Also let in a machine whose request passes `token_ok` (a Prometheus scraper or a SIEM with
    the bearer token), without a session. Goes above `requires(...)`, which people still need."""

    def mark(view: F) -> F:
        setattr(view, TOKEN_ATTR, token_ok)
        return view

    return mark


def access_rule(app: Flask, endpoint: str, method: str = "GET") -> str | Permission | None:
    """PUBLIC, SIGNED_IN, the Permission that `method` on `endpoint` needs, or None (undeclared)."""
    view = app.view_functions.get(endpoint)
    rule = getattr(view, ACCESS_ATTR, None) if view is not None else None
    if isinstance(rule, dict):
        method = "GET" if method == "HEAD" else method.upper()
        return cast(Permission, rule.get(method, rule["*"]))
    return cast(str | None, rule)


def password_fingerprint(password_hash: str) -> str:
    """Ties a half-finished sign-in (password right, code to come) to the password it checked."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:24]


@contextmanager
def read_session() -> Iterator[Session]:
    """A short read of its own (SQLite: a deferred transaction, no write lock), closed at the end.

    For what a request must know before a slow step (a password hash to check), so that the
    request's own session has no transaction open while it hashes."""
    reading = state().read_session_factory()
    try:
        yield reading
    finally:
        reading.close()


@contextmanager
def outside_transaction(what: str) -> Iterator[None]:
    """Mark a slow step (hashing a password, sending mail): it must not run while the request
    holds a database transaction, which on SQLite would hold the write lock that the DNS and
    proxy log writers and every other request need. Raises rather than stall the appliance."""
    _refuse_open_transaction(what)
    yield
    _refuse_open_transaction(what)


def _refuse_open_transaction(what: str) -> None:
    request_db = g.get("db")
    if request_db is not None and request_db.in_transaction():
        raise RuntimeError(f"a database transaction is open across {what}")


def session_token() -> str | None:
    """The signed-in browser's session token (see schoolgate.console.sessions)."""
    token = session.get(SESSION_TOKEN)
    return token if isinstance(token, str) and current_user() is not None else None


def current_user() -> ConsoleUser | None:
    return cast(ConsoleUser | None, g.get("user"))


def policy_grants() -> dict[Permission, frozenset[str]]:
    """What the school's policy adds to the permission table (POLICY_GRANTS): the headteacher
    reads safeguarding detail where `[school] safeguarding_readers` names her."""
    try:
        readers = policy().school.safeguarding_readers
    except PolicyUnavailable:
        return {}
    return {Permission.READ_SAFEGUARDING_DETAIL: frozenset(readers)}


def keywords() -> KeywordList | None:
    """The safeguarding term list the alerts use ([alerts] keywords_file), loaded once; None if
    it cannot be read (then every search is withheld from those who may not read them)."""
    return cast(KeywordList | None, current_app.extensions.get("schoolgate.keywords"))


def actor() -> Actor:
    """The signed-in person as the services see them, with their permissions from the table."""
    user = current_user()
    if user is None:
        abort(401)
    if "actor" not in g:
        g.actor = Actor.from_user(user, policy_grants())
    return cast(Actor, g.actor)


def can(permission: Permission) -> bool:
    """Whether the signed-in person holds `permission`: route guards and templates ask this."""
    return current_user() is not None and actor().may(permission)


#: Where a signed-in person starts: the first of these pages their permissions reach.
HOME_PAGES: tuple[tuple[Permission, str], ...] = (
    (Permission.VIEW_DASHBOARD, "dashboard.index"),
    (Permission.OPEN_FOR_LESSON, "lessons.open_site"),
    (Permission.VIEW_SOCIAL_MEDIA_SITES, "social.index"),
)


def home_url(user: ConsoleUser | None = None) -> str:
    """The dashboard, or for a role without one (a teacher), the page of its one power.
    `user`: someone just signed in, before the request knows them."""
    from schoolgate.services.permissions import permissions_of

    who = user or current_user()
    held = permissions_of(who.role_names, policy_grants()) if who is not None else frozenset()
    for permission, endpoint in HOME_PAGES:
        if permission in held:
            return url_for(endpoint)
    return url_for("auth.account")


def safe_next(target: str | None) -> str | None:
    """Only same-site paths are followed after sign-in (no open redirect)."""
    if not target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return None
    if "\\" in target or any(ord(c) < 32 for c in target):
        return None
    return target


def _to_login() -> WerkzeugResponse:
    nxt = request.full_path if request.method == "GET" else None
    if nxt and nxt.endswith("?"):
        nxt = nxt[:-1]
    return redirect(url_for("auth.login", next=nxt))


def load_session_user() -> None:
    """Restore the signed-in user from the server's session row; end idle sessions."""
    from schoolgate.console import sessions

    g.user = None
    if session.get("stage") != "full":
        return
    token = session.get(SESSION_TOKEN)
    current = now()
    idle = timedelta(minutes=state().config.console.session_minutes)
    last_seen = session.get("seen")
    if not isinstance(last_seen, (int, float)) or current.timestamp() - last_seen > idle.total_seconds():
        end_session_quietly(token if isinstance(token, str) else None, sessions.IDLE)
        session.clear()
        flash("Your session ended after a period of inactivity. Please sign in again.")
        return
    with read_session() as reading:
        row = sessions.find(reading, token if isinstance(token, str) else None)
        user = reading.get(ConsoleUser, row.user_id) if row is not None else None
    if row is None or user is None or row.user_id != session.get("uid"):
        session.clear()
        return
    if not sessions.is_live(row, current):
        session.clear()
        if row.ended_at is None:
            # However busy, a sign-in ends: a cookie stolen from a shared staff-room PC dies with it.
            hours = max(1, state().config.console.session_max_hours)
            flash(f"Sign-ins last at most {hours:g} hours. Please sign in again.")
        elif row.ended_reason not in (sessions.SIGNED_OUT, sessions.IDLE):
            flash(f"You were signed out ({row.ended_reason}). Please sign in again.")
        return
    if not user.active:
        end_session_quietly(token if isinstance(token, str) else None, sessions.DISABLED)
        session.clear()
        return
    g.user = user
    # Only page views count as activity, not the static files a page pulls in.
    if request.endpoint != "static":
        session["seen"] = int(current.timestamp())


def end_session_quietly(token: str | None, reason: str) -> None:
    """End a session row in a short transaction of its own (the request's session is untouched)."""
    from schoolgate.console import sessions

    if not token:
        return
    with state().session_factory() as writing:
        sessions.end(writing, token, now=now(), reason=reason)
        writing.commit()


def enforce_access() -> WerkzeugResponse | None:
    endpoint = request.endpoint
    if endpoint is None:
        return None  # 404 / 405: let Flask answer
    if endpoint == "static":
        return None
    rule = access_rule(current_app, endpoint, request.method)
    if rule is None:
        abort(403)
    if rule == PUBLIC:
        return None
    token_ok = getattr(current_app.view_functions.get(endpoint), TOKEN_ATTR, None)
    if token_ok is not None and token_ok():
        return None
    user = current_user()
    if user is None:
        return _to_login()
    if rule == SIGNED_IN:
        return None
    if session.get(MUST_CHOOSE_PASSWORD):
        flash("Choose your own password before going on: whoever set the one you were given has seen it.")
        return redirect(url_for("auth.account"))
    if not can(cast(Permission, rule)):
        abort(403)
    return None


def policy_ref() -> ConsolePolicy:
    return cast(ConsolePolicy, current_app.extensions["schoolgate.policy"])


def policy() -> CompiledPolicy:
    """The current compiled policy file (see schoolgate.console.policyref)."""
    return policy_ref().get()


def zone() -> tzinfo:
    """The school's time zone: the policy's `[school] timezone`, the one source of it (UTC only
    while no version of the policy has ever loaded). Read once per request."""
    cached = g.get("school_zone")
    if cached is None:
        try:
            cached = policy().school.zone
        except PolicyUnavailable:
            cached = UTC
        g.school_zone = cached
    return cast(tzinfo, cached)


def today(in_policy: CompiledPolicy | None = None) -> date:
    """Today's date at the school."""
    return now().astimezone(in_policy.school.zone if in_policy is not None else zone()).date()


def error_status(error: Exception) -> int:
    """The HTTP status that matches a service's refusal."""
    from schoolgate.services import errors

    if isinstance(error, errors.NotFound):
        return 404
    if isinstance(error, errors.Forbidden):
        return 403
    if isinstance(error, errors.InvalidTransition):
        return 409
    if isinstance(error, errors.RateLimited):
        return 429
    return 400


def field_errors(error: Exception) -> dict[str, str]:
    field = getattr(error, "field", None)
    message = getattr(error, "message", str(error))
    return {field: message} if field else {}


def int_arg(name: str, default: int, *, low: int = 0, high: int = 1_000_000) -> int:
    try:
        value = int(request.args.get(name, default))
    except (TypeError, ValueError):
        return default
    return max(low, min(high, value))
