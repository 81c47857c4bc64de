"""The same rules as a pupil or teacher meets them: in Chromium, on the lab's devices."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from schoolgate.gateway.circumvention import DEDUP_WINDOW_S
from schoolgate.lab.client import LabClient
from schoolgate.lab.internet import SITES
from schoolgate.lab.topology import device

pytestmark = [pytest.mark.root, pytest.mark.browser, pytest.mark.slow]

LESSON = "2026-11-23T10:15:00+00:00"
AFTER_SCHOOL = "2026-11-23T16:30:00+00:00"  # ASPIRE §4: staff social media after school hours
FACEBOOK = next(s.ip for s in SITES if s.label == "facebook")


def after_earlier_quic_attempts(lab: LabClient) -> None:
    """Net watch records one event per attempt and DEDUP_WINDOW_S (a retrying client's packets
    are one attempt: gateway.circumvention.AttemptDeduplicator), so a device's QUIC to an address
    it tried within the window is not recorded again. Two tests of this module send the staff
    laptop's QUIC to Facebook, and on a fast machine the second began inside the first's window:
    wait until the gateway's refused-QUIC counter has stood still for the window, so that this
    test's attempt is a new one."""
    bound = time.monotonic() + 12 * DEDUP_WINDOW_S  # QUIC still refused this long: something is wrong
    count, still_since = lab.counters()["refused_quic"], time.monotonic()
    while time.monotonic() - still_since < DEDUP_WINDOW_S:
        assert time.monotonic() < bound, "the lab's devices kept sending QUIC"
        time.sleep(0.2)
        now = lab.counters()["refused_quic"]
        if now != count:
            count, still_since = now, time.monotonic()


def test_staff_after_school_browse_facebook_and_quic_is_refused_on_the_way(lab: LabClient, tmp_path: Path) -> None:
    lab.set_clock(AFTER_SCHOOL)
    after_earlier_quic_attempts(lab)
    since = lab.last_event_id()
    quic_before = lab.counters()["refused_quic"]
    page = lab.chromium("staff", "https://www.facebook.com/", profile=str(tmp_path))
    assert f"served-by=lab-internet address={FACEBOOK}" in page.stdout, page.stderr[-2000:]
    # The page's Alt-Svc made Chromium try QUIC for the image; refused, it used TCP instead.
    assert lab.counters()["refused_quic"] > quic_before
    (event,) = lab.wait_events(
        lambda e: e.rule_id == "gateway.refuse.quic" and e.client_ip == device("staff").ip, since
    )
    assert event.host == FACEBOOK and event.device_id == device("staff").device_id
    # Refused quietly: what every browser does is never taken for circumvention.
    assert (event.verdict, event.flags, event.category) == ("refused", "quic", None)


def test_pupil_with_the_school_ca_sees_the_block_page(lab: LabClient) -> None:
    lab.set_clock(LESSON)
    page = lab.chromium("pupilca", "https://www.facebook.com/groups/year6", trust=(lab.school_ca,))
    dom = page.stdout
    assert "Blocked" in dom and "Facebook" in dom, page.stderr[-2000:]
    assert "Social Media Policy §6" in dom
    assert "served-by=lab-internet" not in dom
    assert "www.facebook.com" in dom and "request" in dom.lower()


def test_pupil_without_the_school_ca_gets_no_page(lab: LabClient) -> None:
    lab.set_clock(LESSON)
    page = lab.chromium("pupil", "https://www.facebook.com/")
    assert "served-by=lab-internet" not in page.stdout
    assert "Social Media Policy" not in page.stdout  # no block page either: the connection was closed


def test_the_ordinary_site_in_the_browser(lab: LabClient) -> None:
    lab.set_clock(LESSON)
    library = next(s.ip for s in SITES if s.label == "library")
    for key in ("pupil", "guest"):
        page = lab.chromium(key, "https://library.example.org/")
        assert f"served-by=lab-internet address={library}" in page.stdout, page.stderr[-2000:]


def _alerts(lab: LabClient) -> list[tuple[int, str, str | None]]:
    from schoolgate.store.models import Alert

    with lab.session() as session:
        return [(a.id, a.kind, a.device_id) for a in session.query(Alert).order_by(Alert.id)]


def _scanned_through(lab: LabClient, event_id: int) -> bool:
    from schoolgate.lab.lab import SITE_ID
    from schoolgate.services.alert_rules import read_cursor

    with lab.session() as session:
        return read_cursor(session, SITE_ID) >= event_id


@pytest.mark.parametrize(
    ("key", "clock", "allowed"),
    [
        ("staff", AFTER_SCHOOL, True),  # Facebook is allowed for staff after school: QUIC to its address, refused
        ("pupil", LESSON, False),  # never for pupils: DNS gives the block address, and QUIC goes nowhere
    ],
)
def test_chromium_forcing_quic_to_a_watched_service_raises_no_circumvention_and_no_alert(
    lab: LabClient, key: str, clock: str, allowed: bool
) -> None:
    lab.set_clock(clock)
    if allowed:  # its QUIC reaches the gateway, which records the attempt
        after_earlier_quic_attempts(lab)
    since = lab.last_event_id()
    alerts_before = _alerts(lab)
    quic_before = lab.counters()["refused_quic"]
    page = lab.chromium(key, "https://www.facebook.com/", args=("--origin-to-force-quic-on=www.facebook.com:443",))
    assert "served-by=lab-internet" not in page.stdout  # QUIC only, and QUIC goes nowhere: no page
    who = device(key)
    if allowed:
        assert lab.counters()["refused_quic"] > quic_before
        quic = lab.wait_events(lambda e: e.rule_id == "gateway.refuse.quic" and e.client_ip == who.ip, since)
        assert all((e.verdict, e.flags, e.category) == ("refused", "quic", None) for e in quic)
    else:
        # The blocked lookup is recorded as the DfE standard asks; the QUIC went to the appliance.
        lab.wait_events(lambda e: e.source == "dns" and e.host == "www.facebook.com" and e.client_ip == who.ip
                        and e.verdict == "block", since)
    events = [e for e in lab.events(since) if e.client_ip == who.ip]
    assert not any("circumvention" in e.flags.split(",") or e.category == "circumvention" for e in events), [
        (e.source, e.host, e.flags) for e in events]
    # The scheduler's alert scan (every 5 s in the lab) has been over these events: no case.
    last = max(e.id for e in events)
    deadline = time.monotonic() + 60
    while not _scanned_through(lab, last):
        assert time.monotonic() < deadline, "the alert scan did not reach the events"
        time.sleep(0.5)
    assert _alerts(lab) == alerts_before
