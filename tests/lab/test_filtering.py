"""End to end in the lab: real devices, real daemons, the example policy, the written rules.

The example policy is the ASPIRE Federation's (seed 000): no social media for pupils, none for
staff or visitors during school hours (§4, lunch included), the federation's Facebook pages
for the staff the headteacher authorises (§5).
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from schoolgate.lab.client import LabClient
from schoolgate.lab.internet import SITES
from schoolgate.lab.netns import exec_in, wait_for
from schoolgate.lab.topology import GATEWAY_LAN_IP, device

pytestmark = [pytest.mark.root, pytest.mark.slow]

LESSON = "2026-11-23T10:15:00+00:00"  # Monday, autumn term, a lesson (GMT: local time = UTC)
LUNCH = "2026-11-23T12:30:00+00:00"
AFTER_SCHOOL = "2026-11-23T16:30:00+00:00"  # ASPIRE §4: staff social media after school hours

FACEBOOK = next(s.ip for s in SITES if s.label == "facebook")
X_COM = next(s.ip for s in SITES if s.label == "x")
LIBRARY = next(s.ip for s in SITES if s.label == "library")
PUPIL = device("pupil")
STAFF = device("staff")


def issuer(result_stderr: str) -> str:
    for line in result_stderr.splitlines():
        if "issuer:" in line:
            return line.split("issuer:", 1)[1].strip()
    return ""


def test_pupil_in_a_lesson_gets_the_block_address(lab: LabClient) -> None:
    lab.set_clock(LESSON)
    since = lab.last_event_id()
    assert lab.resolve("pupil", "facebook.com") == [GATEWAY_LAN_IP]
    assert lab.resolve("pupil", "www.instagram.com") == [GATEWAY_LAN_IP]
    assert lab.resolve("pupil", "x.com") == [GATEWAY_LAN_IP]
    (event,) = lab.wait_events(lambda e: e.source == "dns" and e.host == "facebook.com", since)
    # Every DfE field: device, IP, MAC, person, role, time, host, verdict, rule, clause
    assert (event.client_ip, event.mac) == (PUPIL.ip, PUPIL.mac)
    assert (event.device_id, event.device_name) == (PUPIL.device_id, PUPIL.device_name)
    assert (event.person_id, event.person_name, event.role) == (PUPIL.person_id, PUPIL.person_name, "pupil")
    assert (event.verdict, event.rule_id, event.service, event.category) == (
        "block",
        "pupils-no-social-media",
        "facebook",
        "social_media",
    )
    assert "§6" in event.clause and event.qtype == "A" and event.site == "kingswood"
    assert event.ts.isoformat().startswith("2026-11-23T10:1")  # the lab's clock, not the host's


def test_pupil_forcing_the_real_address_is_killed_at_the_sni(lab: LabClient) -> None:
    lab.set_clock(LESSON)
    since = lab.last_event_id()
    done = lab.curl("pupil", "https://www.facebook.com/", "--resolve", f"www.facebook.com:443:{FACEBOOK}")
    assert done.returncode == 35, done.stderr  # TLS handshake failed: the proxy closed it
    assert "lab-internet" not in done.stdout
    (event,) = lab.wait_events(lambda e: e.source == "proxy" and e.host == "www.facebook.com", since)
    assert (event.verdict, event.rule_id, event.client_ip, event.device_id) == (
        "block",
        "pupils-no-social-media",
        PUPIL.ip,
        PUPIL.device_id,
    )
    assert (event.mac, event.person_id, event.role) == (PUPIL.mac, PUPIL.person_id, "pupil")


def test_pupil_device_trusting_the_school_ca_sees_the_block_page(lab: LabClient) -> None:
    lab.set_clock(LESSON)
    since = lab.last_event_id()
    done = lab.curl("pupilca", "https://www.facebook.com/some/page?x=1", "-v", ca=lab.school_ca)
    assert done.returncode == 0, done.stderr
    page = done.stdout
    assert "Blocked" in page and "Facebook" in page
    assert "Social Media Policy §6" in page
    assert "filtered and monitored" in page.lower() or "monitored" in page.lower()
    assert "request" in page.lower() and "www.facebook.com" in page  # the access-request link
    assert issuer(done.stderr).startswith("CN=") and "lab public" not in issuer(done.stderr)
    (event,) = lab.wait_events(
        lambda e: e.source == "proxy" and e.url is not None and e.client_ip == device("pupilca").ip, since
    )
    assert event.url == "https://www.facebook.com/some/page?x=1"
    assert (event.verdict, event.device_id, event.person_name) == (
        "block",
        device("pupilca").device_id,
        device("pupilca").person_name,
    )


def test_staff_after_school_are_allowed_and_not_decrypted(lab: LabClient) -> None:
    lab.set_clock(AFTER_SCHOOL)
    assert lab.resolve("staff", "www.facebook.com") == [FACEBOOK]
    done = lab.curl("staff", "https://www.facebook.com/", "-v")
    assert done.returncode == 0, done.stderr
    assert f"served-by=lab-internet address={FACEBOOK}" in done.stdout
    assert "sni=www.facebook.com" in done.stdout
    # The certificate is the site's own: the connection was passed through, not intercepted.
    assert issuer(done.stderr) == "CN=schoolgate lab public root"


def test_dns_learns_watched_addresses_into_the_kernel_set(lab: LabClient) -> None:
    lab.set_clock(AFTER_SCHOOL)
    assert lab.resolve("staff", "x.com") == [X_COM]

    def learnt() -> bool:
        out = exec_in(lab.gateway, ["nft", "-j", "list", "set", "inet", "schoolgate", "watched4"]).stdout
        return X_COM in out

    wait_for(learnt, timeout=5, what="x.com's address in @watched4")
    # and an x.com connection from staff after school is steered to the proxy, which lets it
    # through undecrypted
    steered = lab.counters()["proxy_redirected"]
    done = lab.curl("staff", "https://x.com/", "-v")
    assert done.returncode == 0 and issuer(done.stderr) == "CN=schoolgate lab public root"
    assert f"address={X_COM}" in done.stdout
    assert lab.counters()["proxy_redirected"] == steered + 1


def test_staff_in_a_lesson_and_guests_are_blocked(lab: LabClient) -> None:
    lab.set_clock(LESSON)
    since = lab.last_event_id()
    assert lab.resolve("staff", "www.facebook.com") == [GATEWAY_LAN_IP]
    done = lab.curl("staff", "https://www.facebook.com/", "--resolve", f"www.facebook.com:443:{FACEBOOK}")
    assert done.returncode == 35
    lab.set_clock(LUNCH)
    assert lab.resolve("guest", "www.facebook.com") == [GATEWAY_LAN_IP]
    done = lab.curl("guest", "https://www.facebook.com/", "--resolve", f"www.facebook.com:443:{FACEBOOK}")
    assert done.returncode == 35
    staff = lab.wait_events(lambda e: e.client_ip == STAFF.ip and e.verdict == "block", since, count=2)
    assert {e.rule_id for e in staff} == {"staff-social-media-school-hours"}
    guest = lab.wait_events(lambda e: e.client_ip == device("guest").ip and e.verdict == "block", since, count=2)
    # An unregistered device on the guest Wi-Fi: the network's role.
    assert {(e.rule_id, e.role, e.device_id) for e in guest} == {("guests-no-social-media", "guest", None)}


def test_an_exception_applies_within_two_seconds(lab: LabClient) -> None:
    import time

    from schoolgate.store import audit
    from schoolgate.store.models import PolicyExceptionRow
    from schoolgate.store.overlay import bump_generation

    lab.set_clock(LESSON)
    assert lab.resolve("pupil", "www.instagram.com") == [GATEWAY_LAN_IP]
    now = lab.lab.clock_now()
    with lab.session() as session, session.begin():
        row = PolicyExceptionRow(
            site="kingswood",
            scope="device",
            subject=PUPIL.device_id,
            domain="instagram.com",
            url_prefix=None,
            starts=now - timedelta(minutes=5),
            expires=now + timedelta(hours=1),
            reason="Lab: class project on a museum's Instagram",
            created_by="lab-test",
        )
        session.add(row)
        session.flush()
        audit.record(
            session,
            site="kingswood",
            actor="lab-test",
            action="exception.create",
            object_type="exception",
            object_id=row.id,
            detail={"domain": "instagram.com", "subject": PUPIL.device_id},
        )
        bump_generation(session, "kingswood")
    started = time.monotonic()
    instagram = next(s.ip for s in SITES if s.label == "instagram")

    def allowed() -> bool:
        # Both halves: DNS answers the real address, and the proxy lets the connection through
        # (each polls the generation counter on its own).
        if lab.resolve("pupil", "www.instagram.com") != [instagram]:
            return False
        return lab.curl("pupil", "https://www.instagram.com/", timeout=2).returncode == 0

    while not allowed():
        assert time.monotonic() - started < 2.0, "the exception was not in force within 2 s"
        time.sleep(0.05)
    done = lab.curl("pupil", "https://www.instagram.com/", "-v")
    assert done.returncode == 0, done.stderr
    assert issuer(done.stderr) == "CN=schoolgate lab public root"
    # Only that device, only that service
    assert lab.resolve("pupil", "www.facebook.com") == [GATEWAY_LAN_IP]
    assert lab.resolve("pupilca", "www.instagram.com") == [GATEWAY_LAN_IP]


def test_the_ordinary_site_works_for_everyone_and_never_touches_the_proxy(lab: LabClient) -> None:
    before = lab.counters()
    # Connections the proxy accepted at all: the lab's own check that it listens is one, and it
    # is counted as seen only once its client has been identified, which may come later. The
    # kernel completes that check as soon as the socket listens: the proxy may still be starting
    # (its stats then have no front door yet).
    wait_for(lambda: lab.proxy_stats(fresh=True)["front"] is not None, timeout=60,
             what="the proxy's front door to start")
    accepted_before = lab.proxy_stats()["front"]["accepted"]
    for clock in (LESSON, LUNCH):
        lab.set_clock(clock)
        for key in ("pupil", "pupilca", "staff", "guest"):
            assert lab.resolve(key, "library.example.org") == [LIBRARY], key
            done = lab.curl(key, "https://library.example.org/", "-v")
            assert done.returncode == 0, (key, done.stderr)
            assert f"address={LIBRARY}" in done.stdout
            assert issuer(done.stderr) == "CN=schoolgate lab public root"
            done = lab.curl(key, "http://library.example.org/")
            assert done.returncode == 0 and "scheme=http " in done.stdout
    after = lab.counters()
    assert after["proxy_redirected"] == before["proxy_redirected"]
    assert lab.proxy_stats(fresh=True)["front"]["accepted"] == accepted_before
    assert after["forwarded_connections"] > before["forwarded_connections"]  # the kernel forwarded them


def test_a_banned_device_reaches_only_the_curriculum(lab: LabClient) -> None:
    lab.set_clock(LUNCH)
    since = lab.last_event_id()
    assert lab.resolve("sup", "library.example.org") == [GATEWAY_LAN_IP]
    bbc = next(s.ip for s in SITES if s.label == "bbc")
    assert lab.resolve("sup", "www.bbc.co.uk") == [bbc]
    done = lab.curl("sup", "https://www.bbc.co.uk/")
    assert done.returncode == 0 and f"address={bbc}" in done.stdout
    (event,) = lab.wait_events(lambda e: e.client_ip == device("sup").ip and e.host == "library.example.org", since)
    assert (event.role, event.rule_id, event.device_id) == (
        "supervised",
        "supervised-everything-else",
        device("sup").device_id,
    )
