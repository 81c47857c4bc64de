"""The console pages of the people the policies name: a teacher opening a site for the lesson, the
headteacher deciding from the top of the page, the DSL's part in requests for pupils, and a
technician who forwards rather than closes."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import pytest
from console_testkit import EXAMPLE_POLICY, SITE, Console, post_form, seed
from sqlalchemy import select

from schoolgate.console.policyref import ConsolePolicy
from schoolgate.store.models import AccessRequest, ConsoleUser, LessonUnlock, Person, PolicyExceptionRow

_variants = sys.modules["schoolgate_tests_policy_variants"]  # tests/policy_variants.py


@pytest.fixture
def teaching(console: Console, tmp_path: Path) -> Console:
    """The teacher account linked to Mr Green in the people register, who teaches 6B."""
    policy = _variants.with_games(EXAMPLE_POLICY, tmp_path)
    console.app.extensions["schoolgate.policy"] = ConsolePolicy(dataclasses.replace(console.config, policy=policy))
    with console.session() as session:
        session.add_all([
            Person(site=SITE, external_id="T1", name="Mr Green", role="staff", groups="6B,staff"),
            Person(site=SITE, external_id="P61", name="Ben", role="pupil", year_group=6, groups="6B"),
        ])
        user = session.scalars(select(ConsoleUser).where(ConsoleUser.username == "teacher")).one()
        user.person_external_id = "T1"
        session.commit()
    return console


def test_a_teacher_opens_a_game_for_the_lesson_and_the_dsl_sees_and_ends_it(teaching: Console) -> None:
    teacher = teaching.login("teacher")
    assert teacher.get("/dashboard").status_code == 403  # one power: no dashboard
    page = teacher.get("/lesson").get_data(as_text=True)
    # Monday 23 November 2026, 10:35: the morning break runs 10:30-10:45.
    assert "when morning break ends" in page and 'value="6B"' in page
    assert "You can open 3 more sites today." in page
    response = post_form(teacher, "/lesson", "/lesson", {"group": "6B", "url": "https://www.coolmathgames.com/0-2048",
                                                         "reason": "Times tables practice"})
    assert response.status_code == 302, response.get_data(as_text=True)
    page = teacher.get("/lesson").get_data(as_text=True)
    assert "www.coolmathgames.com is open for 6B until" in page and "You can open 2 more sites today." in page
    refused = post_form(teacher, "/lesson", "/lesson", {"group": "6B", "url": "https://www.facebook.com/"})
    assert refused.status_code == 403 or "only the headteacher can open" in refused.get_data(as_text=True)
    with teaching.session() as session:
        (unlock,) = session.scalars(select(LessonUnlock)).all()
        (row,) = session.scalars(select(PolicyExceptionRow).where(PolicyExceptionRow.lesson_unlock_id == unlock.id))
        assert (row.scope, row.subject, row.domain) == ("group", "6B", "coolmathgames.com")

    dsl = teaching.login("dsl")
    log = dsl.get("/lessons").get_data(as_text=True)
    assert "Teacher Person" in log and "https://www.coolmathgames.com/0-2048" in log and "Times tables" in log
    # Logged: the headteacher sees the same list, and the DSL reads the unlock in the audit log.
    head_log = teaching.login("headteacher").get("/lessons").get_data(as_text=True)
    assert "https://www.coolmathgames.com/0-2048" in head_log
    audit = dsl.get("/audit")
    assert audit.status_code == 200 and "lesson.open" in audit.get_data(as_text=True)
    ended = post_form(dsl, "/lessons", f"/lessons/{unlock.id}/end", {})
    assert ended.status_code == 302
    with teaching.session() as session:
        assert session.get(LessonUnlock, unlock.id).ended_by == "dsl"  # type: ignore[union-attr]


def _ready_for_the_head(console: Console, **triage: str) -> int:
    ids = seed(console)
    request_id = ids["request"]
    tech = console.login("technician")
    fields = {"technician_notes": "The PTA's public page", "risks_and_controls": "Comments: supervised",
              "recommendation": "approve", "target": "domain", "value": "facebook.com", "scope": "device",
              "subject": "KW-IPAD-12", "starts": "2026-11-23T08:00", "expires": "2026-12-18", **triage}
    response = post_form(tech, f"/requests/{request_id}", f"/requests/{request_id}/triage", fields)
    assert response.status_code == 302, response.get_data(as_text=True)
    return request_id


def test_the_headteacher_reads_the_decision_first_and_gets_the_number_pad(console: Console) -> None:
    request_id = _ready_for_the_head(console)
    head = console.login("headteacher")
    waiting = head.get(f"/requests/{request_id}").get_data(as_text=True)
    assert "the DSL adds the safeguarding risks before you can approve it" in waiting
    assert re.search(r'value="approve"\s+disabled', waiting)
    dsl = console.login("dsl")
    post_form(dsl, f"/requests/{request_id}", f"/requests/{request_id}/safeguarding",
              {"safeguarding_notes": "The teacher checks the page first."})
    page = head.get(f"/requests/{request_id}").get_data(as_text=True)
    decision, request_card = page.index('id="decide"'), page.index("<h2>Request</h2>")
    assert decision < request_card  # the decision sits at the top, the request follows
    summary = re.search(r'id="summary">([^<]+)<', page)
    assert summary is not None
    # the school's time, in words
    assert summary.group(1) == ("Sam Pupil asks to use www.facebook.com; the ICT technician recommends opening the "
                                "whole of facebook.com for the device KW-IPAD-12 until Fri 18 Dec 2026, 11:59 pm.")
    assert "This opens the whole of facebook.com and its subdomains" in page
    code = re.search(r'<input id="f-code"[^>]*>', page)
    assert code is not None and 'inputmode="numeric"' in code.group(0)
    assert 'autocomplete="one-time-code"' in code.group(0) and 'pattern="[0-9]*"' in code.group(0)
    assert "The teacher checks the page first." in page[:request_card]


def test_a_page_the_proxy_cannot_hold_for_every_device_is_confirmed_before_forwarding(console: Console) -> None:
    ids = seed(console)
    request_id = ids["request"]
    tech = console.login("technician")
    url = f"/requests/{request_id}"
    fields = {"technician_notes": "The PTA's page only", "risks_and_controls": "Supervised",
              "recommendation": "approve", "target": "url", "value": "https://www.facebook.com/kingswoodpta",
              "scope": "role", "subject": "pupil", "starts": "2026-11-23T08:00", "expires": "2026-12-18"}
    asked = post_form(tech, url, f"{url}/triage", fields)
    text = asked.get_data(as_text=True)
    assert asked.status_code == 400 and 'name="scope_confirmed"' in text
    assert "the whole of www.facebook.com" in text
    confirmed = post_form(tech, url, f"{url}/triage", {**fields, "scope_confirmed": "yes"})
    assert confirmed.status_code == 302
    with console.session() as session:
        stored = session.get(AccessRequest, request_id)
        assert stored is not None and stored.needs_dsl and "the whole of www.facebook.com" in stored.enforced_scope
    page = console.login("headteacher").get(url).get_data(as_text=True)
    statement = re.search(r'id="enforced-scope">([^<]+)<', page)
    assert statement is not None, page
    assert statement.group(1).startswith("This opens the whole of www.facebook.com, not only pages under")


def test_a_technician_forwards_but_never_closes_a_request(console: Console) -> None:
    ids = seed(console)
    url = f"/requests/{ids['request']}"
    tech = console.login("technician")
    assert 'id="withdraw-form"' not in tech.get(url).get_data(as_text=True)
    assert post_form(tech, url, f"{url}/withdraw", {"reason": "not needed"}).status_code == 403
    unfit = post_form(tech, url, f"{url}/triage", {"technician_notes": "A gambling forum", "recommendation": "decline"})
    assert unfit.status_code == 302, unfit.get_data(as_text=True)
    page = console.login("headteacher").get(url).get_data(as_text=True)
    assert "the ICT technician recommends declining it." in page and 'id="withdraw-form"' in page


def test_staff_without_an_account_report_from_a_school_device_and_see_the_status(console: Console) -> None:
    from console_testkit import add_event, csrf_from

    from schoolgate.store.models import ContentReport

    # The test client's address, 127.0.0.1: the console finds the device from what DNS or the
    # proxy last logged for it, never from the form.
    with console.session() as session:
        add_event(session, client_ip="127.0.0.1", device_id="KW-STAFF-21", role="staff", ts=console.clock.now())
        session.commit()
    anyone = console.client()
    page = anyone.get("/report?url=https://scary.example.org/clip").get_data(as_text=True)
    assert '<textarea id="f-urls" name="urls" rows="3" required>https://scary.example.org/clip</textarea>' in page
    fields = {"submitter_name": "Mr Tay (TA, 4C)", "accessed_by": "", "urls": "https://scary.example.org/clip",
              "nature": "A frightening clip in a search"}
    sent = anyone.post("/report", data={"csrf_token": csrf_from(page), **fields})
    text = sent.get_data(as_text=True)
    assert sent.status_code == 200 and "The ICT technicians have been told." in text
    reference = re.search(r'id="reference">([^<]+)<', text)
    token = re.search(r'id="token"><code>([^<]+)<', text)
    assert reference and token
    with console.session() as session:
        report = session.scalars(select(ContentReport).order_by(ContentReport.id.desc())).first()
        assert report is not None and (report.device_id, report.client_ip) == ("KW-STAFF-21", "127.0.0.1")
    status = anyone.get(f"/report/status?ref={reference.group(1)}&token={token.group(1)}").get_data(as_text=True)
    assert "Waiting for an ICT technician to check it." in status
    assert anyone.get(f"/report/status?ref={reference.group(1)}&token=wrong").status_code == 404
    # A staff device has ten a day; the eleventh is refused with a plain message.
    for _ in range(9):
        assert anyone.post("/report", data={"csrf_token": csrf_from(page), **fields}).status_code == 200
    refused = anyone.post("/report", data={"csrf_token": csrf_from(page), **fields})
    assert refused.status_code == 429 and "the most it may" in refused.get_data(as_text=True)


def test_a_concern_about_the_dsl_is_not_shown_to_the_dsl(console: Console) -> None:
    from datetime import timedelta

    from schoolgate.store.models import Alert

    now = console.clock.now()
    with console.session() as session:
        session.add(Person(site=SITE, external_id="S-DSL", name="Ms Dee", role="staff"))
        user = session.scalars(select(ConsoleUser).where(ConsoleUser.username == "dsl")).one()
        user.person_external_id = "S-DSL"
        mine = Alert(site=SITE, kind="circumvention", rule_id="circumvention", severity="high", status="new",
                     title="Circumvention attempt from the DSL's laptop", summary="VPN site", device_id="LAP-DSL",
                     person_id="S-DSL", first_seen=now, last_seen=now, created_at=now, updated_at=now)
        other = Alert(site=SITE, kind="circumvention", rule_id="circumvention", severity="high", status="new",
                      title="Circumvention attempt from Ada's iPad", summary="VPN site", device_id="IPAD-ADA",
                      person_id="P-ADA", first_seen=now - timedelta(minutes=1), last_seen=now, created_at=now,
                      updated_at=now)
        session.add_all([mine, other])
        session.commit()
        mine_id, other_id = mine.id, other.id
    dsl = console.login("dsl")
    listing = dsl.get("/alerts").get_data(as_text=True)
    assert "Ada&#39;s iPad" in listing and "the DSL&#39;s laptop" not in listing
    assert dsl.get(f"/alerts/{mine_id}").status_code == 404
    assert dsl.get(f"/alerts/{other_id}").status_code == 200
    head = console.login("headteacher")
    assert head.get(f"/alerts/{mine_id}").status_code == 200  # seed 001 §8: the headteacher's to handle


def test_staff_without_an_account_ask_for_a_site_from_a_school_device_and_see_the_status(console: Console) -> None:
    """Appendix A from any school device: the device is the one the appliance finds behind the
    connection, the name is the one given; a staff device has a day's allowance that a pupil's
    device, which could flood the technicians, does not."""
    from console_testkit import add_event, csrf_from

    from schoolgate.services import access_requests

    staff_ip, pupil_ip = "10.41.10.21", "10.41.20.16"
    with console.session() as session:
        add_event(session, client_ip=staff_ip, mac="02:00:00:00:10:21", device_id="KW-STAFF-21",
                  device_name="Staff laptop 21", person_id=None, person_name=None, role="staff",
                  ts=console.clock.now())
        add_event(session, client_ip=pupil_ip, mac="02:00:00:00:20:16", device_id="KW-IPAD-16",
                  device_name="Class iPad 16", person_id=None, person_name=None, role="pupil",
                  ts=console.clock.now())
        session.commit()

    def ask(ip: str, n: int, name: str = "Mrs Okafor (TA, 5A)"):  # type: ignore[no-untyped-def]
        anyone = console.client()
        env = {"REMOTE_ADDR": ip}
        page = anyone.get(f"/request?url=https://site{n}.example.org/lesson", environ_base=env).get_data(as_text=True)
        return anyone.post("/request", environ_base=env, data={
            "csrf_token": csrf_from(page), "requester": name, "staff_name": "", "url": f"https://site{n}.example.org/lesson",
            "site_content": "A phonics game", "reasons": "Phonics groups in 5A this afternoon"})

    sent = ask(staff_ip, 0)
    text = sent.get_data(as_text=True)
    assert sent.status_code == 200, text[:2000]
    reference = re.search(r'id="reference">(AR-(\d+))<', text)
    token = re.search(r'id="token"><code>([^<]+)<', text)
    assert reference and token
    with console.session() as session:
        request = session.get(AccessRequest, int(reference.group(2)))
        assert request is not None
        assert (request.requester, request.device_id, request.client_ip) == (
            "Mrs Okafor (TA, 5A)", "KW-STAFF-21", staff_ip)
    status = console.client().get(f"/request/status?ref={reference.group(1)}&token={token.group(1)}")
    assert status.status_code == 200
    words = status.get_data(as_text=True)
    assert "site0.example.org" in words and "Waiting for an ICT technician to check it." in words
    assert console.client().get(f"/request/status?ref={reference.group(1)}&token=wrong").status_code == 404

    # The staff device's day: more than a pupil's device gets, and then a plain refusal.
    for n in range(1, access_requests.MAX_REQUESTS_PER_CLIENT_PER_DAY):
        assert ask(staff_ip, n).status_code == 200, n
    refused = ask(staff_ip, 99)
    assert refused.status_code == 429 and "the most it may" in refused.get_data(as_text=True)
    # A pupil's device is refused much sooner, whatever name is typed.
    for n in range(access_requests.MAX_REQUESTS_PER_PUPIL_DEVICE_PER_DAY):
        assert ask(pupil_ip, 100 + n, name=f"Pupil {n}").status_code == 200, n
    assert access_requests.MAX_REQUESTS_PER_PUPIL_DEVICE_PER_DAY < access_requests.MAX_REQUESTS_PER_CLIENT_PER_DAY
    assert ask(pupil_ip, 200, name="Someone else").status_code == 429


@pytest.mark.parametrize(
    ("at", "local_clock", "not_shown"),
    [
        ("2026-12-06T09:41:00+00:00", "9:41", "2026-12-06T09:41"),  # GMT: as given
        ("2026-10-06T09:41:00+00:00", "10:41", "09:41"),  # BST: an hour ahead of UTC
    ],
)
def test_the_request_form_shows_when_the_site_was_blocked_in_the_schools_time(
    console: Console, at: str, local_clock: str, not_shown: str
) -> None:
    from urllib.parse import quote

    page = console.client().get(f"/request?url=https://www.facebook.com/&at={quote(at)}").get_data(as_text=True)
    shown = re.search(r'<dd id="blocked-at">([^<]*)</dd>', page)
    assert shown is not None, page[:3000]
    assert local_clock in shown.group(1) and not_shown not in shown.group(1), shown.group(1)
