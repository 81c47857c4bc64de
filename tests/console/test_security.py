"""Web security: CSRF, headers on every response, sign-in lockout, session expiry, second
factor, and logged attacker-controlled text rendered inert on every page that shows it."""

from __future__ import annotations

import re
from datetime import timedelta

import pyotp
import pytest
from console_testkit import (
    PASSWORD,
    SITE,
    Console,
    add_event,
    csrf_from,
    password_hash,
    post_form,
    seed,
    totp_now,
)

from schoolgate.console.security import CONTENT_SECURITY_POLICY

# -- CSRF ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "role", "data"),
    [
        ("/login", None, {"username": "technician", "password": PASSWORD}),
        ("/request", None, {"requester": "Sam", "url": "https://www.facebook.com/", "reasons": "project"}),
        ("/reports/new", "technician", {"submitter_name": "T", "urls": "https://bad.example/", "nature": "x"}),
        ("/policy/blocks", "technician", {"target": "domain", "value": "bad.example.org", "reason": "x"}),
        ("/users/new", "admin", {"username": "newbie", "display_name": "New", "roles": "technician"}),
        ("/logout", "technician", {}),
    ],
)
def test_forms_without_the_csrf_token_are_refused(
    console: Console, path: str, role: str | None, data: dict[str, str]
) -> None:
    client = console.login(role)
    for token in (None, "forged-token"):
        payload = dict(data) if token is None else {**data, "csrf_token": token}
        response = client.post(path, data=payload)
        assert response.status_code == 400, (path, token, response.status_code)
        assert "did not come from this console" in response.get_data(as_text=True)
    # Nothing happened: still signed in (or still signed out), nothing created.
    if role is not None:
        assert client.get("/dashboard").status_code == 200


def test_csrf_token_from_another_session_is_refused(console: Console) -> None:
    other = console.login("technician")
    foreign = csrf_from(other.get("/reports/new").get_data(as_text=True))
    client = console.login("technician")
    response = client.post(
        "/policy/blocks", data={"csrf_token": foreign, "target": "domain", "value": "bad.example.org", "reason": "x"}
    )
    assert response.status_code == 400


# -- headers ---------------------------------------------------------------------------------------


def test_security_headers_on_every_kind_of_response(console: Console) -> None:
    anonymous = console.client()
    signed_in = console.login("technician")
    responses = [
        anonymous.get("/login"),
        anonymous.get("/request"),
        anonymous.get("/dashboard"),  # 200, 200, 302
        anonymous.get("/no-such-page"),
        anonymous.post("/login", data={}),  # 404, 400 (no CSRF)
        anonymous.get("/static/console.css"),
        anonymous.get("/static/console.js"),
        signed_in.get("/dashboard"),
        signed_in.get("/users"),
        signed_in.get("/requests/999999"),  # 200, 403, 404
        signed_in.get("/activity?format=csv"),
    ]
    statuses = sorted({r.status_code for r in responses})
    assert statuses == [200, 302, 400, 403, 404]
    for response in responses:
        headers = response.headers
        assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert "Strict-Transport-Security" not in headers  # this test app is plain HTTP
    csp = CONTENT_SECURITY_POLICY
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "nonce-" not in csp


def test_tls_console_sends_hsts_and_secure_cookies(console: Console) -> None:
    from schoolgate.console import create_app

    app = create_app(console.config, session_factory=console.factory, clock=console.clock, tls=True)
    response = app.test_client().get("/login")
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")
    cookie = response.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_pages_have_no_inline_script_style_or_external_urls(console: Console) -> None:
    ids = seed(console)
    client = console.login("headteacher")
    for path in (
        "/dashboard",
        f"/requests/{ids['request']}",
        f"/alerts/{ids['alert']}",
        "/policy",
        "/activity",
        "/login",
        "/request",
    ):
        html = client.get(path).get_data(as_text=True)
        assert not re.search(r"<script(?![^>]*\bsrc=\"/static/)", html), path
        assert " style=" not in html and "<style" not in html, path
        assert not re.search(r"(src|href)=\"(https?:)?//", html), path


# -- sign-in ----------------------------------------------------------------------------------------


def _try_password(client, username: str, password: str):  # type: ignore[no-untyped-def]
    token = csrf_from(client.get("/login").get_data(as_text=True))
    return client.post("/login", data={"csrf_token": token, "username": username, "password": password})


def test_totp_is_required_and_each_code_works_once(console: Console) -> None:
    account = console.accounts["dsl"]
    client = console.client()
    response = _try_password(client, "dsl", PASSWORD)
    assert response.headers["Location"].endswith("/login/code")
    # Signed in only after the code: the dashboard still sends us to sign in.
    assert client.get("/dashboard").status_code == 302
    token = csrf_from(client.get("/login/code").get_data(as_text=True))
    wrong = client.post("/login/code", data={"csrf_token": token, "code": "000000"})
    assert wrong.status_code == 400
    code = totp_now(account.totp_secret or "", console.clock)
    assert client.post("/login/code", data={"csrf_token": token, "code": code}).status_code == 302
    assert client.get("/dashboard").status_code == 200
    # The same code again, in another browser, within its 30 seconds: refused.
    second = console.client()
    _try_password(second, "dsl", PASSWORD)
    token = csrf_from(second.get("/login/code").get_data(as_text=True))
    assert second.post("/login/code", data={"csrf_token": token, "code": code}).status_code == 400


