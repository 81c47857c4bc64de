"""The pupil block page and its "this upset me" button, through the addons (taddons/tflow), the
real policy, real SQLite events and the real alert engine that raises the DSL's case."""

from __future__ import annotations

import html
import re
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from mitmproxy import http
from mitmproxy.proxy.layers.http import HttpRequestHook
from mitmproxy.test import tflow
from proxy_testkit import (  # tests/proxy/conftest.py
    FACEBOOK_IP,
    OTHER_IP,
    PUPIL,
    SITE,
    STAFF,
    TRUSTED_PUPIL,
    Harness,
    events,
)
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.policy.types import Client, Role
from schoolgate.proxy import blockpage
from schoolgate.proxy.addons import UPSET_LIMIT, Services
from schoolgate.proxy.upset import UPSET_PATH, UpsetNote, UpsetSigner, load_key
from schoolgate.services.alert_rules import KIND_PUPIL_UPSET, AlertEngine
from schoolgate.store.events import EventWriter
from schoolgate.store.models import AccessEvent, Alert

BANNED_PUPIL = Client(ip="10.20.1.9", device_id="LAP-009", device_name="Laptop 9", role=Role.PUPIL)
UNKNOWN_ON_PUPIL_NET = Client(ip="127.0.0.9")  # not registered; the test policy's loopback is pupils'


@pytest.fixture
def known_clients() -> dict[str, Client]:
    return {c.ip: c for c in (PUPIL, TRUSTED_PUPIL, STAFF, BANNED_PUPIL)}


def token_of(page: str) -> str:
    match = re.search(r'name="token" value="([^"]+)"', page)
    assert match, "no upset button on the page"
    return html.unescape(match.group(1))


def post(harness: Harness, ctx: Any, url: str, form: dict[str, str], **headers: str) -> http.HTTPFlow:
    flow = tflow.tflow(client_conn=ctx.client)
    flow.server_conn.address = ctx.server.address
    flow.request = http.Request.make(
        "POST", url, urlencode(form).encode(), {"Content-Type": "application/x-www-form-urlencoded", **headers}
    )
    harness.trigger(HttpRequestHook(flow))
    return flow


def blocked_page(harness: Harness, who: Client, url: str = "http://www.facebook.com/groups/year6") -> tuple[Any, str]:
    ctx = harness.connect(who, FACEBOOK_IP, 80)
    flow = harness.request(ctx, url)
    assert flow.response is not None and flow.response.status_code == 403
    page = flow.response.get_text()
    assert page is not None
    return ctx, page


# ------------------------------------------------------------------------------ which page


@pytest.mark.parametrize(
    ("who", "pupil_page"),
    [
        (PUPIL, True),  # a pupil's registered device
        (UNKNOWN_ON_PUPIL_NET, True),  # unregistered, on the pupils' network
        (STAFF, False),
    ],
)
def test_pupils_get_the_childrens_page_and_adults_keep_theirs(
    harness: Harness, who: Client, pupil_page: bool
) -> None:
    _ctx, page = blocked_page(harness, who)
    assert ("This website is blocked" in page) is pupil_page
    assert ('name="token"' in page) is pupil_page
    # Both name the school and the rule, and cite the category's published rationale.
    assert "Test Primary" in page and "social-media" in page and "Social Media Policy §9" in page
    assert "share posts and messages with strangers" in page


def test_pupil_page_words(harness: Harness) -> None:
    _ctx, page = blocked_page(harness, PUPIL)
    kid = re.search(r'<div class="kid" id="for-children">(.*?)</div>', page, re.S)
    assert kid is not None
    text = " ".join(re.sub(r"<[^>]+>", " ", html.unescape(kid.group(1))).split())
    assert "This website is blocked" in text and "Ask your teacher" in text and "Test Primary" in text
    # Short words in short sentences for 4 to 11 year olds (the school's name aside).
    for sentence in re.split(r"(?<=[.!?])\s+|(?<=blocked)\s+", text.replace("Test Primary", "school")):
        words = re.findall(r"[A-Za-z']+", sentence)
        assert len(words) <= 9, sentence
        assert all(len(word) <= 8 for word in words), sentence
    assert "Press the button. A grown-up who keeps you safe will be told." in page
    assert '<button type="submit" id="upset-button">This upset me</button>' in page
    assert "Childline" in page and "0800 1111" in page and 'href="tel:08001111"' in page
    assert "<svg" in page and "<img" not in page  # the picture is inline: nothing is fetched
    assert "For grown-ups" in page and "filtered and monitored" in page


