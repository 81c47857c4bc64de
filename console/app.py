"""The console's Flask application factory."""

from __future__ import annotations

import os
import secrets
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from flask import Flask, render_template, request
from markupsafe import Markup
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.exceptions import HTTPException

from schoolgate.clock import Clock, SystemClock
from schoolgate.config import AppConfig
from schoolgate.console import security, web
from schoolgate.console.accounts import TotpReplayGuard
from schoolgate.console.policyref import ConsolePolicy
from schoolgate.console.text import printable
from schoolgate.console.throttle import SignInThrottle, ThrottleSettings
from schoolgate.services.permissions import Permission
from schoolgate.timewords import local, short_day_words, short_instant_words


def display_text(value: Any) -> Any:
    """Applied to every `{{ }}` output: see schoolgate.console.text.printable."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return printable(value)
    return value


def local_time(moment: datetime | None) -> str:
    """A time shown on a page, in the school's time zone and in words: "Mon 9 Mar, 1:05 pm"
    (the year when it is not this year's). One helper for every time shown to a person:
    schoolgate.timewords."""
    if moment is None:
        return ""
    return short_instant_words(moment, web.zone(), now=web.now())


def local_date(moment: datetime | date | None) -> str:
    """A date shown on a page: "Mon 9 Mar" (the year when it is not this year's)."""
    if moment is None:
        return ""
    today = web.today()
    if isinstance(moment, datetime):
        moment = local(moment, web.zone()).date()
    return short_day_words(moment, today=today)


def load_secret_key(config: AppConfig) -> bytes:
    """The key that signs session cookies; created (owner-only) on first start."""
    path = Path(config.console.secret_key_file or config.data_dir / "console-secret")
    try:
        key = path.read_bytes().strip()
        if len(key) >= 32:
            return key
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key + b"\n")
    return key


def _load_keywords(config: AppConfig) -> Any:
    """The safeguarding term list (as the alerts read it), or None if it cannot be read."""
    import logging

    from schoolgate.services.keywords import KeywordList

    try:
        return KeywordList.load(config.alerts.keywords_file or None)
    except Exception as err:  # withheld from everyone but the DSL is the safe side
        logging.getLogger(__name__).error("safeguarding term list unreadable (%s): searches are withheld", err)
        return None


def _default_session_factory(config: AppConfig) -> sessionmaker[Session]:
    from schoolgate.store.db import make_engine, session_factory

    return session_factory(make_engine(config.database_url))


def _decode_bad_text(writing: sessionmaker[Session]) -> None:
    """Let a page show text that is not valid UTF-8 instead of failing.

    Every daemon writes UTF-8, but a row written by other means (a restored backup, a
    hand-made import) could hold other bytes; SQLite would then refuse to read the whole page.
    Such bytes come back as surrogate escapes, which `printable` shows as \\xNN.
    """
    from sqlalchemy import Engine, event

    bind = writing.kw.get("bind")
    if not isinstance(bind, Engine) or bind.dialect.name != "sqlite":
        return

    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.text_factory = lambda raw: raw.decode("utf-8", "surrogateescape")

    if not event.contains(bind, "connect", _on_connect):
        event.listen(bind, "connect", _on_connect)


def create_app(
    config: AppConfig,
    *,
    session_factory: sessionmaker[Session] | None = None,
    clock: Clock | None = None,
    tls: bool | None = None,
    neighbours: Any = None,
) -> Flask:
    """Build the console. `tls` (default: not `[console] plain_http`) sets HSTS and Secure cookies.

    `neighbours` (a schoolgate.identity NeighbourTable, when the console runs on the gateway)
    lets the public request form find a requester's device by MAC as well as by address."""
    from schoolgate.console.views import register_blueprints

    served_over_tls = (not config.console.plain_http) if tls is None else tls
    app = Flask(
        __name__,
        static_folder="static",
        template_folder="templates",
    )
    app.config.update(
        SECRET_KEY=load_secret_key(config),
        SESSION_COOKIE_NAME="schoolgate_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SECURE=served_over_tls,
        # Lax, not Strict: the DSL opens case links from the digest e-mail and should land signed in.
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=timedelta(minutes=config.console.session_minutes),
        SESSION_REFRESH_EACH_REQUEST=True,
        MAX_CONTENT_LENGTH=16 * 1024 * 1024,  # a register CSV of a large school fits easily
        MAX_FORM_MEMORY_SIZE=4 * 1024 * 1024,
        SEND_FILE_MAX_AGE_DEFAULT=3600,
        TEMPLATES_AUTO_RELOAD=False,
    )
    app.jinja_env.autoescape = True  # always, whatever the template's name
    app.jinja_env.finalize = display_text
    from schoolgate.store.db import reading_factory

    writing = session_factory or _default_session_factory(config)
    _decode_bad_text(writing)
    app.extensions[web.EXTENSION] = web.ConsoleState(
        config=config,
        session_factory=writing,
        read_session_factory=reading_factory(writing),
        clock=clock or SystemClock(),
    )
    app.extensions["schoolgate.policy"] = ConsolePolicy(config)
    app.extensions["schoolgate.throttle"] = SignInThrottle(
        ThrottleSettings(
            account_free_failures=max(1, config.console.lockout_failures),
            source_free_failures=max(1, config.console.address_failures),
            max_delay=timedelta(minutes=max(1, config.console.lockout_minutes)),
            window=timedelta(minutes=max(1, config.console.lockout_minutes)),
        )
    )
    app.extensions["schoolgate.totp_guard"] = TotpReplayGuard()
    app.extensions["schoolgate.keywords"] = _load_keywords(config)
    if neighbours is not None:
        app.extensions["schoolgate.neighbours"] = neighbours

    app.before_request(web.load_session_user)
    app.before_request(web.enforce_access)
    security.install(app, tls=served_over_tls)
    app.teardown_appcontext(web.close_db)

    @app.context_processor
    def _globals() -> dict[str, Any]:
        return {
            "current_user": web.current_user(),
            "can": web.can,
            "home_url": web.home_url,
            "P": Permission,
            "site_name": config.site.name,
            "trust_view": _trust_view(),
        }

    def _trust_view() -> dict[str, Any] | None:
        """The school switcher's state, for trust admins only."""
        user = web.current_user()
        if user is None or user.site is not None or "trust_admin" not in user.role_names:
            return None
        return {"sites": web.site_names(), "whole": web.whole_trust(), "current": web.site_id()}

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Any:
        return render_template("error.html", error=error), error.code or 500

    @app.errorhandler(Exception)
    def _internal_error(error: Exception) -> Any:
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        web.close_db(error)
        return render_template("error.html", error=None), 500

    app.jinja_env.filters["localtime"] = local_time
    app.jinja_env.filters["localdate"] = local_date
    register_blueprints(app)
    return app