def test_first_sign_in_of_a_dsl_enrols_totp_with_an_inline_svg_qr(console: Console) -> None:
    from schoolgate.console import accounts
    from schoolgate.services.permissions import ConsoleRole

    with console.session() as session:
        accounts.create_user(
            session,
            username="newdsl",
            display_name="New DSL",
            site=SITE,
            roles=frozenset({ConsoleRole.DSL}),
            password_hash=password_hash(),
        )
        session.commit()
    client = console.client()
    response = _try_password(client, "newdsl", PASSWORD)
    assert response.headers["Location"].endswith("/login/enrol")
    page = client.get("/login/enrol").get_data(as_text=True)
    assert "<svg" in page and "<img" not in page
    secret = re.search(r'id="totp-secret">([A-Z2-7 ]+)<', page)
    assert secret
    assert client.get("/dashboard").status_code == 302  # not signed in until confirmed
    code = pyotp.TOTP(secret.group(1).replace(" ", "")).at(console.clock.now())
    response = client.post("/login/enrol", data={"csrf_token": csrf_from(page), "code": code})
    assert response.status_code == 302
    assert client.get("/alerts").status_code == 200
    with console.session() as session:
        assert accounts.find_user(session, "newdsl").totp_secret == secret.group(1).replace(" ", "")  # type: ignore[union-attr]


def test_sessions_expire_after_the_idle_timeout(console: Console) -> None:
    client = console.login("technician")
    console.clock.advance(minutes=29)
    assert client.get("/dashboard").status_code == 200  # activity resets the idle clock
    console.clock.advance(minutes=29)
    assert client.get("/dashboard").status_code == 200
    console.clock.advance(minutes=31)
    response = client.get("/dashboard")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    assert "inactivity" in client.get("/login").get_data(as_text=True)


def test_password_reset_signs_out_other_sessions(console: Console) -> None:
    client = console.login("technician")
    admin = console.login("admin")
    victim_id = console.accounts["technician"].id
    response = post_form(admin, f"/users/{victim_id}", f"/users/{victim_id}/reset-password", {})
    assert response.status_code == 200 and 'id="one-time-password"' in response.get_data(as_text=True)
    assert client.get("/dashboard").status_code == 302


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:alert(1)"]
)
def test_sign_in_never_redirects_off_site(console: Console, target: str) -> None:
    client = console.client()
    token = csrf_from(client.get("/login").get_data(as_text=True))
    response = client.post(
        "/login",
        query_string={"next": target},
        data={"csrf_token": token, "username": "technician", "password": PASSWORD},
    )
    assert response.status_code == 302
    assert response.headers["Location"] == "/dashboard"


# -- attacker-controlled text -----------------------------------------------------------------------

PAYLOADS = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(2)>',
    "javascript:alert(3)",
    "'><svg onload=alert(4)>",
    "\u202egnp.exe\u0000\x1b[31m",
]
LONG = "a" * 5000 + "<script>alert(5)</script>"


def _seed_hostile(console: Console) -> dict[str, int]:
    from schoolgate.store.models import Alert

    ids = seed(console)
    now = console.clock.now()
    with console.session() as session:
        for number, payload in enumerate([*PAYLOADS, LONG]):
            add_event(
                session,
                host=f"x{number}.example{payload}",
                url=f"javascript:{payload}",
                search_term=payload,
                device_name=payload,
                person_name=payload,
                device_id=f"dev{payload}",
                person_id=payload[:90],
                service=payload[:50],
                ts=now - timedelta(minutes=number + 1),
            )
        alert = session.get(Alert, ids["alert"])
        assert alert is not None
        alert.title = PAYLOADS[1]
        alert.summary = PAYLOADS[0] + LONG
        alert.device_id = PAYLOADS[1][:90]
        session.commit()
        ids["hostile_event"] = max(
            e.id for e in session.query(__import__("schoolgate.store.models", fromlist=["AccessEvent"]).AccessEvent)
        )
    return ids


def _assert_inert(html: str, where: str) -> None:
    lowered = html.lower()
    assert "<script>alert" not in lowered, where
    assert "<img src=x" not in lowered, where
    assert "<svg onload" not in lowered, where
    assert 'href="javascript:' not in lowered and "href='javascript:" not in lowered, where
    assert "onerror=alert" not in lowered.replace("&#34;&gt;&lt;img src=x onerror=alert", ""), where
    assert "\x00" not in html and "\x1b" not in html, where