def test_pupil_page_csp_lets_only_its_own_form_post(harness: Harness) -> None:
    ctx = harness.connect(PUPIL, FACEBOOK_IP, 80)
    flow = harness.request(ctx, "http://www.facebook.com/")
    assert flow.response is not None
    csp = flow.response.headers["Content-Security-Policy"]
    assert "form-action 'self'" in csp and "script-src 'none'" in csp and "img-src 'none'" in csp
    staff = harness.request(harness.connect(STAFF, FACEBOOK_IP, 80), "http://www.facebook.com/")
    assert staff.response is not None and "form-action 'none'" in staff.response.headers["Content-Security-Policy"]


def test_banned_pupil_still_gets_the_childrens_page() -> None:
    from schoolgate.policy.types import Decision, Verdict
    from schoolgate.proxy.addons import is_pupil

    supervised = Decision(verdict=Verdict.BLOCK, rule_id="r", clause="", reason="", role=Role.SUPERVISED)
    assert is_pupil(BANNED_PUPIL, supervised)
    assert not is_pupil(Client(ip="10.1.1.1", role=Role.STAFF), supervised)
    assert not is_pupil(Client(ip="10.1.1.1"), supervised)
    # A pupil's own phone, which the register does not know, banned by its MAC: the pupils'
    # network made it a pupil's before the ban, so it still gets the children's page.
    phone = Client(ip="10.1.1.1", mac="02:41:00:00:20:77")
    assert is_pupil(phone, replace(supervised, own_role=Role.PUPIL))
    assert not is_pupil(phone, replace(supervised, own_role=Role.GUEST))


# ------------------------------------------------------------------------ the upset button


def test_upset_button_logs_the_evidence_and_the_dsl_gets_a_case(
    harness: Harness, services: Services, sessions: sessionmaker[Session], writer: EventWriter, clock: Any
) -> None:
    ctx, page = blocked_page(harness, PUPIL, "http://www.facebook.com/groups/year6?x=1")
    clock.instant += timedelta(minutes=3)
    flow = post(harness, ctx, f"http://www.facebook.com{UPSET_PATH}", {"token": token_of(page)})
    assert flow.response is not None and flow.response.status_code == 200
    thanks = flow.response.get_text() or ""
    assert "Thank you for telling us" in thanks and "0800 1111" in thanks
    assert services.counters.upset_reports == 1
    shown, pressed = events(sessions, writer)
    assert "upset" not in shown.flags
    assert set(pressed.flags.split(",")) >= {"upset"}
    # The evidence: the page the child was on, the device, its address, the person, the time.
    assert pressed.url == "http://www.facebook.com/groups/year6?x=1"
    assert (pressed.host, pressed.device_id, pressed.client_ip, pressed.person_id) == (
        "www.facebook.com", PUPIL.device_id, PUPIL.ip, PUPIL.person_id,
    )
    assert pressed.ts == clock.instant

    with sessions() as session:
        AlertEngine().scan(session, SITE, None, clock.instant)
        session.commit()
        cases = session.scalars(select(Alert).where(Alert.kind == KIND_PUPIL_UPSET)).all()
    (case,) = cases
    assert case.severity == "high"  # e-mailed to the DSL at once
    assert (case.device_id, case.person_id, case.client_ip) == (PUPIL.device_id, PUPIL.person_id, PUPIL.ip)
    assert "Laptop 5 (Pupil Five)" in case.title
    assert "www.facebook.com/groups/year6?x=1" in case.summary and "this upset me" in case.summary
    assert "Wednesday 18 November at 11:03" in case.summary


def test_upset_button_works_where_the_page_is_shown_over_tls(
    harness: Harness, services: Services, sessions: sessionmaker[Session], writer: EventWriter
) -> None:
    # A device that trusts the school CA sees HTTPS block pages, and posts back over the same
    # intercepted connection to the same origin.
    ctx = harness.connect(TRUSTED_PUPIL, FACEBOOK_IP)
    harness.hello(ctx, "www.facebook.com")
    ctx.client.tls = True
    flow = harness.request(ctx, "https://www.facebook.com/")
    assert flow.response is not None
    pressed = post(harness, ctx, f"https://www.facebook.com{UPSET_PATH}", {"token": token_of(flow.response.text or "")})
    assert pressed.response is not None and pressed.response.status_code == 200
    assert any("upset" in e.flags for e in events(sessions, writer))


