"""Separation of duties on accounts: the DSL and headteacher roles, and the accounts that hold
them, are the headteacher's; no account gives such a role to itself; a headteacher's account
is reset by two admins. Each case with the test that would have caught the old way."""

from __future__ import annotations

import re
from typing import Any

import pytest
from console_testkit import (
    PASSWORD,
    SITE,
    Account,
    Console,
    password_hash,
    post_form,
    seed,
    sign_in,
    totp_now,
)
from sqlalchemy import select

from schoolgate.console import accounts
from schoolgate.services.permissions import ConsoleRole
from schoolgate.store.models import AuditEntry, ConsoleSession, ConsoleUser


def _roles(console: Console, username: str) -> set[str]:
    with console.session() as session:
        user = accounts.find_user(session, username)
        assert user is not None
        return set(user.role_names)


def _actions(console: Console, prefix: str = "user.") -> list[str]:
    with console.session() as session:
        return list(session.scalars(select(AuditEntry.action).where(AuditEntry.action.like(f"{prefix}%"))
                                    .order_by(AuditEntry.seq)))


def _sign(console: Console, role: str) -> dict[str, str]:
    console.clock.advance(seconds=31)
    return {"password": PASSWORD, "code": totp_now(console.accounts[role].totp_secret or "", console.clock)}


@pytest.mark.parametrize("guarded", ["headteacher", "dsl"])
@pytest.mark.parametrize("whose", ["own", "another"])
def test_an_admin_cannot_give_a_guarded_role(console: Console, guarded: str, whose: str) -> None:
    ids = seed(console)
    admin = console.login("admin")
    target = console.accounts["admin"].id if whose == "own" else ids["user"]
    username = "admin" if whose == "own" else "victim"
    held = sorted(_roles(console, username))
    before = _actions(console)
    response = post_form(admin, f"/users/{target}", f"/users/{target}",
                         {"display_name": "X", "roles": [*held, guarded], "active": "1"})
    assert response.status_code == 403
    assert "Only the headteacher can give" in response.get_data(as_text=True)
    assert _roles(console, username) == set(held)
    assert _actions(console) == before
    # Nor by adding an account that has it.
    response = post_form(admin, "/users/new", "/users/new", {"username": "sneaky", "display_name": "S",
                                                              "roles": ["technician", guarded]})
    assert response.status_code == 403
    with console.session() as session:
        assert accounts.find_user(session, "sneaky") is None


def test_an_admin_edit_keeps_guarded_roles_it_cannot_see(console: Console) -> None:
    """The guarded boxes are disabled for an admin (a browser does not send them): saving the
    DSL's name must not strip her role, nor may the admin disable her account."""
    admin = console.login("admin")
    dsl = console.accounts["dsl"].id
    response = post_form(admin, f"/users/{dsl}", f"/users/{dsl}", {"display_name": "Ms D Shah", "roles": [],
                                                                   "active": "1"})
    assert response.status_code == 302
    assert _roles(console, "dsl") == {"dsl"}
    refused = post_form(admin, f"/users/{dsl}", f"/users/{dsl}", {"display_name": "Ms D Shah", "active": ""})
    assert refused.status_code == 403


def test_the_headteacher_gives_the_dsl_role_confirming_it_is_her(console: Console) -> None:
    ids = seed(console)
    head = console.login("headteacher")
    url = f"/users/{ids['user']}"
    page = head.get(url).get_data(as_text=True)
    assert 'id="guarded-roles-form"' in page and 'id="account-form"' not in page
    wrong = post_form(head, url, f"{url}/guarded-roles", {"guarded": ["dsl"], "password": "nope", "code": "1"})
    assert wrong.status_code == 400 and _roles(console, "victim") == {"technician"}
    victim = console.client()
    sign_in(victim, console.clock, Account("victim", frozenset({ConsoleRole.TECHNICIAN}), None, ids["user"]))
    done = post_form(head, url, f"{url}/guarded-roles", {"guarded": ["dsl"], **_sign(console, "headteacher")})
    assert done.status_code == 302, done.get_data(as_text=True)[:2000]
    assert _roles(console, "victim") == {"technician", "dsl"}
    assert victim.get("/account").status_code == 302  # signed in again, under the new roles
    with console.session() as session:
        entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "user.guarded_roles")).one()
        assert entry.actor == "headteacher" and "password+totp" in entry.detail and '"dsl"' in entry.detail


