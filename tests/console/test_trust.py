"""A multi-academy trust on one database: every school sees its own rows only, by list and by
id; the trust admin switches between one school and the whole trust."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pyotp
import pytest
from console_testkit import (
    SITE,
    Account,
    Console,
    add_event,
    csrf_from,
    password_hash,
    post_form,
    seed,
    sign_in,
)
from sqlalchemy import select

from schoolgate.console import accounts
from schoolgate.services.permissions import ConsoleRole
from schoolgate.store.models import AccessRequest, Alert, ConsoleUser, Device, PolicyExceptionRow, Site

OAK = "oakfield"
OAK_HOST = "oakfield-only.example.org"


def seed_other_school(console: Console) -> dict[str, int]:
    """School B's records, one of each kind, plus accounts of B's technician and DSL."""
    from schoolgate.services import access_requests, reports
    from schoolgate.services.actor import Actor
    from schoolgate.services.register import DeviceForm, PersonForm, create_device, create_person

    now = console.clock.now()
    ids: dict[str, int] = {}
    with console.session() as session:
        session.merge(Site(id=SITE, name="Kingswood Primary School"))
        session.merge(Site(id=OAK, name="Oakfield Primary School"))
        tech = accounts.create_user(session, username="oak_tech", display_name="Oak Tech", site=OAK,
                                    roles=frozenset({ConsoleRole.TECHNICIAN}), password_hash=password_hash())
        dsl = accounts.create_user(session, username="oak_dsl", display_name="Oak DSL", site=OAK,
                                   roles=frozenset({ConsoleRole.DSL}), password_hash=password_hash())
        dsl.totp_secret = pyotp.random_base32()
        session.flush()
        console.accounts["oak_tech"] = Account("oak_tech", tech.role_names, None, tech.id)  # type: ignore[arg-type]
        console.accounts["oak_dsl"] = Account("oak_dsl", dsl.role_names, dsl.totp_secret, dsl.id)  # type: ignore[arg-type]
        actor = Actor.from_user(tech)
        school_policy = console.app.extensions["schoolgate.policy"].get()
        ids["person"] = create_person(session, site=OAK, now=now, actor=actor,
                                      form=PersonForm(external_id="OAK-P1", name="Oak Pupil", role="pupil")).id
        ids["device"] = create_device(session, site=OAK, now=now, actor=actor, form=DeviceForm(
            device_id="OAK-IPAD-1", name="Oak iPad", ip="10.50.0.9", owner="OAK-P1")).id
        ids["request"] = access_requests.submit_request(
            session, site=OAK, now=now, policy=school_policy,
            form=access_requests.RequestForm(requester="Oak Pupil", url=f"https://{OAK_HOST}/", reasons="oak work"),
        ).request.id
        ids["report"] = reports.submit_report(session, site=OAK, now=now, actor=actor, zone=school_policy.school.zone,
                                              form=reports.ReportForm(submitter_name="Oak Tech",
                                                                      urls=f"https://{OAK_HOST}/bad",
                                                                      nature="oak report")).id
        ids["event"] = add_event(session, site=OAK, host=OAK_HOST, device_id="OAK-IPAD-1",
                                 person_name="Oak Pupil").id
        alert = Alert(site=OAK, kind="circumvention", severity="high", status="new", title=f"Oak case {OAK_HOST}",
                      device_id="OAK-IPAD-1", first_seen=now, last_seen=now)
        session.add(alert)
        exception = PolicyExceptionRow(site=OAK, scope="device", subject="OAK-IPAD-1", domain=OAK_HOST,
                                       starts=now - timedelta(hours=1), expires=now + timedelta(days=3),
                                       reason="oak", created_by="oak_tech")
        session.add(exception)
        session.flush()
        ids["alert"], ids["exception"] = alert.id, exception.id
        session.commit()
    return ids


@pytest.fixture
def trust(console: Console) -> tuple[Console, dict[str, int], dict[str, int]]:
    return console, seed(console), seed_other_school(console)


# (role at school A, method, URL pattern with {id} of school B's record, form data)
CROSS_SCHOOL = [
    ("technician", "GET", "/requests/{request}", {}),
    ("headteacher", "GET", "/requests/{request}", {}),
    ("technician", "POST", "/requests/{request}/triage", {"technician_notes": "x", "risks_and_controls": "x",
                                                         "target": "domain", "value": OAK_HOST, "scope": "role",
                                                         "subject": "pupil", "starts": "2026-11-23T09:00",
                                                         "expires": "2026-11-30"}),
    ("technician", "POST", "/requests/{request}/withdraw", {"reason": "x"}),
    ("dsl", "GET", "/alerts/{alert}", {}),
    ("dsl", "POST", "/alerts/{alert}/note", {"text": "x"}),
    ("dsl", "POST", "/alerts/{alert}/status", {"status": "in_review"}),
    ("headteacher", "GET", "/alerts/{alert}", {}),
    ("technician", "GET", "/activity/{event}", {}),
    ("dsl", "GET", "/activity/{event}", {}),
    ("technician", "GET", "/devices/{device}", {}),
    ("technician", "POST", "/devices/{device}", {"device_id": "OAK-IPAD-1", "name": "stolen"}),
    ("technician", "GET", "/people/{person}", {}),
    ("technician", "POST", "/people/{person}", {"external_id": "OAK-P1", "name": "x", "role": "pupil"}),
    ("headteacher", "POST", "/people/{person}/authorise", {"authorised": "1", "reason": "x"}),
    ("technician", "GET", "/reports/{report}", {}),
    ("technician", "POST", "/reports/{report}/close", {"reason": "x"}),
    ("technician", "POST", "/policy/exceptions/{exception}/revoke", {"reason": "x"}),
]


@pytest.mark.parametrize(("role", "method", "pattern", "data"), CROSS_SCHOOL)
def test_a_school_cannot_reach_another_schools_records_by_id(
    trust: tuple[Console, dict[str, int], dict[str, int]], role: str, method: str, pattern: str, data: dict[str, Any]
) -> None:
    console, _, oak = trust
    client = console.login(role)
    url = pattern.format(**oak)
    if method == "GET":
        response = client.get(url)
    else:
        token = csrf_from(client.get("/account").get_data(as_text=True))
        response = client.post(url, data={"csrf_token": token, **data})
    assert response.status_code in (403, 404), (url, response.status_code)
    assert OAK_HOST not in response.get_data(as_text=True)
    with console.session() as session:
        assert session.get(AccessRequest, oak["request"]).status == "submitted"  # type: ignore[union-attr]
        assert session.get(Device, oak["device"]).name == "Oak iPad"  # type: ignore[union-attr]
        assert session.get(Alert, oak["alert"]).status == "new"  # type: ignore[union-attr]
        assert session.get(PolicyExceptionRow, oak["exception"]).revoked_at is None  # type: ignore[union-attr]


LISTS = [
    ("technician", "/requests?status=all"),
    ("technician", "/requests?status=open"),
    ("technician", "/reports?status=all"),
    ("technician", "/devices?q=oak"),
    ("technician", "/people?q=oak"),
    ("technician", "/activity"),
    ("dsl", "/activity"),
    ("technician", "/policy/exceptions?state=all"),
    ("dsl", "/alerts?status=all"),
    ("headteacher", "/audit"),
    ("headteacher", "/dashboard"),
]


@pytest.mark.parametrize(("role", "url"), LISTS)
def test_lists_show_one_schools_rows(trust: tuple[Console, dict[str, int], dict[str, int]], role: str,
                                     url: str) -> None:
    console, _, _ = trust
    page = console.login(role).get(url)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for secret in (OAK_HOST, "Oak iPad", "Oak Pupil", "OAK-IPAD-1", "OAK-P1"):
        assert secret not in html, (url, secret)


def test_a_school_b_account_sees_school_b_on_any_appliance(
    trust: tuple[Console, dict[str, int], dict[str, int]]
) -> None:
    console, kingswood, oak = trust
    client = console.client()
    sign_in(client, console.clock, console.accounts["oak_tech"])
    assert OAK_HOST in client.get("/requests?status=all").get_data(as_text=True)
    assert "www.facebook.com" not in client.get("/requests?status=all").get_data(as_text=True)
    assert client.get(f"/requests/{oak['request']}").status_code == 200
    assert client.get(f"/requests/{kingswood['request']}").status_code == 404
    assert client.get(f"/devices/{kingswood['device']}").status_code == 404
    dsl = console.client()
    sign_in(dsl, console.clock, console.accounts["oak_dsl"])
    assert dsl.get(f"/alerts/{oak['alert']}").status_code == 200
    assert dsl.get(f"/alerts/{kingswood['alert']}").status_code == 404


def _choose(client: Any, site: str) -> Any:
    token = csrf_from(client.get("/dashboard").get_data(as_text=True))
    return client.post("/trust/site", data={"csrf_token": token, "site": site, "next": "/requests?status=all"})


def test_the_trust_admin_switches_between_schools_and_the_whole_trust(
    trust: tuple[Console, dict[str, int], dict[str, int]]
) -> None:
    console, kingswood, oak = trust
    admin = console.login("trust_admin")
    dashboard = admin.get("/dashboard").get_data(as_text=True)
    assert 'id="school-switcher"' in dashboard and "Oakfield Primary School" in dashboard
    assert "Whole trust" in dashboard
    everything = admin.get("/requests?status=all").get_data(as_text=True)
    assert OAK_HOST in everything and "www.facebook.com" in everything  # whole trust by default
    assert 'data-label="School">Oakfield Primary School<' in everything
    assert admin.get(f"/requests/{oak['request']}").status_code == 200
    assert admin.get(f"/requests/{kingswood['request']}").status_code == 200
    devices = admin.get("/devices").get_data(as_text=True)
    assert "Oak iPad" in devices and "Class iPad 12" in devices
    assert OAK_HOST in admin.get("/activity").get_data(as_text=True)

    response = _choose(admin, OAK)
    assert response.status_code == 302 and response.headers["Location"] == "/requests?status=all"
    oak_only = admin.get("/requests?status=all").get_data(as_text=True)
    assert OAK_HOST in oak_only and "www.facebook.com" not in oak_only
    assert admin.get(f"/requests/{kingswood['request']}").status_code == 404
    assert admin.get(f"/activity/{kingswood['event']}").status_code == 404
    assert admin.get(f"/activity/{oak['event']}").status_code == 200

    _choose(admin, SITE)
    kings_only = admin.get("/requests?status=all").get_data(as_text=True)
    assert OAK_HOST not in kings_only and "www.facebook.com" in kings_only
    _choose(admin, "*")
    assert OAK_HOST in admin.get("/requests?status=all").get_data(as_text=True)
    assert _choose(admin, "no-such-school").status_code == 404
    # Read-only, and safeguarding cases stay with each school's DSL and headteacher.
    assert admin.get(f"/alerts/{oak['alert']}").status_code == 403
    token = csrf_from(admin.get("/dashboard").get_data(as_text=True))
    withdraw = admin.post(f"/requests/{oak['request']}/withdraw", data={"csrf_token": token, "reason": "x"})
    assert withdraw.status_code == 403


def test_school_users_have_no_switcher(trust: tuple[Console, dict[str, int], dict[str, int]]) -> None:
    console, _, _ = trust
    client = console.login("technician")
    assert 'id="school-switcher"' not in client.get("/dashboard").get_data(as_text=True)
    assert _choose(client, OAK).status_code == 403


def test_school_admins_cannot_make_or_manage_trust_accounts(
    trust: tuple[Console, dict[str, int], dict[str, int]]
) -> None:
    console, _, _ = trust
    admin = console.login("admin")
    trust_admin_id = console.accounts["trust_admin"].id
    assert admin.get(f"/users/{trust_admin_id}").status_code == 404
    assert "trust_admin" not in admin.get("/users").get_data(as_text=True)
    response = post_form(admin, "/users/new", "/users/new",
                         {"username": "sneaky", "display_name": "S", "roles": ["trust_admin"]})
    assert response.status_code == 400 and "trust" in response.get_data(as_text=True)
    oak_tech = console.accounts["oak_tech"].id
    assert admin.get(f"/users/{oak_tech}").status_code == 404
    with console.session() as session:
        assert session.scalar(select(ConsoleUser).where(ConsoleUser.username == "sneaky")) is None
