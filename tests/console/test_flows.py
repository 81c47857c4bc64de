"""The console's pages doing their work, through the Flask test client, for breadth."""

from __future__ import annotations

import io
import re

from console_testkit import PASSWORD, SITE, Console, csrf_from, post_form, seed, totp_now
from sqlalchemy import select

from schoolgate.store.models import AccessRequest, Alert, BanRow, ConsoleUser, Device, PolicyExceptionRow


def _triage(console: Console, request_id: int) -> None:
    tech = console.login("technician")
    response = post_form(tech, f"/requests/{request_id}", f"/requests/{request_id}/triage", {
        "technician_notes": "Checked", "risks_and_controls": "Supervised", "target": "domain",
        "value": "facebook.com", "scope": "device", "subject": "KW-IPAD-12",
        "starts": "2026-11-23T08:00", "expires": "2026-12-18",
    })
    assert response.status_code == 302, response.get_data(as_text=True)
    # The seeded request is for a pupil's iPad: the DSL adds the safeguarding risks first.
    dsl = console.login("dsl")
    page = dsl.get(f"/requests/{request_id}").get_data(as_text=True)
    assert 'id="safeguarding-form"' in page
    response = post_form(dsl, f"/requests/{request_id}", f"/requests/{request_id}/safeguarding", {
        "safeguarding_notes": "Public page; the class teacher supervises."})
    assert response.status_code == 302, response.get_data(as_text=True)


def test_headteacher_signature_needs_password_and_code(console: Console) -> None:
    ids = seed(console)
    _triage(console, ids["request"])
    head = console.login("headteacher")
    url = f"/requests/{ids['request']}"
    wrong = post_form(head, url, f"{url}/decide", {"decision": "approve", "reasons": "ok", "signer_name": "J Patel",
                                                   "password": "not my password", "code": "123456"})
    assert wrong.status_code == 400 and "password is not right" in wrong.get_data(as_text=True)
    console.clock.advance(seconds=31)
    secret = console.accounts["headteacher"].totp_secret or ""
    no_code = post_form(head, url, f"{url}/decide", {"decision": "approve", "reasons": "ok", "signer_name": "J Patel",
                                                     "password": PASSWORD, "code": "000000"})
    assert no_code.status_code == 400 and "code is not right" in no_code.get_data(as_text=True)
    with console.session() as session:
        assert session.get(AccessRequest, ids["request"]).status == "forwarded"  # type: ignore[union-attr]
    good = post_form(head, url, f"{url}/decide", {"decision": "approve", "reasons": "For the project",
                                                  "signer_name": "Mrs J Patel", "password": PASSWORD,
                                                  "code": totp_now(secret, console.clock)})
    assert good.status_code == 302
    page = head.get(url).get_data(as_text=True)
    assert 'id="decision">Yes<' in page and "password+totp" in page and "Mrs J Patel" in page
    with console.session() as session:
        request = session.get(AccessRequest, ids["request"])
        assert request is not None and request.status == "approved"
        exception = session.get(PolicyExceptionRow, request.exception_id)
        assert exception is not None and exception.domain == "facebook.com" and exception.subject == "KW-IPAD-12"
    policy_page = console.login("technician").get("/policy?host=www.facebook.com&role=pupil&device=KW-IPAD-12")
    assert "Allowed" in policy_page.get_data(as_text=True)


def test_repeated_bad_signatures_end_the_session_but_never_lock_the_account(console: Console) -> None:
    ids = seed(console)
    head = console.login("headteacher")
    url = f"/requests/{ids['request']}"
    for attempt in range(5):
        response = post_form(head, url, f"{url}/decide", {"decision": "decline", "reasons": "no", "signer_name": "x",
                                                          "password": "guessing", "code": "000000"})
        assert response.status_code == (302 if attempt == 4 else 400)
    assert head.get(url).status_code == 302  # whoever was at this browser is signed out
    assert "signed out" in head.get("/login").get_data(as_text=True)
    with console.session() as session:
        assert session.get(AccessRequest, ids["request"]).status == "submitted"  # type: ignore[union-attr]
    # The account is not locked: the headteacher signs in on her phone and decides.
    phone = console.login("headteacher")
    assert phone.get(url).status_code == 200


