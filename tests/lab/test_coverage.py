"""Coverage in the lab: the gateway's census of the LAN, a device whose DNS bypasses the appliance
found and e-mailed to the technician once, a VPN caught, and "Am I filtered?" in Chromium."""

from __future__ import annotations

import json
import re
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from schoolgate.config import MailConfig, load_config
from schoolgate.lab.client import LabClient
from schoolgate.lab.internet import RESOLVER_IP, SITES
from schoolgate.lab.netns import call_in, exec_in, wait_for
from schoolgate.lab.topology import GATEWAY_LAN_IP, device
from schoolgate.policy import load_policy
from schoolgate.scheduler import jobs
from schoolgate.scheduler.runner import COVERAGE_SECONDS
from schoolgate.services import coverage
from schoolgate.services.mailer import SmtpMailer
from schoolgate.store.models import ConsoleUser, UserRole

pytestmark = [pytest.mark.root, pytest.mark.slow]
LESSON = "2026-11-23T10:15:00+00:00"
LIBRARY = next(s.ip for s in SITES if s.label == "library")
GUEST, PUPIL, STAFF = device("guest"), device("pupil"), device("staff")
Inbox = sys.modules["schoolgate_tests_smtp"].Inbox
browse = sys.modules["schoolgate_tests_browsing"].browse


def census(lab: LabClient) -> str:
    """`schoolgate net census` in the gateway (net watch takes one every minute)."""
    done = exec_in(lab.gateway, [sys.executable, "-P", "-m", "schoolgate", "net", "census", "--config",
                                 str(lab.lab.config_path)],
                   check=False, timeout=60, env={"SCHOOLGATE_CLOCK_FILE": str(lab.lab.clock_path)})
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def busy(lab: LabClient) -> LabClient:
    """The pupil browses as normal; the guest phone has its own DNS (it dials addresses it got
    elsewhere, and never asks the appliance); the staff laptop opens an OpenVPN tunnel."""
    lab.set_clock(LESSON)
    assert lab.resolve("pupil", "library.example.org") == [LIBRARY]
    assert lab.curl("pupil", "https://library.example.org/").returncode == 0
    done = lab.curl("guest", "https://library.example.org/", "--resolve", f"library.example.org:443:{LIBRARY}")
    assert done.returncode == 0 and "served-by=lab-internet" in done.stdout, done.stderr

    def openvpn() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"\x38" + b"\x00" * 13, (RESOLVER_IP, 1194))  # an OpenVPN hard-reset packet's size

    call_in(lab.ns("staff"), openvpn)
    # Two devices the register says trust the school CA: one does, one (its profile removed) does not.
    assert lab.curl("pupilca", "https://www.facebook.com/", ca=lab.school_ca).returncode == 0
    assert lab.curl("sup", "https://www.facebook.com/").returncode != 0
    with lab.session() as session:
        session.add(ConsoleUser(site="kingswood", username="tech", display_name="Tech", email="tech@kingswood.example",
                                password_hash="x", roles=[UserRole(role="technician")]))
        session.commit()
    return lab


def test_the_census_sees_each_device_the_gateway_forwards_for(busy: LabClient) -> None:
    out = census(busy)
    assert re.search(rf"forwarding\s+{re.escape(GUEST.ip)}\s+{GUEST.mac}", out), out
    assert re.search(rf"forwarding\s+{re.escape(PUPIL.ip)}\s+{PUPIL.mac}", out), out
    assert re.search(rf"vpn\s+{re.escape(STAFF.ip)}\s+{STAFF.mac}\s+OpenVPN \(udp/1194\) x1", out), out


def coverage_mails(lab: LabClient) -> list[str]:
    """The texts of the coverage e-mails the lab's mail relay has taken for the technician."""
    return [Inbox.text(message) for recipients, message in lab.mails()
            if "tech@kingswood.example" in recipients and "are not filtered" in str(message["Subject"])]