def test_no_one_changes_their_own_guarded_role(console: Console) -> None:
    head = console.login("headteacher")
    me = console.accounts["headteacher"].id
    assert 'id="guarded-roles-form"' not in head.get(f"/users/{me}").get_data(as_text=True)
    response = post_form(head, f"/users/{me}", f"/users/{me}/guarded-roles",
                         {"guarded": ["headteacher", "dsl"], **_sign(console, "headteacher")})
    assert response.status_code == 403 and "their own" in response.get_data(as_text=True)
    assert _roles(console, "headteacher") == {"headteacher"}


def test_a_dsl_account_is_reset_by_the_headteacher_not_an_admin(console: Console) -> None:
    dsl_client = console.login("dsl")
    dsl = console.accounts["dsl"].id
    admin = console.login("admin")
    for action in ("reset-password", "reset-totp"):
        refused = post_form(admin, f"/users/{dsl}", f"/users/{dsl}/{action}", {})
        assert refused.status_code == 403 and "only the headteacher" in refused.get_data(as_text=True)
    assert dsl_client.get("/alerts").status_code == 200
    head = console.login("headteacher")
    done = post_form(head, f"/users/{dsl}", f"/users/{dsl}/guarded-reset", {"kind": "password",
                                                                            **_sign(console, "headteacher")})
    html = done.get_data(as_text=True)
    assert done.status_code == 200 and 'id="one-time-password"' in html
    assert dsl_client.get("/alerts").status_code == 302  # the DSL's sessions ended
    with console.session() as session:
        entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "user.reset_password")).one()
        assert entry.actor == "headteacher" and "signature" in entry.detail


def test_a_headteachers_account_is_reset_by_two_admins(console: Console) -> None:
    with console.session() as session:
        second = accounts.create_user(session, username="admin2", display_name="Second Admin", site=SITE,
                                      roles=frozenset({ConsoleRole.ADMIN}), password_hash=password_hash())
        secret = "JBSWY3DPEHPK3PXP" * 2
        second.totp_secret = secret
        session.commit()
        second_account = Account("admin2", frozenset({ConsoleRole.ADMIN}), secret, second.id)
    head_phone = console.login("headteacher")
    head = console.accounts["headteacher"].id
    first = console.login("admin")
    asked = post_form(first, f"/users/{head}", f"/users/{head}/reset-totp", {})
    assert asked.status_code == 302
    assert "second admin must confirm" in first.get("/users").get_data(as_text=True)  # the flash
    assert head_phone.get("/requests").status_code == 200  # nothing happened yet
    again: Any = post_form(first, f"/users/{head}", f"/users/{head}/reset-totp", {})
    assert again.status_code == 403 and "second admin" in again.get_data(as_text=True)
    confirmer = console.client()
    sign_in(confirmer, console.clock, second_account)
    page = confirmer.get(f"/users/{head}").get_data(as_text=True)
    assert "Confirm the two-factor reset" in page and re.search(r"asked for by admin\b", page)
    confirmed = post_form(confirmer, f"/users/{head}", f"/users/{head}/reset-totp", {})
    assert confirmed.status_code == 302
    with console.session() as session:
        user = session.get(ConsoleUser, head)
        assert user is not None and user.totp_secret is None
        assert session.scalars(select(ConsoleSession).where(ConsoleSession.user_id == head,
                                                            ConsoleSession.ended_at.is_(None))).all() == []
    assert head_phone.get("/requests").status_code == 302
    assert _actions(console, "user.reset_totp") == ["user.reset_totp_requested", "user.reset_totp_confirmed"]
    with console.session() as session:
        entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "user.reset_totp_confirmed")).one()
        assert '"requested_by":"admin"' in entry.detail and '"confirmed_by":"admin2"' in entry.detail


