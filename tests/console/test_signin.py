"""Signing in and staying signed in, against the attacks a school actually sees: a pupil at a
classroom iPad guessing the headteacher's password, a session cookie copied from a shared
staff-room computer, and someone probing which usernames exist. Each with the test that would
have caught the way it used to go wrong."""

from __future__ import annotations

from typing import Any

import pytest
from console_testkit import (
    PASSWORD,
    SITE,
    Console,
    SpyHasher,
    build_console,
    csrf_from,
    post_form,
    seed,
    sign_in,
    totp_now,
)
from flask.testing import FlaskClient

from schoolgate.console import accounts, sessions
from schoolgate.store.models import ConsoleSession

PUPIL_IPAD = "10.41.20.15"
HEAD_PHONE = "10.41.10.5"
STAFFROOM_PC = "10.41.10.40"
COOKIE = "schoolgate_session"


def client_at(console: Console, address: str) -> FlaskClient:
    client = console.client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def signed_in_at(console: Console, role: str, address: str) -> FlaskClient:
    client = client_at(console, address)
    sign_in(client, console.clock, console.accounts[role])
    return client


def try_password(client: FlaskClient, username: str, password: str) -> Any:
    token = csrf_from(client.get("/login").get_data(as_text=True))
    return client.post("/login", data={"csrf_token": token, "username": username, "password": password})


# -- the throttle, through the pages -------------------------------------------------------------


def test_a_pupils_wrong_passwords_do_not_stop_the_headteacher_approving(console: Console) -> None:
    phone = signed_in_at(console, "headteacher", HEAD_PHONE)  # she has signed in on her phone before
    phone.post("/logout", data={"csrf_token": csrf_from(phone.get("/account").get_data(as_text=True))})
    ipad = client_at(console, PUPIL_IPAD)
    statuses = [try_password(ipad, "headteacher", "is it 1234").status_code for _ in range(7)]
    assert statuses == [400, 400, 400, 400, 400, 429, 429]
    refused = try_password(ipad, "headteacher", PASSWORD)  # even the right password must wait there
    assert refused.status_code == 429 and "Try again after" in refused.get_data(as_text=True)
    # A device she never used waits like the iPad: the allowance for unknown devices is spent.
    laptop = client_at(console, STAFFROOM_PC)
    assert try_password(laptop, "headteacher", PASSWORD).status_code == 429
    # Her phone is a known device for her account: it signs in at once, and she can work.
    sign_in(phone, console.clock, console.accounts["headteacher"])
    assert phone.get("/requests").status_code == 200
    # The account was never locked: the wait after five failures is 30 seconds, doubling with
    # each further failure, and the laptop gets in once it is over.
    console.clock.advance(minutes=1)
    assert try_password(laptop, "headteacher", PASSWORD).status_code == 302


def test_unknown_usernames_get_the_same_answers_and_the_same_work(console: Console, monkeypatch: Any) -> None:
    """Same statuses, same words, and one Argon2 check per attempt, whether the account exists."""
    spy = SpyHasher(accounts._HASHER)
    monkeypatch.setattr(accounts, "_HASHER", spy)
    verified = spy.calls
    answers: dict[str, list[tuple[int, str, int]]] = {}
    for number, username in enumerate(("headteacher", "mr.nobody")):
        client = client_at(console, f"10.41.30.{number + 1}")
        answers[username] = []
        for _ in range(7):
            before = len(verified)
            response = try_password(client, username, "a wrong guess")
            page = response.get_data(as_text=True)
            message = page[page.index('role="alert"'):][:120] if 'role="alert"' in page else ""
            answers[username].append((response.status_code, message, len(verified) - before))
    assert answers["headteacher"] == answers["mr.nobody"]
    assert [hashes for _, _, hashes in answers["mr.nobody"]] == [1, 1, 1, 1, 1, 0, 0]  # waiting: no work at all
    assert "not right" in answers["mr.nobody"][0][1] and "Try again after" in answers["mr.nobody"][5][1]