def test_decline_before_triage_and_the_requester_sees_it(console: Console) -> None:
    client = console.client()
    page = client.get("/request?url=https://www.tiktok.com/@school&device=KW-IPAD-12&rule=pupils-no-social-media")
    response = client.post("/request", data={
        "csrf_token": csrf_from(page.get_data(as_text=True)), "requester": "Jo", "url": "https://www.tiktok.com/@school",
        "reasons": "Dance club", "device": "KW-IPAD-12", "rule": "pupils-no-social-media", "at": "2026-11-23T10:30",
    })
    html = response.get_data(as_text=True)
    reference = re.search(r'id="reference">(AR-\d+)<', html)
    token = re.search(r'id="token"><code>([^<]+)<', html)
    assert reference and token
    with console.session() as session:
        request = session.scalar(select(AccessRequest))
        # The link's device is only a hint: nothing in the register answers for this address.
        assert request is not None and request.device_id is None and request.blocked_at is not None
        request_id = request.id
    head = console.login("headteacher")
    secret = console.accounts["headteacher"].totp_secret or ""
    console.clock.advance(seconds=31)
    url = f"/requests/{request_id}"
    response = post_form(head, url, f"{url}/decide", {"decision": "decline", "reasons": "Not needed in school",
                                                      "signer_name": "Mrs J Patel", "password": PASSWORD,
                                                      "code": totp_now(secret, console.clock)})
    assert response.status_code == 302
    status = client.get(f"/request/status?ref={reference.group(1)}&token={token.group(1)}").get_data(as_text=True)
    assert "declined" in status and "Not needed in school" in status
    wrong = client.get(f"/request/status?ref={reference.group(1)}&token=guess")
    assert wrong.status_code == 404 and "Not needed" not in wrong.get_data(as_text=True)


def test_locked_categories_cannot_be_requested(console: Console) -> None:
    client = console.client()
    page = client.get("/request")
    response = client.post("/request", data={"csrf_token": csrf_from(page.get_data(as_text=True)),
                                             "requester": "Jo", "url": "https://psiphon.ca/", "reasons": "x"})
    assert response.status_code == 400
    assert "cannot be requested" in response.get_data(as_text=True)


def test_register_csv_import_reports_bad_rows_and_saves_good_ones(console: Console) -> None:
    tech = console.login("technician")
    page = tech.get("/devices/import").get_data(as_text=True)
    data = ("device_id,name,mac,ip,kind,role,owner,trusts_school_ca,notes\n"
            "KW-LT-01,Laptop 1,02:00:00:00:00:01,10.41.20.31,laptop,,,yes,\n"
            "KW-LT-02,Laptop 2,not-a-mac,,laptop,,,no,\n"
            "KW-LT-03,Laptop 3,,,laptop,pupil,,no,\n")
    response = tech.post("/devices/import", data={"csrf_token": csrf_from(page),
                                                  "file": (io.BytesIO(data.encode()), "devices.csv")},
                         content_type="multipart/form-data")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "<strong>2</strong> added" in html and "<strong>1</strong> row" in html
    with console.session() as session:
        assert {d.device_id for d in session.scalars(select(Device))} == {"KW-LT-01", "KW-LT-03"}
    exported = tech.get("/devices?format=csv").get_data(as_text=True)
    assert exported.splitlines()[0].startswith("device_id,name,mac") and "KW-LT-01" in exported


def test_dsl_case_work_and_ban_lift(console: Console) -> None:
    ids = seed(console)
    dsl = console.login("dsl")
    url = f"/alerts/{ids['alert']}"
    assert post_form(dsl, url, f"{url}/note", {"note": "Spoke to the class teacher"}).status_code == 302
    refused = post_form(dsl, url, f"{url}/resolve", {"outcome": "Done"})
    assert refused.status_code == 400 and "true or a false positive" in refused.get_data(as_text=True)
    assert post_form(dsl, url, f"{url}/resolve", {"outcome": "Done", "assessment": "false_positive"}).status_code == 302
    assert post_form(dsl, url, f"{url}/status", {"status": "in_review"}).status_code == 302  # reopened
    page = dsl.get(url).get_data(as_text=True)
    assert "Spoke to the class teacher" in page and "false positive" in page
    response = post_form(dsl, "/alerts/bans", f"/alerts/bans/{ids['ban']}/lift", {"reason": "Apologised"})
    assert response.status_code == 302
    with console.session() as session:
        assert session.get(BanRow, ids["ban"]).lifted_at is not None  # type: ignore[union-attr]
        assert session.get(Alert, ids["alert"]).status == "in_review"  # type: ignore[union-attr]
    listed = dsl.get("/alerts?status=all&severity=high").get_data(as_text=True)
    assert "No alerts match" in listed or "Case" in listed or "alerts" in listed


