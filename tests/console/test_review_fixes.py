"""Security follow-ups from the review, each with the test that would have caught it."""

from __future__ import annotations

import re
from datetime import timedelta

import pyotp
from console_testkit import PASSWORD, SITE, Console, csrf_from, post_form, seed, totp_now
from sqlalchemy import select

from schoolgate.store.models import AccessRequest, AuditEntry, ConsoleUser, Device, Person

PUPIL_IP = "10.41.20.15"  # KW-IPAD-12's fixed address in seed()


def _submit(client, *, ip: str, device: str, requester: str = "Jo", url: str = "https://www.tiktok.com/@school",
            reasons: str = "Dance club"):  # type: ignore[no-untyped-def]
    env = {"REMOTE_ADDR": ip}
    page = client.get(f"/request?url={url}&device={device}", environ_base=env)
    response = client.post("/request", environ_base=env, data={
        "csrf_token": csrf_from(page.get_data(as_text=True)), "requester": requester, "url": url,
        "reasons": reasons, "device": device,
    })
    html = response.get_data(as_text=True)
    reference = re.search(r'id="reference">(AR-(\d+))<', html)
    token = re.search(r'id="token"><code>([^<]+)<', html)
    assert response.status_code == 200 and reference and token, html[:3000]
    return int(reference.group(2)), reference.group(1), token.group(1)


def test_the_request_device_comes_from_the_address_not_the_link(console: Console) -> None:
    seed(console)
    client = console.client()
    # From the iPad's own address, a link claiming another device: the register decides.
    request_id, _, _ = _submit(client, ip=PUPIL_IP, device="KW-HEAD-LAPTOP")
    # From an unknown address, a link naming the iPad: no device, the link's value only a hint.
    stranger_id, _, _ = _submit(client, ip="10.41.99.99", device="KW-IPAD-12", requester="Someone")
    with console.session() as session:
        mine = session.get(AccessRequest, request_id)
        theirs = session.get(AccessRequest, stranger_id)
        assert mine is not None and mine.device_id == "KW-IPAD-12" and mine.person_id == "P1042"
        assert theirs is not None and theirs.device_id is None and theirs.merged_into_id is None
    tech = console.login("technician")
    page = tech.get(f"/requests/{stranger_id}").get_data(as_text=True)
    assert 'id="device-hint">KW-IPAD-12' in page and "unverified" in page
    assert "no registered device found" in page
    # The triage default subject is the verified device, never the hint.
    assert 'value="KW-HEAD-LAPTOP"' not in tech.get(f"/requests/{request_id}").get_data(as_text=True)


def test_recent_traffic_vouches_for_a_dhcp_device(console: Console) -> None:
    from console_testkit import add_event

    with console.session() as session:
        add_event(session, client_ip="10.41.30.7", device_id="KW-LT-07", person_id=None,
                  ts=console.clock.now() - timedelta(minutes=3))
        add_event(session, client_ip="10.41.30.8", device_id="KW-LT-08", person_id=None,
                  ts=console.clock.now() - timedelta(hours=2))  # too old to vouch
        session.commit()
    client = console.client()
    fresh, _, _ = _submit(client, ip="10.41.30.7", device="")
    stale, _, _ = _submit(client, ip="10.41.30.8", device="KW-LT-08")
    with console.session() as session:
        assert session.get(AccessRequest, fresh).device_id == "KW-LT-07"  # type: ignore[union-attr]
        assert session.get(AccessRequest, stale).device_id is None  # type: ignore[union-attr]