def test_an_unknown_usernames_check_costs_what_a_real_accounts_does() -> None:
    """The stand-in hash checked for an unknown username has the parameters every account's
    hash gets (memory, passes, lanes, lengths), so the check takes the same time."""
    import argon2

    hasher = accounts._HASHER
    dummy = argon2.extract_parameters(accounts._DUMMY_HASH)
    assert dummy == argon2.extract_parameters(hasher.hash("a real account's password"))
    assert not hasher.check_needs_rehash(accounts._DUMMY_HASH)
    assert not accounts.verify_password(None, accounts.generate_password())


def test_an_ipv6_client_is_counted_by_its_64(tmp_path: Any, console_template: Any) -> None:
    console = build_console(tmp_path, console_template, "address_failures = 6\n")
    for number in range(6):  # a different address in the /64 and a different name each time
        client = client_at(console, f"2001:db8:41:20::{number + 1:x}")
        assert try_password(client, f"guess{number}", "x").status_code == 400
    same_net = client_at(console, "2001:db8:41:20:ffff::99")
    assert try_password(same_net, "technician", PASSWORD).status_code == 429
    other_net = client_at(console, "2001:db8:41:21::1")
    assert try_password(other_net, "technician", PASSWORD).status_code == 302


def test_a_wrong_current_password_on_the_account_page_counts_too(console: Console) -> None:
    browser = signed_in_at(console, "technician", STAFFROOM_PC)
    statuses = []
    for _ in range(5):
        response = post_form(browser, "/account", "/account/password", {
            "current_password": "not it", "new_password": "a new long passphrase", "confirm_password":
            "a new long passphrase"})
        statuses.append(response.status_code)
    assert statuses == [400, 400, 400, 400, 302]  # the fifth ends the session
    assert browser.get("/account").status_code == 302
    assert "signed out" in browser.get("/login").get_data(as_text=True)
    # This browser now waits to sign in to that account; the technician's own PC does not.
    assert try_password(browser, "technician", PASSWORD).status_code == 429
    assert signed_in_at(console, "technician", "10.41.10.41").get("/account").status_code == 200


def test_wrong_codes_add_up_however_often_the_password_is_right(console: Console) -> None:
    # Knowing the password, someone signs in again and again, guessing a code each time: the
    # wrong codes add up and the attempts must wait, however often the password was right.
    client = client_at(console, PUPIL_IPAD)
    for _ in range(5):
        response = try_password(client, "dsl", PASSWORD)
        assert response.headers["Location"].endswith("/login/code")
        token = csrf_from(client.get("/login/code").get_data(as_text=True))
        assert client.post("/login/code", data={"csrf_token": token, "code": "000000"}).status_code == 400
    assert try_password(client, "dsl", PASSWORD).status_code == 429


# -- sessions end on the server ------------------------------------------------------------------


def _copy_cookie(source: FlaskClient, target: FlaskClient) -> None:
    cookie = source.get_cookie(COOKIE)
    assert cookie is not None
    target.set_cookie(COOKIE, cookie.value)


def test_a_cookie_copied_before_signing_out_is_refused_after(console: Console) -> None:
    staffroom = signed_in_at(console, "dsl", STAFFROOM_PC)
    thief = client_at(console, PUPIL_IPAD)
    _copy_cookie(staffroom, thief)
    assert thief.get("/alerts").status_code == 200  # a copy works while the session lasts...
    staffroom.post("/logout", data={"csrf_token": csrf_from(staffroom.get("/account").get_data(as_text=True))})
    response = thief.get("/alerts")  # ...and not a moment after signing out
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    with console.session() as session:
        rows = session.query(ConsoleSession).filter_by(user_id=console.accounts["dsl"].id).all()
        assert [(row.ended_reason, row.ended_at is not None) for row in rows] == [(sessions.SIGNED_OUT, True)]


def test_changing_the_password_ends_the_other_sessions_only(console: Console) -> None:
    mine = signed_in_at(console, "technician", STAFFROOM_PC)
    other = signed_in_at(console, "technician", "10.41.10.41")
    response = post_form(mine, "/account", "/account/password", {
        "current_password": PASSWORD, "new_password": "another long passphrase",
        "confirm_password": "another long passphrase"})
    assert response.status_code == 302
    assert mine.get("/account").status_code == 200
    assert other.get("/account").status_code == 302
    assert "password changed" in other.get("/login").get_data(as_text=True)


