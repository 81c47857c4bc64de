"""The coverage page and the "Am I filtered?" page with its live test."""

from __future__ import annotations

import re
from datetime import timedelta

from console_testkit import Console, add_event, seed

from schoolgate.gateway.census import Census, Forwarding
from schoolgate.services import coverage

IPAD = {"REMOTE_ADDR": "10.41.20.15"}  # the seeded Class iPad 12, a pupil's


def test_the_coverage_page_lists_a_device_that_never_used_schoolgates_dns(console: Console) -> None:
    now = console.clock.now()
    with console.session() as session:
        for at in (now - timedelta(hours=2), now):
            coverage.record_census(session, "kingswood", Census(
                at=at, forwarding=[Forwarding("10.41.20.77", "02:41:00:00:20:77", 9, at)],
                neighbours={"10.41.20.77": "02:41:00:00:20:77"}, vpn=[]))
        coverage.classify(session, "kingswood", now, coverage.Settings())
        session.commit()
    page = console.login("technician").get("/coverage").get_data(as_text=True)
    row = re.search(r'<tr data-ip="10\.41\.20\.77">(.*?)</tr>', page, re.S)
    assert row, page
    assert "not filtered" in row.group(1) and "never asked schoolgate" in row.group(1)
    assert "not in the register" in row.group(1) and ">pupil<" in row.group(1)  # its network's role
    assert '<span class="value" id="count-not-filtered">1</span>' in page
    csv = console.login("headteacher").get("/coverage?format=csv").get_data(as_text=True)
    assert "not_filtered" in csv and "10.41.20.77" in csv


def test_am_i_filtered_shows_who_the_device_is_and_what_its_lookups_met(console: Console) -> None:
    seed(console)
    client = console.client()
    response = client.get("/filtered", environ_base=IPAD)
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert 'id="my-device">Class iPad 12<' in page and 'id="my-role">pupil<' in page
    assert 'src="https://gambling.category-test.schoolgate.invalid/' in page
    assert "img-src 'self' data: http: https:" in response.headers["Content-Security-Policy"]
    assert "script-src 'self';" in response.headers["Content-Security-Policy"]  # still no inline script
    token = re.search(r'href="/filtered/result\?token=([^"&]+)"', page)
    assert token, page
    now = console.clock.now()
    with console.session() as session:  # what the DNS daemon logged for the iPad's lookups
        add_event(session, source="dns", host="gambling.category-test.schoolgate.invalid", url=None, ts=now,
                  category="gambling", rule_id="harmful-content-pupils-guests", service=None)
        add_event(session, source="dns", host="pornography.category-test.schoolgate.invalid", url=None,
                  ts=now - timedelta(hours=1), category="pornography", service=None)  # before the test: not this one
        session.commit()
    result = client.get(f"/filtered/result?token={token.group(1)}&format=json", environ_base=IPAD).get_json()
    observed = {c["id"]: (c["expected"], c["observed"]) for c in result["categories"]}
    assert observed["gambling"] == ("blocked", "blocked")
    assert observed["pornography"] == ("blocked", "not_seen")
    assert observed["support"] == ("allowed", "not_seen")
    assert result["reached"] is True
    html = client.get(f"/filtered/result?token={token.group(1)}", environ_base=IPAD).get_data(as_text=True)
    assert "This device's lookups reach the school's filter." in html
    assert "NOT blocked: this device&#39;s lookup did not reach the school&#39;s filter" in html
    # The token is the iPad's: another device cannot read its results, and a forged one is refused.
    other = client.get(f"/filtered/result?token={token.group(1)}", environ_base={"REMOTE_ADDR": "10.41.20.16"})
    assert other.status_code == 403
    assert client.get("/filtered/result?token=forged", environ_base=IPAD).status_code == 400
