"""Web-facing protections: CSRF tokens, security headers, and session idle expiry.

The Content-Security-Policy allows only the console's own scripts and styles and no inline
code at all, so even if a logged hostname slipped past escaping it could not run.
"""

from __future__ import annotations

import hmac
import secrets

from flask import Flask, Response, abort, request, session

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


def csrf_token() -> str:
    """The session's synchronizer token (created on first use)."""
    token = session.get(CSRF_FIELD)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session[CSRF_FIELD] = token
    return token


def rotate_csrf_token() -> None:
    session.pop(CSRF_FIELD, None)


def _check_csrf() -> None:
    if request.method in _SAFE_METHODS:
        return
    expected = session.get(CSRF_FIELD)
    given = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    if not isinstance(expected, str) or not hmac.compare_digest(expected.encode(), given.encode()):
        abort(400, description=(
            "The form has expired or did not come from this console. Go back, reload the page and try again."
        ))


def _add_headers(response: Response, *, tls: bool) -> Response:
    headers = response.headers
    # A view may set a policy of its own (the "Am I filtered?" page loads other sites' images).
    headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    headers["X-Frame-Options"] = "DENY"
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    headers["Cross-Origin-Opener-Policy"] = "same-origin"
    headers["Cross-Origin-Resource-Policy"] = "same-origin"
    headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
    if tls:
        headers["Strict-Transport-Security"] = "max-age=31536000"
    if request.endpoint != "static":
        # Pages name children and safeguarding cases: never keep them in a shared cache.
        headers["Cache-Control"] = "no-store"
    return response


def install(app: Flask, *, tls: bool) -> None:
    app.before_request(_check_csrf)
    app.after_request(lambda response: _add_headers(response, tls=tls))
    app.jinja_env.globals["csrf_token"] = csrf_token