@pytest.mark.parametrize(
    "tamper",
    ["other device", "other site", "forged", "expired", "cross-site", "no token", "huge"],
)
def test_upset_button_refuses_what_it_cannot_vouch_for(
    harness: Harness,
    services: Services,
    sessions: sessionmaker[Session],
    writer: EventWriter,
    clock: Any,
    tamper: str,
) -> None:
    ctx, page = blocked_page(harness, PUPIL)
    token = token_of(page)
    url = f"http://www.facebook.com{UPSET_PATH}"
    headers: dict[str, str] = {}
    form = {"token": token}
    if tamper == "other device":
        ctx, _ = blocked_page(harness, UNKNOWN_ON_PUPIL_NET)  # the token was issued to PUPIL's address
    elif tamper == "other site":
        url = f"http://fbcdn.net{UPSET_PATH}"
    elif tamper == "forged":
        form["token"] = UpsetSigner(b"someone else's key, not ours").issue(
            UpsetNote(PUPIL.ip, "www.facebook.com", None, "social-media", clock.instant)
        )
    elif tamper == "expired":
        clock.instant += timedelta(hours=1, minutes=1)
    elif tamper == "cross-site":
        headers["Sec-Fetch-Site"] = "cross-site"
    elif tamper == "no token":
        form = {}
    elif tamper == "huge":
        form["padding"] = "x" * 10_000
    flow = post(harness, ctx, url, form, **headers)
    assert flow.response is not None and flow.response.status_code == 403
    assert "Please tell your teacher" in (flow.response.text or "")
    assert services.counters.upset_reports == 0 and services.counters.upset_refused == 1
    assert not [e for e in events(sessions, writer) if "upset" in e.flags]


def test_the_path_is_only_ours_on_a_blocked_site(harness: Harness, services: Services) -> None:
    ctx = harness.connect(PUPIL, OTHER_IP, 80)
    flow = post(harness, ctx, f"http://www.example.org{UPSET_PATH}", {"token": "x"})
    assert flow.response is None  # an allowed site's own page: forwarded untouched
    assert services.counters.upset_refused == 0


def test_a_pupil_pressing_again_and_again_is_thanked_but_logged_a_few_times(
    harness: Harness, services: Services, sessions: sessionmaker[Session], writer: EventWriter
) -> None:
    ctx, page = blocked_page(harness, PUPIL)
    for _ in range(UPSET_LIMIT + 3):
        flow = post(harness, ctx, f"http://www.facebook.com{UPSET_PATH}", {"token": token_of(page)})
        assert flow.response is not None and flow.response.status_code == 200
    assert services.counters.upset_reports == UPSET_LIMIT
    assert services.counters.upset_limited == 3
    assert len([e for e in events(sessions, writer) if "upset" in e.flags]) == UPSET_LIMIT
    with sessions() as session:
        AlertEngine().scan(session, SITE, None, services.now())
        session.commit()
        (case,) = session.scalars(select(Alert).where(Alert.kind == KIND_PUPIL_UPSET)).all()
    assert case.trigger_count == UPSET_LIMIT  # one case, folded


# ---------------------------------------------------------------------------------- the key


def test_the_key_is_made_once_private_and_shared(tmp_path: Path) -> None:
    path = tmp_path / "ca" / "upset-button.key"
    first = load_key(path)
    assert load_key(path) == first and len(first) == 32
    assert path.stat().st_mode & 0o777 == 0o600
    path.write_text("not hex\n")
    replaced = load_key(path)
    assert replaced != first and load_key(path) == replaced
    note = UpsetNote("10.0.0.1", "a.example", "http://a.example/", "r", blockpage_time())
    signer = UpsetSigner(replaced)
    token = signer.issue(note)
    assert signer.check(token, client_ip="10.0.0.1", host="a.example", now=note.shown_at) == note
    assert signer.check(token + "x", client_ip="10.0.0.1", host="a.example", now=note.shown_at) is None
    assert signer.check("a.b.c", client_ip="10.0.0.1", host="a.example", now=note.shown_at) is None


def blockpage_time() -> Any:
    from datetime import UTC, datetime

    return datetime(2026, 11, 18, 11, 0, tzinfo=UTC)


def test_thank_you_and_failure_pages_escape_the_school_name() -> None:
    for page in (blockpage.render_upset_thanks("<b>St Mary's</b>"), blockpage.render_upset_failed("<b>x</b>")):
        assert "<b>" not in page.split("<body", 1)[1]


def test_other_events_never_raise_an_upset_case(sessions: sessionmaker[Session], harness: Harness,
                                                 writer: EventWriter, services: Services) -> None:
    blocked_page(harness, PUPIL)
    assert writer.flush()
    with sessions() as session:
        AlertEngine().scan(session, SITE, None, services.now())
        assert session.scalars(select(Alert).where(Alert.kind == KIND_PUPIL_UPSET)).all() == []
        assert session.scalars(select(AccessEvent)).all()
