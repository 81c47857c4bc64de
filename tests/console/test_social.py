"""Appendix C in the console: the marketing officer asks and endorses, the headteacher approves
with an expiry and a review date, and the named administrators become authorised."""

from __future__ import annotations

import re

from console_testkit import PASSWORD, SITE, Console, post_form, totp_now
from sqlalchemy import select

from schoolgate.store.models import Person, SocialMediaSite


def test_a_social_media_site_from_the_form_to_the_headteachers_approval(console: Console) -> None:
    with console.session() as session:
        session.add_all([Person(site=SITE, external_id="S1", name="Ms Media", role="staff"),
                         Person(site=SITE, external_id="S2", name="Mr Deputy", role="staff"),
                         Person(site=SITE, external_id="P1", name="Ada", role="pupil", year_group=6)])
        session.commit()
    marketing = console.login("marketing")
    form = marketing.get("/social/new").get_data(as_text=True)
    assert 'value="S1"' in form and 'value="P1"' not in form  # pupils cannot administer a school site
    fields = {
        "platform": "Facebook page", "moderator": "Ms Media", "purpose": "News for parents",
        "aims": "Fewer letters home", "content": "Events, closures and good news",
        "audience_groups": ["families", "staff"], "contributors_groups": ["staff"],
        "administrators": ["S1"], "vetting": "Ms Media, marketing officer", "host": "Facebook",
        "go_live": "2026-12-01", "security": "Comments off; followers vetted weekly",
    }
    one = post_form(marketing, "/social/new", "/social/new", fields)
    assert one.status_code == 400 and "at least 2 administrators" in one.get_data(as_text=True)
    sent = post_form(marketing, "/social/new", "/social/new", {**fields, "administrators": ["S1", "S2"]})
    assert sent.status_code == 302, sent.get_data(as_text=True)
    url = sent.headers["Location"]
    record_id = int(re.search(r"/social/(\d+)", url).group(1))  # type: ignore[union-attr]
    endorsed = post_form(marketing, url, f"/social/{record_id}/endorse",
                         {"signer_name": "Ms Media", "password": PASSWORD})
    assert endorsed.status_code == 302, endorsed.get_data(as_text=True)

    head = console.login("headteacher")
    page = head.get(url).get_data(as_text=True)
    assert "waiting for the headteacher" in page and "Ms Media, Mr Deputy" in page
    console.clock.advance(seconds=31)
    secret = console.accounts["headteacher"].totp_secret or ""
    approved = post_form(head, url, f"/social/{record_id}/decide", {
        "decision": "approve", "expires": "2027-07-21", "review_date": "2027-06-01", "signer_name": "Mrs J Patel",
        "password": PASSWORD, "code": totp_now(secret, console.clock)})
    assert approved.status_code == 302, approved.get_data(as_text=True)
    with console.session() as session:
        record = session.get(SocialMediaSite, record_id)
        assert record is not None and record.status == "approved" and record.review_date is not None
        roles = dict(session.execute(select(Person.external_id, Person.role)).tuples().all())
    assert (roles["S1"], roles["S2"], roles["P1"]) == ("authorised", "authorised", "pupil")
    listing = console.login("technician").get("/social").get_data(as_text=True)
    assert "Facebook page" in listing and "approved" in listing
