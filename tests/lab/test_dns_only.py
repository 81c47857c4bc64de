"""DNS-only mode end to end: the appliance is only the school's DNS server.

The school's router (10.41.0.1) stays every device's gateway; its DHCP hands out the appliance
(10.41.0.2) as the DNS server. Blocking by name, the block page, logging with identity and the
console work; what needs the gateway does not, and these tests show both, so what the README,
doctor and the console tell a school is what really happens.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from schoolgate.lab.client import LabClient
from schoolgate.lab.internet import RESOLVER_IP, SITES
from schoolgate.lab.netns import exec_in
from schoolgate.lab.topology import APPLIANCE_LAN_IP, ROUTER_LAN_IP, device

pytestmark = [pytest.mark.root, pytest.mark.slow]

LESSON = "2026-11-23T10:15:00+00:00"
FACEBOOK = next(s.ip for s in SITES if s.label == "facebook")
LIBRARY = next(s.ip for s in SITES if s.label == "library")
PUPIL = device("pupil")
PHONE = device("phone")


def test_devices_ask_the_appliance_and_route_through_the_router(dns_only_lab: LabClient) -> None:
    lab = dns_only_lab
    assert f"via {ROUTER_LAN_IP}" in lab.run("pupil", ["ip", "route", "show", "default"]).stdout
    assert f"nameserver {APPLIANCE_LAN_IP}" in Path(f"/etc/netns/{lab.ns('pupil')}/resolv.conf").read_text()
    tables = exec_in(lab.gateway, ["nft", "list", "tables"]).stdout
    assert tables.split() == ["table", "inet", "schoolgate"]  # no bridge, no forwarding rules


def test_a_blocked_name_gets_the_appliance_and_the_event_names_the_device(dns_only_lab: LabClient) -> None:
    lab = dns_only_lab
    lab.set_clock(LESSON)
    since = lab.last_event_id()
    assert lab.resolve("pupil", "www.facebook.com") == [APPLIANCE_LAN_IP]
    assert lab.resolve("pupil", "library.example.org") == [LIBRARY]
    (event,) = lab.wait_events(lambda e: e.source == "dns" and e.host == "www.facebook.com", since)
    assert (event.client_ip, event.mac, event.device_id, event.person_name, event.role) == (
        PUPIL.ip, PUPIL.mac, PUPIL.device_id, PUPIL.person_name, "pupil")


def test_the_block_page_is_served_by_the_appliance(dns_only_lab: LabClient) -> None:
    lab = dns_only_lab
    lab.set_clock(LESSON)
    shown = lab.curl("pupilca", "https://www.facebook.com/some/page", ca=lab.school_ca)
    assert shown.returncode == 0 and "Blocked" in shown.stdout and "Social Media Policy" in shown.stdout
    killed = lab.curl("pupil", "https://www.facebook.com/")  # no school CA: the connection is closed
    assert killed.returncode == 35, killed.stderr
    plain = lab.curl("pupil", "http://www.facebook.com/")
    assert plain.returncode == 0 and "Blocked" in plain.stdout


def test_everything_else_never_touches_the_appliance(dns_only_lab: LabClient) -> None:
    lab = dns_only_lab
    lab.set_clock(LESSON)
    before = lab.counters()["proxy_redirected"]
    done = lab.curl("staff", "https://library.example.org/")
    assert done.returncode == 0 and f"address={LIBRARY}" in done.stdout
    assert lab.counters()["proxy_redirected"] == before
    tracked = exec_in(lab.gateway, ["cat", "/proc/net/nf_conntrack"], check=False).stdout
    assert f"dst={LIBRARY}" not in tracked


def test_what_needs_the_gateway_is_left_to_the_schools_firewall(dns_only_lab: LabClient) -> None:
    """The gaps gateway.modes names (and doctor and the console repeat) are real: without the
    school's firewall closing them, a pupil who knows the address, or asks another DNS
    server, reaches Facebook."""
    from schoolgate.gateway.modes import facts

    lab = dns_only_lab
    lab.set_clock(LESSON)
    gaps = {gap.key for gap in facts("dns-only").gaps}
    assert {"dns-bypass", "by-address"} <= gaps
    assert lab.resolve("pupil", "www.facebook.com", f"@{RESOLVER_IP}") == [FACEBOOK]  # dns-bypass
    forced = lab.curl("pupil", "https://www.facebook.com/", "--resolve", f"www.facebook.com:443:{FACEBOOK}")
    assert forced.returncode == 0 and "served-by=lab-internet" in forced.stdout  # by-address


def test_a_device_behind_a_routed_network_is_known_only_by_its_address(dns_only_lab: LabClient) -> None:
    lab = dns_only_lab
    lab.set_clock(LESSON)
    since = lab.last_event_id()
    assert lab.resolve("phone", "www.facebook.com") == [APPLIANCE_LAN_IP]
    (event,) = lab.wait_events(lambda e: e.client_ip == PHONE.ip, since)
    # No MAC crosses the router, and the address is in none of the policy's networks.
    assert (event.mac, event.device_id, event.person_id, event.role) == (None, None, None, "guest")


@pytest.mark.browser
def test_the_block_page_and_the_library_in_chromium(dns_only_lab: LabClient) -> None:
    lab = dns_only_lab
    lab.set_clock(LESSON)
    page = lab.chromium("pupilca", "https://www.facebook.com/", trust=(lab.school_ca,))
    assert "Blocked" in page.stdout and "Social Media Policy §6 and §9" in page.stdout, page.stderr[-2000:]
    library = lab.chromium("guest", "https://library.example.org/")
    assert f"served-by=lab-internet address={LIBRARY}" in library.stdout, library.stderr[-2000:]
