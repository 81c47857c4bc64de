"""Every route x every role, generated from the console's URL map and the one permission table.

Each route must declare who may use it (public, any signed-in person, or a permission of the
table in schoolgate.services.permissions). Then, for every role the table knows and for someone
signed out, every route is requested: it must answer 403 (or a redirect to sign-in) exactly
where the table says no, and the page everywhere else. Every page a role can open must show
only the forms and links the table lets that role use, so the buttons and the route guards
cannot disagree either. A new route or a new role is covered without editing this file.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from console_testkit import Console, csrf_from, seed
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from schoolgate.console import web
from schoolgate.services.permissions import ROLES, Permission, permissions_of

ROLE_NAMES = [role.value for role in ROLES]
# Pages that answer an allowed GET with a redirect by design.
REDIRECTING_GETS = {"public.home", "auth.login", "auth.login_code", "auth.enrol", "filtered.result"}
#: The seeded record each URL argument names (see console_testkit.seed).
ARG_FOR = {
    "request_id": "request",
    "report_id": "report",
    "alert_id": "alert",
    "ban_id": "ban",
    "event_id": "event",
    "device_pk": "device",
    "person_pk": "person",
    "exception_id": "exception",
    "block_id": "block",
    "user_id": "user",
    "check_id": "check",
    "unlock_id": "unlock",
    "record_id": "social",
    "import_id": "directory_import",
}


def _routes(console: Console) -> list[tuple[str, str, str]]:
    ids = console.extra["ids"]
    found = []
    for rule in console.app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        url = rule.rule
        for name in rule.arguments:
            assert name in ARG_FOR, f"{rule.endpoint}: add a seeded record for <{name}> to ARG_FOR and seed()"
            url = re.sub(rf"<(\w+:)?{name}>", str(ids[ARG_FOR[name]]), url)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((rule.endpoint, method, url))
    # Signing out last, so the other checks run signed in.
    return sorted(found, key=lambda item: item[0] == "auth.logout")


def _allowed(console: Console, endpoint: str, method: str, role: str | None) -> bool | None:
    """True/False as the table says for `role`; None for a public route."""
    rule = web.access_rule(console.app, endpoint, method)
    if rule == web.PUBLIC:
        return None
    if role is None:
        return False
    if rule == web.SIGNED_IN:
        return True
    assert isinstance(rule, Permission), (endpoint, method, rule)
    return rule in permissions_of({role})


@pytest.fixture
def seeded(console: Console) -> Console:
    console.extra["ids"] = seed(console)
    return console


def test_every_route_declares_who_may_use_it(seeded: Console) -> None:
    undeclared = [
        (endpoint, method)
        for endpoint, method, _ in _routes(seeded)
        if not (
            web.access_rule(seeded.app, endpoint, method) in (web.PUBLIC, web.SIGNED_IN)
            or isinstance(web.access_rule(seeded.app, endpoint, method), Permission)
        )
    ]
    assert undeclared == [], "declare public, signed_in or requires(Permission.X) on these views"


@pytest.mark.parametrize("role", [None, *ROLE_NAMES])
def test_route_access_by_role_follows_the_table(seeded: Console, role: str | None) -> None:
    client = seeded.login(role)
    token = csrf_from(client.get("/request").get_data(as_text=True))
    problems = []
    for endpoint, method, url in _routes(seeded):
        allowed = _allowed(seeded, endpoint, method, role)
        response = client.get(url) if method == "GET" else client.post(url, data={"csrf_token": token})
        status = response.status_code
        location = response.headers.get("Location", "")
        if allowed is False and role is None:
            if not (status == 302 and location.startswith("/login")):
                problems.append(f"{method} {url} ({endpoint}) anonymous: {status} {location}, expected sign-in")
        elif allowed is False:
            if status != 403:
                problems.append(f"{method} {url} ({endpoint}) as {role}: {status}, expected 403")
        elif status >= 500 or status in (401, 403):
            problems.append(f"{method} {url} ({endpoint}) as {role}: {status}, expected the page")
        elif method == "GET" and endpoint not in REDIRECTING_GETS and status != 200:
            problems.append(f"GET {url} ({endpoint}) as {role}: {status} {location}, expected 200")
    assert problems == []


class _Targets(HTMLParser):
    """The forms (method, action) and links of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "form" and values.get("action"):
            self.found.append(((values.get("method") or "get").upper(), values["action"] or ""))
        elif tag == "a" and values.get("href"):
            self.found.append(("GET", values["href"] or ""))


@pytest.mark.parametrize("role", [None, *ROLE_NAMES])
def test_pages_offer_only_what_the_table_allows(seeded: Console, role: str | None) -> None:
    """No page shows a role a button, form or link to something the table does not let it do."""
    client = seeded.login(role)
    adapter = seeded.app.url_map.bind("localhost")
    problems = []
    for endpoint, method, url in _routes(seeded):
        if method != "GET" or _allowed(seeded, endpoint, method, role) is False or endpoint == "auth.logout":
            continue
        response = client.get(url)
        if response.status_code != 200:
            continue
        parser = _Targets()
        parser.feed(response.get_data(as_text=True))
        for target_method, target in parser.found:
            parts = urlsplit(target)
            if parts.scheme or parts.netloc or not parts.path.startswith("/") or parts.path.startswith("/static/"):
                continue
            try:
                target_endpoint, _ = adapter.match(parts.path, method=target_method)
            except (NotFound, MethodNotAllowed, RequestRedirect):
                problems.append(f"{url} as {role}: {target_method} {target} is no route")
                continue
            if _allowed(seeded, target_endpoint, target_method, role) is False:
                problems.append(f"{url} as {role} offers {target_method} {target} ({target_endpoint})")
    assert problems == []


def test_unknown_view_without_a_rule_is_refused(console: Console) -> None:
    """Deny by default: a view that forgot to declare who may use it answers 403 to everyone."""
    app = console.app

    @app.route("/forgotten")
    def forgotten() -> str:
        return "should not be seen"

    for role in (None, "admin"):
        response = console.login(role).get("/forgotten")
        assert response.status_code == 403