def test_a_merged_requester_sees_only_the_outcome(console: Console) -> None:
    seed(console)
    client = console.client()
    first_id, first_ref, first_token = _submit(client, ip=PUPIL_IP, device="", requester="Sam Pupil")
    # Same name typed from another address: not merged, so nothing of Sam's leaks to them.
    other_id, _, _ = _submit(console.client(), ip="10.41.99.98", device="KW-IPAD-12", requester="Sam Pupil")
    # The same iPad again (a classmate using it): merged.
    _, merged_ref, merged_token = _submit(console.client(), ip=PUPIL_IP, device="", requester="Alex Pupil")
    with console.session() as session:
        assert session.get(AccessRequest, other_id).merged_into_id is None  # type: ignore[union-attr]
    head = console.login("headteacher")
    console.clock.advance(seconds=31)
    secret = console.accounts["headteacher"].totp_secret or ""
    url = f"/requests/{first_id}"
    response = post_form(head, url, f"{url}/decide", {
        "decision": "decline", "reasons": "Sam's parents have asked us not to", "signer_name": "Mrs J Patel",
        "password": PASSWORD, "code": totp_now(secret, console.clock)})
    assert response.status_code == 302
    own = client.get(f"/request/status?ref={first_ref}&token={first_token}").get_data(as_text=True)
    assert "parents have asked" in own
    merged = console.client().get(f"/request/status?ref={merged_ref}&token={merged_token}").get_data(as_text=True)
    assert "declined" in merged.lower()
    assert "parents" not in merged and "Sam" not in merged and "Patel" not in merged


def test_only_the_headteacher_authorises_in_the_console(console: Console) -> None:
    ids = seed(console)
    tech = console.login("technician")
    url = f"/people/{ids['person']}"
    refused = post_form(tech, url, url, {"external_id": "P1042", "name": "Sam Pupil", "role": "authorised",
                                         "active": "1"})
    assert refused.status_code == 403 and "Only the headteacher" in refused.get_data(as_text=True)
    assert post_form(tech, url, f"{url}/authorise", {"authorised": "1", "reason": "x"}).status_code == 403
    head = console.login("headteacher")
    page = head.get(url).get_data(as_text=True)
    assert 'id="authorise-form"' in page
    done = post_form(head, url, f"{url}/authorise", {"authorised": "1", "reason": "Runs the school Facebook page"})
    assert done.status_code == 302
    with console.session() as session:
        person = session.get(Person, ids["person"])
        assert person is not None and person.role == "authorised"
        entry = session.scalar(select(AuditEntry).where(AuditEntry.action == "person.authorise"))
        assert entry is not None and entry.actor == "headteacher" and "Facebook" in entry.detail
    device_url = f"/devices/{ids['device']}"
    assert post_form(head, device_url, f"{device_url}/authorise", {"authorised": "1", "reason": "y"}).status_code == 302
    with console.session() as session:
        assert session.get(Device, ids["device"]).role == "authorised"  # type: ignore[union-attr]


def _to_code_stage(client) -> str:  # type: ignore[no-untyped-def]
    token = csrf_from(client.get("/login").get_data(as_text=True))
    response = client.post("/login", data={"csrf_token": token, "username": "dsl", "password": PASSWORD})
    assert response.headers["Location"].endswith("/login/code")
    return csrf_from(client.get("/login/code").get_data(as_text=True))


def test_the_half_signed_in_state_expires(console: Console) -> None:
    secret = console.accounts["dsl"].totp_secret or ""
    client = console.client()
    token = _to_code_stage(client)
    console.clock.advance(minutes=5, seconds=30)
    late = client.post("/login/code", data={"csrf_token": token, "code": totp_now(secret, console.clock)})
    assert late.status_code == 302 and late.headers["Location"].startswith("/login")
    assert client.get("/dashboard").status_code == 302
    assert "took too long" in client.get("/login").get_data(as_text=True)
    # Within the five minutes it works.
    token = _to_code_stage(client)
    console.clock.advance(minutes=4)
    good = client.post("/login/code", data={"csrf_token": token, "code": totp_now(secret, console.clock)})
    assert good.status_code == 302 and client.get("/dashboard").status_code == 200


def test_sessions_end_after_the_absolute_lifetime(console: Console) -> None:
    client = console.login("technician")
    for _ in range(24):  # busy all day, never idle for 30 minutes: 11 h 36 min
        console.clock.advance(minutes=29)
        assert client.get("/dashboard").status_code == 200
    console.clock.advance(minutes=29)  # 12 h 5 min after signing in
    response = client.get("/dashboard")
    assert response.status_code == 302
    assert "at most 12 hours" in client.get("/login").get_data(as_text=True)