def test_a_device_that_bypasses_dns_is_not_filtered_and_the_technician_is_told_once(
    busy: LabClient, mail_server: tuple[Inbox, int]
) -> None:
    """The lab's scheduler runs the coverage watchdog and mails through the lab's relay: each
    device found not filtered is in exactly one e-mail, and a later round tells nobody again."""
    inbox, port = mail_server
    census(busy)
    # The pupil's allowed lookups are folded per minute: let that minute end, then look a
    # quarter of an hour later (a device that has just joined gets a short grace).
    time.sleep(61 - busy.lab.clock_now().second)
    busy.set_clock((busy.lab.clock_now() + timedelta(minutes=20)).isoformat())
    census(busy)

    def told(ip: str) -> list[str]:
        return [text for text in coverage_mails(busy) if f"at {ip} (" in text]

    # The scheduler's watchdog runs every COVERAGE_SECONDS: the next round after the clock moved
    # sees both devices (one more round covers a round that was under way when it moved).
    wait_for(lambda: bool(told(GUEST.ip)) and bool(told(STAFF.ip)), timeout=3 * COVERAGE_SECONDS,
             what="the scheduler's coverage e-mail(s) naming the guest phone and the staff laptop")
    (guest_mail,), (staff_mail,) = told(GUEST.ip), told(STAFF.ip)
    assert f"at {GUEST.ip} ({GUEST.mac}), guest: sends traffic through the gateway but has never asked" in guest_mail
    assert "OpenVPN (udp/1194)" in staff_mail
    assert not told(PUPIL.ip)
    config = load_config(busy.lab.config_path)
    mailer = SmtpMailer(MailConfig(host="127.0.0.1", port=port, sender="schoolgate@kingswood.example"))
    now = busy.lab.clock_now()
    again = jobs.coverage_job(config, busy.sessions, now, mailer=mailer, policy=load_policy(config.policy))
    assert again.not_filtered == [] and inbox.received == []
    assert len(told(GUEST.ip)) == 1 and len(told(STAFF.ip)) == 1
    with busy.session() as session:
        lines = {line.ip: line for line in coverage.coverage_lines(session, "kingswood", now)}
    assert lines[PUPIL.ip].status == coverage.FILTERED and lines[PUPIL.ip].name == PUPIL.device_name
    assert lines[GUEST.ip].status == coverage.NOT_FILTERED and lines[GUEST.ip].dns_at is None
    assert lines[GUEST.ip].notified_at is not None and lines[STAFF.ip].notified_at is not None
    # What the proxy learnt from the handshakes, beside the register's flag.
    assert lines[device("pupilca").ip].ca_seen is True
    assert lines[device("sup").ip].ca_seen is False and lines[device("sup").ip].trusts_school_ca is True


# What the page's script says once it has stopped looking (console/static/filtered.js).
PAGE_DONE = ("Done: this device's lookups reach", "did not reach the school's filter", "could not be fetched")
# The script looks at most 10 times a second apart, after its canaries (or 4 s): it has given
# its last word well within this, however slowly the log catches up.
PAGE_GIVES_UP_MS = 30_000


@pytest.mark.browser
def test_am_i_filtered_in_chromium_on_a_pupils_ipad(busy: LabClient, tmp_path: Path) -> None:
    busy.set_clock(LESSON)
    # In real time (Playwright), as a pupil's browser runs it: the script waits for the log to
    # catch up with the lookups its canaries made, which headless Chromium's virtual time skips.
    steps: list[list[Any]] = [["goto", f"http://{GATEWAY_LAN_IP}:8443/filtered"],
                              ["wait_text", "#test-status", list(PAGE_DONE), PAGE_GIVES_UP_MS]]
    loaded, waited = browse(busy, "pupil", steps, tmp_path)
    assert loaded["status"] == 200 and waited["error"] is None, (loaded, waited)
    dom = waited["html"]
    assert 'id="my-device">Year 5 iPad 11<' in dom and 'id="my-role">pupil<' in dom, dom
    assert "Done: this device's lookups reach the school's filter." in waited["text"], waited["text"]
    # The page's script asked for the results and filled the table in the browser.
    filled = dict(re.findall(r'<tr id="cat-([a-z_]+)" data-observed="([a-z_]+)"', dom))
    assert filled.get("illegal") == "blocked", dom
    token = re.search(r'data-result="/filtered/result\?token=([^"&]+)&amp;format=json"', dom)
    assert token, dom

    def result() -> dict[str, Any]:
        done = busy.curl("pupil", f"http://{GATEWAY_LAN_IP}:8443/filtered/result?token={token.group(1)}&format=json")
        return dict(json.loads(done.stdout))

    deadline = time.monotonic() + 15
    while True:  # the DNS daemon writes blocked lookups within a second or so
        found = result()
        observed = {c["id"]: c["observed"] for c in found["categories"]}
        if observed.get("gambling") == "blocked" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert found["reached"] is True
    for category in ("illegal", "pornography", "gambling", "self_harm", "social_media", "circumvention"):
        assert observed[category] == "blocked", (category, found)
    assert observed["support"] == "not_seen"  # always open: no blocked lookup
    assert all(c["as_policy_says"] for c in found["categories"]), found