def _second_admin_made_by_the_first(console: Console, how: str) -> Account:
    """An admin account whose credentials the first admin set: added by them, or an existing
    admin's account whose password and second factor they reset. They can sign in as it."""
    first = console.login("admin")
    if how == "added":
        shown = post_form(first, "/users/new", "/users/new",
                          {"username": "admin2", "display_name": "Second Admin", "roles": ["admin"]})
        assert shown.status_code == 200 and 'id="one-time-password"' in shown.get_data(as_text=True)
    else:
        with console.session() as session:
            accounts.create_user(session, username="admin2", display_name="Second Admin", site=SITE,
                                 roles=frozenset({ConsoleRole.ADMIN}), password_hash=password_hash())
            session.commit()
        with console.session() as session:
            second_id = accounts.find_user(session, "admin2").id  # type: ignore[union-attr]
        for action in ("reset-password", "reset-totp"):
            done = post_form(first, f"/users/{second_id}", f"/users/{second_id}/{action}", {})
            assert done.status_code in (200, 302)
    # The first admin then signs in as it (the one-time password, their own authenticator).
    secret = "KRSXG5CTMVRXEZLUKRSXG5CTMVRXEZLU"
    with console.session() as session:
        second = accounts.find_user(session, "admin2")
        assert second is not None
        second.password_hash = password_hash()
        second.totp_secret = secret
        session.commit()
        return Account("admin2", frozenset({ConsoleRole.ADMIN}), secret, second.id)


@pytest.mark.parametrize("how", ["added", "reset"])
def test_an_admin_cannot_be_the_second_admin_through_an_account_they_made(console: Console, how: str) -> None:
    puppet = _second_admin_made_by_the_first(console, how)
    head_phone = console.login("headteacher")
    head = console.accounts["headteacher"].id
    first = console.login("admin")
    before = _actions(console, "user.reset_password")
    assert post_form(first, f"/users/{head}", f"/users/{head}/reset-password", {}).status_code == 302
    confirmer = console.client()
    sign_in(confirmer, console.clock, puppet)
    own = "the puppet's own one"  # a password someone else set: the holder chooses theirs first
    chosen = post_form(confirmer, "/account", "/account/password",
                       {"current_password": PASSWORD, "new_password": own, "confirm_password": own})
    assert chosen.status_code == 302
    refused = post_form(confirmer, f"/users/{head}", f"/users/{head}/reset-password", {})
    assert refused.status_code == 403 and "independent" in refused.get_data(as_text=True)
    assert head_phone.get("/requests").status_code == 200  # her account and sessions are untouched
    assert _actions(console, "user.reset_password") == [*before, "user.reset_password_requested"]


def test_the_headteacher_is_told_when_two_admins_reset_her_account(console: Console) -> None:
    with console.session() as session:
        second = accounts.create_user(session, username="admin2", display_name="Second Admin", site=SITE,
                                      roles=frozenset({ConsoleRole.ADMIN}), password_hash=password_hash())
        second.totp_secret = "JBSWY3DPEHPK3PXP" * 2
        session.commit()
        second_account = Account("admin2", frozenset({ConsoleRole.ADMIN}), second.totp_secret, second.id)
    head = console.accounts["headteacher"].id
    first = console.login("admin")
    assert post_form(first, f"/users/{head}", f"/users/{head}/reset-totp", {}).status_code == 302
    # Told at once on her dashboard, and by e-mail as every audit notice is (tests/scheduler/test_notices.py).
    head_phone = console.login("headteacher")
    page = head_phone.get("/dashboard").get_data(as_text=True)
    assert 'id="notices"' in page and "admin asked to reset the second factor" in page
    assert 'id="notices"' not in first.get("/dashboard").get_data(as_text=True)
    confirmer = console.client()
    sign_in(confirmer, console.clock, second_account)
    assert post_form(confirmer, f"/users/{head}", f"/users/{head}/reset-totp", {}).status_code == 302
    # Her sessions ended with the reset; signed in again (new authenticator), she reads who did it.
    with console.session() as session:
        from schoolgate.services import notices

        told = notices.recent(session, SITE, console.clock.now(), frozenset({notices.Permission.GRANT_GUARDED_ROLES}))
    assert [n.kind for n in told] == ["user.reset_totp_confirmed", "user.reset_totp_requested"]
    assert "admin asked and admin2 confirmed" in told[0].text and told[0].path == f"/users/{head}"