def test_replacing_the_second_factor_needs_password_and_current_code(console: Console) -> None:
    account = console.accounts["dsl"]
    client = console.login("dsl")
    page = client.get("/account/totp").get_data(as_text=True)
    assert 'name="current_password"' in page and 'name="current_code"' in page
    new_secret = re.search(r'id="totp-secret">([A-Z2-7 ]+)<', page)
    assert new_secret
    console.clock.advance(seconds=31)
    new_code = pyotp.TOTP(new_secret.group(1).replace(" ", "")).at(console.clock.now())
    token = csrf_from(page)
    without = client.post("/account/totp", data={"csrf_token": token, "code": new_code})
    assert without.status_code == 400 and "password is not right" in without.get_data(as_text=True)
    no_code = client.post("/account/totp", data={"csrf_token": token, "code": new_code,
                                                 "current_password": PASSWORD, "current_code": "000000"})
    assert no_code.status_code == 400 and "code is not right" in no_code.get_data(as_text=True)
    with console.session() as session:
        user = session.scalar(select(ConsoleUser).where(ConsoleUser.username == "dsl"))
        assert user is not None and user.totp_secret == account.totp_secret
    good = client.post("/account/totp", data={
        "csrf_token": token, "code": new_code, "current_password": PASSWORD,
        "current_code": totp_now(account.totp_secret or "", console.clock)})
    assert good.status_code == 302
    with console.session() as session:
        user = session.scalar(select(ConsoleUser).where(ConsoleUser.username == "dsl"))
        assert user is not None and user.totp_secret == new_secret.group(1).replace(" ", "")


def test_two_signatures_in_one_code_step_are_not_counted_as_failures(console: Console) -> None:
    ids = seed(console)
    with console.session() as session:
        from schoolgate.services import access_requests

        second = access_requests.submit_request(
            session, site=SITE, now=console.clock.now(),
            policy=console.app.extensions["schoolgate.policy"].get(),
            form=access_requests.RequestForm(requester="Jo", url="https://www.tiktok.com/", reasons="club"),
        )
        session.commit()
        second_id = second.request.id
    head = console.login("headteacher")
    secret = console.accounts["headteacher"].totp_secret or ""
    console.clock.advance(seconds=31)
    code = totp_now(secret, console.clock)
    for request_id in (ids["request"],):
        url = f"/requests/{request_id}"
        assert post_form(head, url, f"{url}/decide", {"decision": "decline", "reasons": "no", "signer_name": "H",
                                                      "password": PASSWORD, "code": code}).status_code == 302
    url = f"/requests/{second_id}"
    again = post_form(head, url, f"{url}/decide", {"decision": "decline", "reasons": "no", "signer_name": "H",
                                                   "password": PASSWORD, "code": code})
    assert again.status_code == 400 and "Wait for your authenticator" in again.get_data(as_text=True)
    assert "nothing was counted against you" in again.get_data(as_text=True)
    console.clock.advance(seconds=30)
    nxt = post_form(head, url, f"{url}/decide", {"decision": "decline", "reasons": "no", "signer_name": "H",
                                                 "password": PASSWORD, "code": totp_now(secret, console.clock)})
    assert nxt.status_code == 302


def test_triage_refuses_a_public_suffix_and_far_dates(console: Console) -> None:
    ids = seed(console)
    tech = console.login("technician")
    url = f"/requests/{ids['request']}"
    base = {"technician_notes": "Checked", "risks_and_controls": "Supervised", "target": "domain",
            "value": "facebook.com", "scope": "device", "subject": "KW-IPAD-12",
            "starts": "2026-11-23T08:00", "expires": "2026-12-18"}
    for changes, message in [
        ({"value": "co.uk"}, "public suffix"),
        ({"starts": "2028-01-01T08:00", "expires": "2028-01-10"}, "days ahead"),
        ({"expires": "2028-12-18"}, "at most 366 days"),
    ]:
        response = post_form(tech, url, f"{url}/triage", {**base, **changes})
        assert response.status_code == 400 and message in response.get_data(as_text=True), changes