@pytest.mark.parametrize(
    ("change", "reason"),
    [({"roles": ["technician", "admin"], "active": "1"}, sessions.ROLES_CHANGED),
     ({"roles": ["technician"], "active": ""}, sessions.DISABLED)],
)
def test_a_role_change_or_disabling_ends_the_accounts_sessions(
    console: Console, change: dict[str, Any], reason: str
) -> None:
    technician = signed_in_at(console, "technician", STAFFROOM_PC)
    admin = console.login("admin")
    user_id = console.accounts["technician"].id
    response = post_form(admin, f"/users/{user_id}", f"/users/{user_id}",
                         {"display_name": "Technician Person", **change})
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    assert technician.get("/account").status_code == 302
    with console.session() as session:
        row = session.query(ConsoleSession).filter_by(user_id=user_id).one()
        assert row.ended_reason == reason


def test_a_signed_in_headteacher_signs_whatever_happens_at_the_sign_in_page(console: Console) -> None:
    ids = seed(console)
    phone = signed_in_at(console, "headteacher", HEAD_PHONE)
    phone.delete_cookie("schoolgate_device")  # even without her device cookie: the session vouches
    ipad = client_at(console, PUPIL_IPAD)
    assert [try_password(ipad, "headteacher", "guess").status_code for _ in range(6)][-1] == 429
    console.clock.advance(seconds=31)
    url = f"/requests/{ids['request']}"
    response = post_form(phone, url, f"{url}/decide", {
        "decision": "decline", "reasons": "Not for school", "signer_name": "Mrs J Patel", "password": PASSWORD,
        "code": totp_now(console.accounts["headteacher"].totp_secret or "", console.clock)})
    assert response.status_code == 302, response.get_data(as_text=True)[:1500]


# -- a password someone else has seen ------------------------------------------------------------


def _one_time_password(html: str) -> str:
    import re

    found = re.search(r'id="one-time-password">([^<]+)<', html)
    assert found, "no one-time password on the page"
    return found.group(1)


@pytest.mark.parametrize("how", ["added", "reset"])
def test_a_password_an_admin_has_seen_is_changed_before_anything_else(console: Console, how: str) -> None:
    admin = console.login("admin")
    if how == "added":
        shown = post_form(admin, "/users/new", "/users/new", {"username": "mgreen", "display_name": "Mr Green",
                                                              "roles": ["technician"]})
        username = "mgreen"
    else:
        tech = console.accounts["technician"].id
        shown = post_form(admin, f"/users/{tech}", f"/users/{tech}/reset-password", {})
        username = "technician"
    password = _one_time_password(shown.get_data(as_text=True))
    holder = console.client()
    signed = try_password(holder, username, password)
    assert signed.status_code == 302 and signed.headers["Location"].endswith("/account")
    for page in ("/requests", "/dashboard", "/activity"):
        refused = holder.get(page)
        assert refused.status_code == 302 and refused.headers["Location"].endswith("/account"), page
    assert "Choose your own password" in holder.get("/account").get_data(as_text=True)
    chosen = post_form(holder, "/account", "/account/password", {
        "current_password": password, "new_password": "my own passphrase 2026", "confirm_password":
        "my own passphrase 2026"})
    assert chosen.status_code == 302
    assert holder.get("/requests").status_code == 200
    # The admin's copy of the one-time password is no use now, and the next sign-in is not held up.
    assert try_password(console.client(), username, password).status_code == 400
    again = console.client()
    assert try_password(again, username, "my own passphrase 2026").headers["Location"].endswith("/dashboard")


def test_a_password_of_ones_own_is_never_held_up(console: Console) -> None:
    """An account whose holder changed the password since an admin set it signs in as usual,
    and so does one set up on the appliance's command line (its operator hands it over)."""
    with console.session() as session:
        user = accounts.find_user(session, "technician")
        assert user is not None
        accounts.audit_user(session, site=SITE, actor=accounts.CLI_ACTOR, action="user.reset_password",
                            user=user)
        session.commit()
    client = console.client()
    assert try_password(client, "technician", PASSWORD).headers["Location"].endswith("/dashboard")
    assert client.get("/requests").status_code == 200
