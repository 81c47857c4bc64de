"""Known-device cookies: a browser that has signed in to an account before says so.

After a full sign-in (password and code) the browser gets a signed cookie naming the account
and a random device id. Its later attempts on that account are throttled on their own
(schoolgate.console.throttle), so someone guessing the headteacher's password on a classroom
iPad does not slow her phone down. The cookie is signed with the console's secret key and
bound to one username; it proves only that this browser signed in as that account before,
and gives it no more than its own small allowance of attempts.
"""

from __future__ import annotations

import secrets
from typing import Any

from flask import Request, current_app
from itsdangerous import BadSignature, URLSafeSerializer
from werkzeug.wrappers import Response

COOKIE = "schoolgate_device"
MAX_ACCOUNTS = 8  # a shared staff-room computer remembers the last few people
MAX_AGE_DAYS = 400


def _serializer() -> URLSafeSerializer:
    return URLSafeSerializer(current_app.secret_key, salt="schoolgate-known-device")  # type: ignore[arg-type]


def _entries(request: Request) -> list[list[str]]:
    raw = request.cookies.get(COOKIE)
    if not raw or len(raw) > 4000:
        return []
    try:
        value: Any = _serializer().loads(raw)
    except BadSignature:
        return []
    if not isinstance(value, list):
        return []
    return [e for e in value if isinstance(e, list) and len(e) == 2 and all(isinstance(p, str) for p in e)]


def device_for(request: Request, account: str) -> str | None:
    """The device id this browser holds for `account`, if it signed in to it before."""
    for name, device in _entries(request):
        if name == account:
            return device
    return None


def remember(request: Request, response: Response, account: str, *, secure: bool) -> str:
    """Give the browser (or keep) its device id for `account`; returns the id."""
    entries = _entries(request)
    device = next((d for name, d in entries if name == account), None) or secrets.token_urlsafe(16)
    kept = [[account, device]] + [e for e in entries if e[0] != account]
    response.set_cookie(
        COOKIE,
        _serializer().dumps(kept[:MAX_ACCOUNTS]),
        max_age=MAX_AGE_DAYS * 86400,
        secure=secure,
        httponly=True,
        samesite="Lax",
    )
    return device
