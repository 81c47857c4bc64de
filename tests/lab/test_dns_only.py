"""DNS-only mode end to end: the appliance is only the school's DNS server.

The school's router (10.41.0.1) stays every device's gateway; its DHCP hands out the appliance
(10.41.0.2) as the DNS server. Blocking by name, the block page, logging with identity and the
console work; what needs the gateway does not, and these tests show both, so what the README,
doctor and the console tell a school is what really happens.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pytest

from schoolgate.lab.client import LabClient
from schoolgate.lab.internet import RESOLVER_IP, SITES, address_for_name
from schoolgate.lab.netns import call_in, exec_in, wait_for
from schoolgate.lab.topology import APPLIANCE_LAN_IP, ROUTER_LAN_IP, device
from schoolgate.store.models import AccessEvent

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
    assert "Blocked" in page.stdout and "Social Media Policy §6" in page.stdout, page.stderr[-2000:]
    library = lab.chromium("guest", "https://library.example.org/")
    assert f"served-by=lab-internet address={LIBRARY}" in library.stdout, library.stderr[-2000:]


# ------------------------------------------------------------------ who is behind the address
# The router of the dns-only lab is also the Wi-Fi controller (RADIUS accounting to the
# appliance) and the DHCP server of the routed Wi-Fi network (its lease file, which the
# appliance's identity daemon follows). The phone is Cara's own: not in the register.

STAFF_USER = "Cara.Teacher@kingswood.example"  # as she signs in to the Wi-Fi
AFTERNOON = "2026-11-23T14:15:00+00:00"  # a lesson after lunch


def phone_event(lab: LabClient, since: int, predicate: Callable[[AccessEvent], bool]) -> AccessEvent:
    """Ask for Facebook from the phone until an event matches: the daemons reload the evidence
    within a second of it changing, and cache an unknown device's identity for one more."""
    deadline = time.monotonic() + 15
    while True:
        lab.resolve("phone", "www.facebook.com")
        found = [e for e in lab.events(since) if e.client_ip == PHONE.ip and predicate(e)]
        if found:
            return found[-1]
        assert time.monotonic() < deadline, [(e.mac, e.person_id, e.identity_source) for e in lab.events(since)]
        time.sleep(0.3)


def controller_sends(lab: LabClient, status: str, *, secret: bytes | None = None, session_id: str = "wlc-7781") -> Any:
    """The Wi-Fi controller (on the router) sends one Accounting-Request, with pyrad's client."""
    from pyrad.client import Client, Timeout

    from schoolgate.identity.radius import dictionary

    def send() -> Any:
        client = Client(server=APPLIANCE_LAN_IP, acctport=1813, secret=secret or lab.lab.radius_secret,
                        dict=dictionary())
        client.timeout, client.retries = 2, 1
        request = client.CreateAcctPacket(User_Name=STAFF_USER)
        request["Acct-Status-Type"] = status
        request["Acct-Session-Id"] = session_id
        request["Calling-Station-Id"] = PHONE.mac.replace(":", "-").upper()
        request["Framed-IP-Address"] = PHONE.ip
        request["NAS-Identifier"] = "lab-wlc"
        try:
            return client.SendPacket(request)
        except Timeout:
            return None

    return call_in(lab.lab.names.router, send)


def test_a_dhcp_lease_names_the_phone_and_radius_names_its_owner(dns_only_lab: LabClient) -> None:
    lab = dns_only_lab
    lab.set_clock(LESSON)
    now = lab.lab.clock_now().astimezone(UTC)
    since = lab.last_event_id()
    stamp = "%w %Y/%m/%d %H:%M:%S"
    lab.lab.lease_file.write_text(
        f"lease {PHONE.ip} {{\n  starts {(now - timedelta(hours=1)).strftime(stamp)};\n"
        f"  ends {(now + timedelta(hours=11)).strftime(stamp)};\n  binding state active;\n"
        f"  hardware ethernet {PHONE.mac};\n  client-hostname \"caras-phone\";\n}}\n"
    )
    leased = phone_event(lab, since, lambda e: e.identity_source == "dhcp")
    assert (leased.mac, leased.device_name, leased.person_id, leased.role) == (PHONE.mac, "caras-phone", None, "guest")

    # She signs in to the Wi-Fi with her own account: the next blocked attempt is hers.
    answer = controller_sends(lab, "Start")
    assert answer is not None and answer.code == 5  # Accounting-Response: recorded
    since = lab.last_event_id()
    event = phone_event(lab, since, lambda e: e.identity_source == "radius")
    assert (event.person_id, event.person_name, event.role, event.mac, event.verdict, event.rule_id) == (
        device("staff").person_id, "Cara Teacher", "staff", PHONE.mac, "block", "staff-social-media-school-hours")

    # Her role is her directory's: the policy leaves piracy sites to staff's judgement and blocks
    # them for guests, so the phone now reaches one (the lab's clock only moves forward: her
    # session started this morning).
    lab.set_clock(AFTERNOON)
    assert lab.resolve("phone", "thepiratebay.org") == [address_for_name("thepiratebay.org")]

    # A Stop with the wrong secret is dropped unanswered, and changes nothing: still hers.
    assert controller_sends(lab, "Stop", secret=b"not-the-controllers-secret") is None
    since = lab.last_event_id()
    lab.resolve("phone", "www.instagram.com")
    (still,) = lab.wait_events(lambda e: e.client_ip == PHONE.ip and e.host == "www.instagram.com", since)
    assert (still.person_name, still.identity_source) == ("Cara Teacher", "radius")
    # She leaves: the Stop ends her session, and the phone is a phone again.
    assert controller_sends(lab, "Stop") is not None
    since = lab.last_event_id()
    after = phone_event(lab, since, lambda e: e.identity_source == "dhcp")
    assert after.person_id is None and after.role == "guest"
    # The daemon's counters say so too, at its next status report (every STATUS_EVERY_S).
    from schoolgate.identity.daemon import STATUS_EVERY_S
    from schoolgate.store.events import read_status

    def counters() -> dict[str, Any]:
        with lab.session() as session:
            stats: dict[str, Any] = read_status(session, "kingswood")["identity"]["stats"]
            return stats

    def reported() -> bool:
        radius = counters()["radius"]
        return bool(radius["recorded"] == 2 and radius["dropped"] == {"bad_authenticator": 1})

    wait_for(reported, timeout=3 * STATUS_EVERY_S, what="the identity daemon to report both Stops")
    assert counters()["lease_files"][0]["leases"] >= 1
