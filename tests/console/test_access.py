"""Every route x every role: 403, a redirect to sign-in, or the page as designed.

The table is explicit and keyed by endpoint and method; a route added to the console without
an entry here fails the test, so nobody can add a page without deciding who may use it.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from console_testkit import Console, csrf_from, seed

PUBLIC = "public"
ANY = "any signed-in user"
T, D, H, A, TA = "technician", "dsl", "headteacher", "admin", "trust_admin"
EVERYONE = frozenset({T, D, H, A})  # everyone with a school's account
READERS = EVERYONE | {TA}  # and the trust admin, who reads every school

EXPECTED: dict[str, dict[str, Any]] = {
    "auth.login": {"GET": PUBLIC, "POST": PUBLIC},
    "auth.login_code": {"GET": PUBLIC, "POST": PUBLIC},
    "auth.enrol": {"GET": PUBLIC, "POST": PUBLIC},
    "auth.account": {"GET": ANY},
    "auth.account_totp": {"GET": ANY, "POST": ANY},
    "auth.change_password": {"POST": ANY},
    "auth.logout": {"POST": PUBLIC},
    "public.home": {"GET": PUBLIC},
    "public.request_form": {"GET": PUBLIC, "POST": PUBLIC},
    "public.request_status": {"GET": PUBLIC},
    "dashboard.index": {"GET": READERS},
    "requests.index": {"GET": {T, H, A, TA}},
    "requests.new": {"GET": EVERYONE, "POST": EVERYONE},
    "requests.show": {"GET": {T, H, A, TA}},
    "requests.triage": {"POST": {T}},
    "requests.decide": {"POST": {H}},
    "requests.withdraw": {"POST": {T}},
    "reports.index": {"GET": {T, D, H, TA}},
    "reports.new": {"GET": EVERYONE, "POST": EVERYONE},
    "reports.show": {"GET": {T, D, H, TA}},
    "reports.action": {"POST": {T}},
    "reports.close": {"POST": {T}},
    "alerts.index": {"GET": {D, H}},
    "alerts.show": {"GET": {D, H}},
    "alerts.note": {"POST": {D, H}},
    "alerts.status": {"POST": {D, H}},
    "alerts.assess": {"POST": {D, H}},
    "alerts.resolve": {"POST": {D, H}},
    "alerts.ban": {"POST": {D, H}},
    "alerts.ban_list": {"GET": {D, H}},
    "alerts.lift": {"POST": {D, H}},
    "activity.search": {"GET": {T, D, H, TA}},
    "activity.event": {"GET": {T, D, H, TA}},
    "activity.devices": {"GET": {T, D, H, TA}},
    "registers.devices": {"GET": READERS},
    "registers.device_new": {"GET": {T, A}, "POST": {T, A}},
    "registers.device_edit": {"GET": READERS, "POST": {T, A}},
    "registers.device_authorise": {"POST": {H}},
    "registers.device_import": {"GET": {T, A}, "POST": {T, A}},
    "registers.people": {"GET": READERS},
    "registers.person_new": {"GET": {T, A}, "POST": {T, A}},
    "registers.person_edit": {"GET": READERS, "POST": {T, A}},
    "registers.person_authorise": {"POST": {H}},
    "registers.person_import": {"GET": {T, A}, "POST": {T, A}},
    "policy.index": {"GET": READERS},
    "policy.exceptions": {"GET": READERS},
    "policy.revoke": {"POST": {T, H}},
    "policy.add_block": {"POST": {T, A}},
    "policy.remove_block": {"POST": {T, A}},
    "audit.index": {"GET": {H, A, TA}},
    "admin.users": {"GET": {A}},
    "admin.new": {"GET": {A}, "POST": {A}},
    "admin.edit": {"GET": {A}, "POST": {A}},
    "admin.reset_password": {"POST": {A}},
    "admin.reset_totp": {"POST": {A}},
    "admin.unlock": {"POST": {A}},
    "trust.choose_site": {"POST": {TA}},
    "checks.index": {"GET": READERS},
    "checks.new": {"GET": {T, D, H}, "POST": {T, D, H}},
    "checks.show": {"GET": READERS},
    "checks.fix": {"POST": {T, D, H}},
    "checks.run_selftest": {"POST": {T, D, H}},
}

# Pages that answer an allowed GET with a redirect by design.
REDIRECTING_GETS = {"public.home", "auth.login", "auth.login_code", "auth.enrol"}
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
}


def _routes(console: Console) -> list[tuple[str, str, str]]:
    ids = console.extra["ids"]
    found = []
    for rule in console.app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        url = rule.rule
        for name in rule.arguments:
            url = re.sub(rf"<(\w+:)?{name}>", str(ids[ARG_FOR[name]]), url)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            found.append((rule.endpoint, method, url))
    # Signing out last, so the other checks run signed in.
    return sorted(found, key=lambda item: item[0] == "auth.logout")


@pytest.fixture
def seeded(console: Console) -> Console:
    console.extra["ids"] = seed(console)
    return console


def test_every_route_has_an_expectation(seeded: Console) -> None:
    routes = {(endpoint, method) for endpoint, method, _ in _routes(seeded)}
    listed = {(endpoint, method) for endpoint, methods in EXPECTED.items() for method in methods}
    assert routes - listed == set(), "routes without an access expectation: add them to EXPECTED"
    assert listed - routes == set(), "expectations for routes that no longer exist"


@pytest.mark.parametrize("role", [None, T, D, H, A, TA])
def test_route_access_by_role(seeded: Console, role: str | None) -> None:
    client = seeded.login(role)
    token = csrf_from(client.get("/request").get_data(as_text=True))
    problems = []
    for endpoint, method, url in _routes(seeded):
        rule = EXPECTED[endpoint][method]
        response = client.get(url) if method == "GET" else client.post(url, data={"csrf_token": token})
        status = response.status_code
        location = response.headers.get("Location", "")
        if rule == PUBLIC:
            allowed = True
        elif role is None:
            if not (status == 302 and location.startswith("/login")):
                problems.append(f"{method} {url} ({endpoint}) anonymous: {status} {location}, expected sign-in")
            continue
        else:
            allowed = rule == ANY or role in rule
        if not allowed:
            if status != 403:
                problems.append(f"{method} {url} ({endpoint}) as {role}: {status}, expected 403")
            continue
        if status >= 500 or status in (401, 403):
            problems.append(f"{method} {url} ({endpoint}) as {role}: {status}, expected the page")
        elif method == "GET" and endpoint not in REDIRECTING_GETS and status != 200:
            problems.append(f"GET {url} ({endpoint}) as {role}: {status} {location}, expected 200")
    assert problems == []


def test_unknown_view_without_a_rule_is_refused(console: Console) -> None:
    """Deny by default: a view that forgot to declare who may use it answers 403 to everyone."""
    app = console.app

    @app.route("/forgotten")
    def forgotten() -> str:
        return "should not be seen"

    for role in (None, A):
        response = console.login(role).get("/forgotten")
        assert response.status_code == 403