def test_admin_adds_a_user_who_can_then_sign_in(console: Console) -> None:
    admin = console.login("admin")
    response = post_form(admin, "/users/new", "/users/new", {"username": "mgreen", "display_name": "Mr Green",
                                                             "roles": ["technician"]})
    password = re.search(r'id="one-time-password">([^<]+)<', response.get_data(as_text=True))
    assert password
    client = console.client()
    token = csrf_from(client.get("/login").get_data(as_text=True))
    signed = client.post("/login", data={"csrf_token": token, "username": "mgreen", "password": password.group(1)})
    assert signed.status_code == 302 and signed.headers["Location"].endswith("/account")  # chooses their own first
    chosen = post_form(client, "/account", "/account/password", {
        "current_password": password.group(1), "new_password": "mr green's own passphrase",
        "confirm_password": "mr green's own passphrase"})
    assert chosen.status_code == 302 and client.get("/requests").status_code == 200
    me = console.accounts["admin"].id
    refused = post_form(admin, f"/users/{me}", f"/users/{me}", {"display_name": "Admin", "roles": ["technician"],
                                                                "active": "1"})
    assert refused.status_code == 400 and "your own admin role" in refused.get_data(as_text=True)
    audit_page = admin.get("/audit?verify=1").get_data(as_text=True)
    assert "The chain is intact" in audit_page and "user.create" in audit_page


def test_change_own_password(console: Console) -> None:
    tech = console.login("technician")
    response = post_form(tech, "/account", "/account/password", {
        "current_password": PASSWORD, "new_password": "a brand new passphrase", "confirm_password":
        "a brand new passphrase"})
    assert response.status_code == 302
    assert tech.get("/dashboard").status_code == 200  # this session continues
    with console.session() as session:
        user = session.scalar(select(ConsoleUser).where(ConsoleUser.username == "technician"))
        assert user is not None and user.site == SITE


def test_revoke_exception_and_block_a_site_from_the_policy_page(console: Console) -> None:
    ids = seed(console)
    tech = console.login("technician")
    response = post_form(tech, "/policy", f"/policy/exceptions/{ids['exception']}/revoke", {"reason": "Term ended"})
    assert response.status_code == 302
    response = post_form(tech, "/policy", "/policy/blocks", {"target": "domain", "value": "games.example.com",
                                                             "roles": ["pupil"], "reason": "Games in lessons"})
    assert response.status_code == 302
    page = tech.get("/policy").get_data(as_text=True)
    assert "games.example.com" in page and "No exceptions are in force" in page
    check = tech.get("/policy?host=www.games.example.com&role=pupil").get_data(as_text=True)
    assert "Blocked" in check
    ended = tech.get("/policy/exceptions?state=ended").get_data(as_text=True)
    assert "example.net" in ended and "revoked" in ended


def test_device_ownership_is_recorded_shown_and_used_by_the_check(console: Console) -> None:
    """The register records whose a device is (seed 001 §4 names school-owned devices), the
    list shows it, and "what would happen?" uses the register's record for the device."""
    tech = console.login("technician")
    response = post_form(tech, "/devices/new", "/devices/new", {
        "device_id": "KW-LT-77", "name": "Staff laptop 77", "ownership": "school_owned",
    })
    assert response.status_code == 302, response.get_data(as_text=True)
    with console.session() as session:
        device = session.scalar(select(Device).where(Device.device_id == "KW-LT-77"))
        assert device is not None and device.ownership == "school_owned"
        device_pk = device.id
    listing = tech.get("/devices").get_data(as_text=True)
    assert "school&#39;s" in listing
    form = tech.get(f"/devices/{device_pk}").get_data(as_text=True)
    assert re.search(r'<option value="school_owned" selected>', form)
    refused = post_form(tech, "/devices/new", "/devices/new", {
        "device_id": "KW-LT-78", "name": "Laptop 78", "ownership": "borrowed",
    })
    assert refused.status_code == 400 and "not a device ownership" in refused.get_data(as_text=True)
    page = tech.get("/policy?host=www.facebook.com&role=staff&device=KW-LT-77").get_data(as_text=True)
    assert 'id="check-result"' in page
    chosen = tech.get("/policy?host=www.facebook.com&role=staff&ownership=personal").get_data(as_text=True)
    assert '<option value="personal" selected>' in chosen