def test_logged_payloads_render_as_inert_text_everywhere(console: Console) -> None:
    ids = _seed_hostile(console)
    pages = [
        "/dashboard",
        "/activity",
        "/activity?verdict=block",
        f"/activity/{ids['hostile_event']}",
        "/alerts",
        f"/alerts/{ids['alert']}",
        "/alerts/bans",
        "/policy",
        "/policy?host=" + PAYLOADS[1],
        "/activity?host=" + PAYLOADS[0],
    ]
    for role in ("headteacher", "technician"):
        client = console.login(role)
        for page in pages:
            response = client.get(page)
            if response.status_code == 403:
                continue
            assert response.status_code in (200, 400), (role, page, response.status_code)
            html = response.get_data(as_text=True)
            _assert_inert(html, f"{role} {page}")
    # The escaped forms are there: the text is shown, just not run.
    html = console.login("headteacher").get("/activity").get_data(as_text=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_block_page_prefill_cannot_inject(console: Console) -> None:
    client = console.client()
    response = client.get(
        "/request",
        query_string={"url": PAYLOADS[1], "device": PAYLOADS[0], "at": PAYLOADS[3], "rule": "javascript:alert(1)"},
    )
    assert response.status_code == 200
    _assert_inert(response.get_data(as_text=True), "/request")


def test_csv_export_neutralises_formulas(console: Console) -> None:
    ids = seed(console)
    with console.session() as session:
        add_event(session, host='=HYPERLINK("http://evil/")', search_term="+cmd|' /C calc'!A0")
        add_event(session, host="nul.example", url="https://nul.example/\x01a\x1b[31mb\x7f",
                  search_term="fun\u202egnp.exe")
        session.commit()
    csv_text = console.login("technician").get("/activity?format=csv").get_data(as_text=True)
    assert "'=HYPERLINK" in csv_text and "'+cmd" in csv_text
    # Control characters dropped, the right-to-left override shown rather than obeyed.
    assert "https://nul.example/a[31mb" in csv_text and "fun\\u202egnp.exe" in csv_text
    assert not any((ord(c) < 32 and c not in "\r\n") or 0x7F <= ord(c) <= 0x9F or c == "\u202e" for c in csv_text)
    assert "\n=HYPERLINK" not in csv_text and ",=HYPERLINK" not in csv_text
    assert ids  # the seeded event is there too


def test_text_that_is_not_utf8_is_shown_escaped(console: Console) -> None:
    """A row holding bytes that are not UTF-8 (written by other means) does not break the page."""
    from sqlalchemy import text

    if console.extra["backend"] == "postgresql":
        pytest.skip("a PostgreSQL UTF8 database refuses such bytes on the way in: nothing to read back")

    with console.session() as session:
        event = add_event(session, host="placeholder.example")
        session.execute(text("UPDATE events SET host = CAST(X'62616466ff2e6578616d706c65' AS TEXT), "
                             "search_term = CAST(X'c328' AS TEXT) WHERE id = :id"), {"id": event.id})
        session.commit()
        event_id = event.id
    console.factory.kw["bind"].dispose()  # new connections pick up the console's text handling
    client = console.login("technician")
    for path in ("/activity", f"/activity/{event_id}"):
        response = client.get(path)
        assert response.status_code == 200, path
        html = response.get_data(as_text=True)
        assert "badf\\xff.example" in html, path
    csv_text = client.get("/activity?format=csv").get_data(as_text=True)
    assert "badf" in csv_text


def test_printable_escapes_controls_bidi_and_stray_bytes() -> None:
    from schoolgate.console.text import printable

    assert printable("plain text, ünïcode ✓") == "plain text, ünïcode ✓"
    assert printable("a\x00b\x1b[31m") == "a\\x00b\\x1b[31m"
    assert printable("evil\u202etxt.exe") == "evil\\u202etxt.exe"
    assert printable("caf\udce9") == "caf\\xe9"
    assert printable("tab\tand\nnewline") == "tab\tand\nnewline"


def _audit_actions(console: Console, username: str) -> list[str]:
    from sqlalchemy import select

    from schoolgate.store.models import AuditEntry

    with console.session() as session:
        return list(
            session.scalars(
                select(AuditEntry.action)
                .where(AuditEntry.object_type == "console_user", AuditEntry.actor == username)
                .order_by(AuditEntry.seq)
            )
        )


def test_changes_to_ones_own_account_are_audited(console: Console) -> None:
    # Every change to users goes to the audit log, the ones people make to themselves too.
    client = console.login("technician")
    new_password = "a much longer new passphrase"
    response = post_form(
        client,
        "/account",
        "/account/password",
        {"current_password": PASSWORD, "new_password": new_password, "confirm_password": new_password},
    )
    assert response.status_code == 302
    page = client.get("/account/totp").get_data(as_text=True)
    secret = re.search(r'id="totp-secret">([A-Z2-7 ]+)<', page)
    assert secret
    console.clock.advance(seconds=31)
    code = pyotp.TOTP(secret.group(1).replace(" ", "")).at(console.clock.now())
    response = client.post(
        "/account/totp", data={"csrf_token": csrf_from(page), "code": code, "current_password": new_password}
    )
    assert response.status_code == 302
    assert _audit_actions(console, "technician") == ["user.change_password", "user.totp_enrol"]