@pytest.mark.parametrize("change", [{"email": "admin@attacker.example"}, {"email": ""}, {"receives_digest": ""}])
def test_an_admin_cannot_send_the_dsls_cases_elsewhere(console: Console, change: dict[str, str]) -> None:
    """The DSL's address receives alerts naming children and her digest: an admin who changed it
    would read them, and one who turned the digest off would stop her hearing of them."""
    dsl = console.accounts["dsl"].id
    with console.session() as session:
        user = session.get(ConsoleUser, dsl)
        assert user is not None
        user.email, user.receives_digest = "dsl@school.example", True
        session.commit()
    admin = console.login("admin")
    page = admin.get(f"/users/{dsl}").get_data(as_text=True)
    assert 'name="email" value="dsl@school.example"' in page and 'type="hidden" name="receives_digest"' in page
    form = {"display_name": "Ms D Shah", "email": "dsl@school.example", "receives_digest": "1", "active": "1",
            **change}
    refused = post_form(admin, f"/users/{dsl}", f"/users/{dsl}", form)
    assert refused.status_code == 403 and "only the headteacher changes it" in refused.get_data(as_text=True)
    with console.session() as session:
        user = session.get(ConsoleUser, dsl)
        assert user is not None and (user.email, user.receives_digest) == ("dsl@school.example", True)
    # The page as a browser sends it (the address and digest as they are) still saves her name.
    as_sent = {"display_name": "Ms Dee Shah", "email": "dsl@school.example", "receives_digest": "1", "active": "1"}
    kept = post_form(admin, f"/users/{dsl}", f"/users/{dsl}", as_sent)
    assert kept.status_code == 302


def test_the_headteacher_sets_the_dsls_address_confirming_it_is_her(console: Console) -> None:
    dsl = console.accounts["dsl"].id
    head = console.login("headteacher")
    url = f"/users/{dsl}"
    assert 'id="f-guarded-email"' in head.get(url).get_data(as_text=True)
    done = post_form(head, url, f"{url}/guarded-roles", {"guarded": ["dsl"], "email": "new.dsl@school.example",
                                                         "receives_digest": "1", **_sign(console, "headteacher")})
    assert done.status_code == 302, done.get_data(as_text=True)[:2000]
    with console.session() as session:
        user = session.get(ConsoleUser, dsl)
        assert user is not None and (user.email, user.receives_digest) == ("new.dsl@school.example", True)
        entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "user.guarded_roles")).one()
        assert '"email":"new.dsl@school.example"' in entry.detail and '"email_before":null' in entry.detail


def test_a_changed_address_is_told_to_the_old_address_and_the_new(console: Console) -> None:
    """An admin may change a technician's address, but an address changed to read someone's
    mail must not pass unseen: the old address hears of it (the e-mail itself is sent by the
    notifications job: tests/scheduler/test_notices.py)."""
    technician = console.accounts["technician"].id
    with console.session() as session:
        user = session.get(ConsoleUser, technician)
        assert user is not None
        user.email = "tech@school.example"
        session.commit()
    admin = console.login("admin")
    form = {"display_name": "Tech", "email": "tech.new@school.example", "roles": ["technician"], "active": "1"}
    assert post_form(admin, f"/users/{technician}", f"/users/{technician}", form).status_code == 302
    unchanged = {**form, "display_name": "Tech Person"}  # saving again without a new address tells no one
    assert post_form(admin, f"/users/{technician}", f"/users/{technician}", unchanged).status_code == 302
    with console.session() as session:
        from schoolgate.services import notices

        told = [n for n in notices.untold(session, SITE) if n.kind == notices.ADDRESS_CHANGED]
    assert len(told) == 1
    assert told[0].addresses == ("tech@school.example", "tech.new@school.example")
    assert "admin changed the e-mail address of the schoolgate console account" in told[0].text
    assert "from tech@school.example to tech.new@school.example" in told[0].text
