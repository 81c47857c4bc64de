"""The headteacher's signature binds to exactly what she read, and a code is spent only on a
decision that can stand. Each case is a way it went wrong before."""

from __future__ import annotations

from typing import Any

from console_testkit import PASSWORD, Console, csrf_from, hidden_fields, post_form, seed, totp_now
from sqlalchemy import select

from schoolgate.services import access_requests
from schoolgate.store.models import AccessRequest, PolicyExceptionRow


def _triage(console: Console, request_id: int, **changes: str) -> None:
    tech = console.login("technician")
    url = f"/requests/{request_id}"
    fields = {"recommendation": "approve", "technician_notes": "Checked: a science video",
              "risks_and_controls": "Shown by the teacher", "target": "url",
              "value": "https://www.youtube.com/watch?v=dQw4w9WgXcQ", "scope": "person", "subject": "S100",
              "starts": "2026-11-23T08:00", "expires": "2026-11-23T15:15",
              "scope_confirmed": "yes",  # the page says what a URL prefix really opens; read
              **changes}
    response = post_form(tech, url, f"{url}/triage", fields)
    assert response.status_code == 302, response.get_data(as_text=True)[:2000]


def _youtube_request(console: Console) -> int:
    with console.session() as session:
        submitted = access_requests.submit_request(
            session, site="kingswood", now=console.clock.now(),
            policy=console.app.extensions["schoolgate.policy"].get(),
            form=access_requests.RequestForm(requester="Mr S Teacher", url="https://www.youtube.com/watch?v=dQw4w9WgXcQ",
                                             reasons="The volcano video for my science lesson", person_id="S100"),
        )
        session.commit()
        return submitted.request.id


def _exceptions(console: Console) -> list[PolicyExceptionRow]:
    with console.session() as session:
        return list(session.scalars(select(PolicyExceptionRow).where(PolicyExceptionRow.request_id.is_not(None))))


def test_an_approval_is_refused_when_the_proposal_changed_after_the_page_was_opened(console: Console) -> None:
    seed(console)
    request_id = _youtube_request(console)
    _triage(console, request_id)
    head = console.login("headteacher")
    url = f"/requests/{request_id}"
    page = head.get(url).get_data(as_text=True)
    assert "pages under" in page and "watch?v=dQw4w9WgXcQ" in page and "S100" in page
    # Meanwhile the technician re-triages: all of youtube.com, for all staff, for a year. (For
    # pupils the DSL's review would be asked for again as well; the binding holds either way.)
    _triage(console, request_id, target="domain", value="youtube.com", scope="role", subject="staff",
            expires="2027-11-22")
    console.clock.advance(seconds=31)
    code = totp_now(console.accounts["headteacher"].totp_secret or "", console.clock)
    stale = head.post(f"{url}/decide", data={
        "csrf_token": csrf_from(page), **hidden_fields(page, f"{url}/decide"), "decision": "approve",
        "reasons": "For the science lesson", "signer_name": "Mrs J Patel", "password": PASSWORD, "code": code})
    text = stale.get_data(as_text=True)
    assert stale.status_code == 409
    assert "changed the proposal" in text and "nothing was approved" in text and "whole of youtube.com" in text
    assert _exceptions(console) == []
    with console.session() as session:
        assert session.get(AccessRequest, request_id).status == "forwarded"  # type: ignore[union-attr]
    # Refused before the signature was checked: the same code still signs, once she has read it.
    approved = post_form(head, url, f"{url}/decide", {
        "decision": "approve", "reasons": "For the science lesson", "signer_name": "Mrs J Patel",
        "password": PASSWORD, "code": code})
    assert approved.status_code == 302
    (exception,) = _exceptions(console)
    assert (exception.domain, exception.scope, exception.subject) == ("youtube.com", "role", "staff")


def test_an_approval_without_the_proposal_it_read_is_refused(console: Console) -> None:
    seed(console)
    request_id = _youtube_request(console)
    _triage(console, request_id)
    head = console.login("headteacher")
    url = f"/requests/{request_id}"
    response = post_form(head, url, f"{url}/decide", {
        "proposal": "", "decision": "approve", "reasons": "ok", "signer_name": "H", "password": PASSWORD,
        "code": "123456"})
    assert response.status_code == 409 and _exceptions(console) == []


def test_the_code_used_to_sign_in_also_signs_within_the_same_30_seconds(console: Console) -> None:
    ids = seed(console)
    _triage(console, ids["request"], target="domain", value="facebook.com", scope="device", subject="KW-IPAD-12",
            expires="2026-12-18")
    url = f"/requests/{ids['request']}"
    dsl = console.login("dsl")  # a pupil's iPad: the DSL's safeguarding notes come first
    assert post_form(dsl, url, f"{url}/safeguarding", {"safeguarding_notes": "Supervised in class"}).status_code == 302
    head = console.login("headteacher")  # signs in with the code of this 30-second step
    code = totp_now(console.accounts["headteacher"].totp_secret or "", console.clock)
    response = post_form(head, url, f"{url}/decide", {
        "decision": "approve", "reasons": "PTA page", "signer_name": "Mrs J Patel", "password": PASSWORD,
        "code": code})
    assert response.status_code == 302, response.get_data(as_text=True)[:2000]
    assert len(_exceptions(console)) == 1


def test_a_decline_without_reasons_is_refused_before_the_code_is_used(console: Console) -> None:
    ids = seed(console)
    head = console.login("headteacher")
    console.clock.advance(seconds=31)
    code = totp_now(console.accounts["headteacher"].totp_secret or "", console.clock)
    url = f"/requests/{ids['request']}"
    decline: dict[str, Any] = {"decision": "decline", "signer_name": "Mrs J Patel", "password": PASSWORD,
                               "code": code}
    empty = post_form(head, url, f"{url}/decide", {**decline, "reasons": "   "})
    assert empty.status_code == 400 and "Please fill in reasons" in empty.get_data(as_text=True)
    done = post_form(head, url, f"{url}/decide", {**decline, "reasons": "Not needed for learning"})
    assert done.status_code == 302
    with console.session() as session:
        assert session.get(AccessRequest, ids["request"]).status == "declined"  # type: ignore[union-attr]
