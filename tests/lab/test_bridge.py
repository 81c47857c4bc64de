"""Bridge mode end to end: the appliance in the cable between the school's router and switch.

The devices keep the router (10.41.0.1) as their gateway and DNS server, as the school's DHCP
says; nothing is re-addressed. The appliance (10.41.0.2, a bridge) takes DNS and watched web
connections off the wire and runs the same daemons, policy and rules as in gateway mode.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from schoolgate.lab.client import LabClient
from schoolgate.lab.internet import RESOLVER_IP, SITES
from schoolgate.lab.netns import call_in, exec_in, wait_for
from schoolgate.lab.topology import APPLIANCE_LAN_IP, ROUTER_LAN_IP, device

pytestmark = [pytest.mark.root, pytest.mark.slow]

LESSON = "2026-11-23T10:15:00+00:00"
LUNCH = "2026-11-23T12:30:00+00:00"
AFTER_SCHOOL = "2026-11-23T16:30:00+00:00"  # ASPIRE §4: staff social media after school hours
FACEBOOK = next(s.ip for s in SITES if s.label == "facebook")
X_COM = next(s.ip for s in SITES if s.label == "x")
LIBRARY = next(s.ip for s in SITES if s.label == "library")
PUBLIC_ROOT = "CN=schoolgate lab public root"
PUPIL = device("pupil")
STAFF = device("staff")


def issuer(stderr: str) -> str:
    return next((line.split("issuer:", 1)[1].strip() for line in stderr.splitlines() if "issuer:" in line), "")


def router_flows(lab: LabClient) -> str:
    router = lab.lab.names.router
    return exec_in(router, ["cat", "/proc/net/nf_conntrack"], check=False).stdout


def test_devices_keep_the_routers_addresses(bridge_lab: LabClient) -> None:
    lab = bridge_lab
    route = lab.run("pupil", ["ip", "route", "show", "default"]).stdout
    assert f"via {ROUTER_LAN_IP}" in route
    resolv = Path(f"/etc/netns/{lab.ns('pupil')}/resolv.conf").read_text()
    assert f"nameserver {ROUTER_LAN_IP}" in resolv
    appliance = exec_in(lab.gateway, ["ip", "-4", "-o", "addr", "show"]).stdout
    assert APPLIANCE_LAN_IP in appliance and f" {ROUTER_LAN_IP}/" not in appliance
    bridge = exec_in(lab.gateway, ["ip", "-o", "link", "show", "master", "br0"]).stdout
    assert "lan0" in bridge and "wan0" in bridge


def test_dns_to_the_router_is_answered_by_the_appliance_and_logged(bridge_lab: LabClient) -> None:
    lab = bridge_lab
    lab.set_clock(LESSON)
    since = lab.last_event_id()
    assert lab.resolve("pupil", "www.facebook.com") == [APPLIANCE_LAN_IP]  # the block address
    assert lab.resolve("pupil", "library.example.org") == [LIBRARY]
    (event,) = lab.wait_events(lambda e: e.source == "dns" and e.host == "www.facebook.com", since)
    # Every DfE field, the MAC included: the appliance is on the devices' own segment.
    assert (event.client_ip, event.mac, event.device_id) == (PUPIL.ip, PUPIL.mac, PUPIL.device_id)
    assert (event.person_name, event.role, event.verdict, event.rule_id) == (
        PUPIL.person_name, "pupil", "block", "pupils-no-social-media")
    assert lab.counters()["dns_redirected"] >= 2


def test_dns_sent_to_another_server_is_answered_by_the_appliance_and_recorded(bridge_lab: LabClient) -> None:
    lab = bridge_lab
    lab.set_clock(LESSON)
    since = lab.last_event_id()
    assert lab.resolve("pupil", "www.instagram.com", f"@{RESOLVER_IP}") == [APPLIANCE_LAN_IP]
    events = lab.wait_events(lambda e: e.rule_id == "gateway.redirect.dns", since)
    assert events[0].client_ip == PUPIL.ip and events[0].device_id == PUPIL.device_id
    # Recorded, but not circumvention: printers, TVs and phones send DNS elsewhere by design.
    assert (events[0].flags, events[0].verdict) == ("foreign_resolver", "redirect")


def test_forcing_facebooks_real_address_is_killed_at_the_sni(bridge_lab: LabClient) -> None:
    lab = bridge_lab
    lab.set_clock(LESSON)
    since = lab.last_event_id()
    done = lab.curl("pupil", "https://www.facebook.com/", "--resolve", f"www.facebook.com:443:{FACEBOOK}")
    assert done.returncode == 35, done.stderr  # the proxy closed the handshake
    (event,) = lab.wait_events(lambda e: e.source == "proxy" and e.client_ip == PUPIL.ip, since)
    assert (event.verdict, event.rule_id, event.mac, event.person_id) == (
        "block", "pupils-no-social-media", PUPIL.mac, PUPIL.person_id)


def test_a_pupil_trusting_the_school_ca_sees_the_block_page(bridge_lab: LabClient) -> None:
    lab = bridge_lab
    lab.set_clock(LESSON)
    done = lab.curl("pupilca", "https://www.facebook.com/groups/year6", "-v", ca=lab.school_ca)
    assert done.returncode == 0, done.stderr
    assert "Blocked" in done.stdout and "Social Media Policy §6" in done.stdout
    assert "served-by=lab-internet" not in done.stdout


def test_staff_after_school_reach_x_through_the_proxy_undecrypted(bridge_lab: LabClient) -> None:
    lab = bridge_lab
    lab.set_clock(AFTER_SCHOOL)
    assert lab.resolve("staff", "x.com") == [X_COM]

    def learnt() -> bool:
        out = exec_in(lab.gateway, ["nft", "-j", "list", "set", "bridge", "schoolgate", "watched4"]).stdout
        return X_COM in out

    wait_for(learnt, timeout=5, what="x.com's address in the bridge table's watched4")
    steered = lab.counters()["proxy_redirected"]
    done = lab.curl("staff", "https://x.com/", "-v")
    assert done.returncode == 0 and issuer(done.stderr) == PUBLIC_ROOT, done.stderr
    assert f"address={X_COM}" in done.stdout
    assert lab.counters()["proxy_redirected"] == steered + 1


def test_the_ordinary_site_is_bridged_by_the_kernel(bridge_lab: LabClient) -> None:
    lab = bridge_lab
    lab.set_clock(LESSON)
    before = lab.counters()
    seen_before = lab.proxy_stats(fresh=True)["counters"]["connections_seen"]
    for key in ("pupil", "staff", "guest"):
        done = lab.curl(key, "https://library.example.org/", "-v")
        assert done.returncode == 0 and issuer(done.stderr) == PUBLIC_ROOT, (key, done.stderr)
        assert f"address={LIBRARY}" in done.stdout
    after = lab.counters()
    assert after["proxy_redirected"] == before["proxy_redirected"]
    assert lab.proxy_stats(fresh=True)["counters"]["connections_seen"] == seen_before
    assert after["forwarded_connections"] >= before["forwarded_connections"] + 3
    # The router, not the appliance, carried the connection: it saw the device's own address.
    assert f"src={device('guest').ip} dst={LIBRARY}" in router_flows(lab)


def test_dns_over_tls_is_refused_at_once_and_recorded_as_circumvention(bridge_lab: LabClient) -> None:
    lab = bridge_lab
    lab.set_clock(LESSON)
    since = lab.last_event_id()
    refused_before = lab.counters()["refused_dot"]

    def attempt() -> tuple[str, float]:
        started = time.monotonic()
        try:
            socket.create_connection((RESOLVER_IP, 853), timeout=3).close()
            return "connected", 0.0
        except OSError as err:
            return type(err).__name__, time.monotonic() - started

    outcome, seconds = call_in(lab.ns("staff"), attempt)
    assert outcome == "ConnectionRefusedError" and seconds < 1.0
    assert lab.counters()["refused_dot"] == refused_before + 1
    (event,) = lab.wait_events(lambda e: e.rule_id == "gateway.refuse.dot", since)
    assert (event.client_ip, event.mac, event.device_id, event.person_name) == (
        STAFF.ip, STAFF.mac, STAFF.device_id, STAFF.person_name)
    assert event.url == f"tcp://{RESOLVER_IP}:853" and event.category == "circumvention"


@pytest.mark.browser
def test_staff_browse_facebook_after_school_in_chromium_and_quic_is_refused(
    bridge_lab: LabClient, tmp_path: Path
) -> None:
    lab = bridge_lab
    lab.set_clock(AFTER_SCHOOL)
    quic_before = lab.counters()["refused_quic"]
    page = lab.chromium("staff", "https://www.facebook.com/", profile=str(tmp_path))
    assert f"served-by=lab-internet address={FACEBOOK}" in page.stdout, page.stderr[-2000:]
    assert lab.counters()["refused_quic"] > quic_before  # Alt-Svc made it try QUIC; refused, it used TCP


@pytest.mark.browser
def test_pupil_sees_the_block_page_in_chromium(bridge_lab: LabClient) -> None:
    lab = bridge_lab
    lab.set_clock(LESSON)
    page = lab.chromium("pupilca", "https://www.facebook.com/", trust=(lab.school_ca,))
    assert "Blocked" in page.stdout and "Social Media Policy §6" in page.stdout, page.stderr[-2000:]
    library = lab.chromium("pupil", "https://library.example.org/")
    assert f"served-by=lab-internet address={LIBRARY}" in library.stdout, library.stderr[-2000:]
