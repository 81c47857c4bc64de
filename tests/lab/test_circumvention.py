"""Ways round the filter, tried from a pupil's device: each fails, and each is an event.

Seed 001 §9: "Attempts made to circumvent the network's firewalls will result in a ban";
the DSL can only act on attempts that are recorded, flagged, with who and where.
"""

from __future__ import annotations

import errno
import socket
import time

import pytest

from schoolgate.lab.client import LabClient
from schoolgate.lab.internet import DOH_IP, RESOLVER_IP, SITES
from schoolgate.lab.netns import call_in
from schoolgate.lab.topology import GATEWAY_LAN_IP, device

pytestmark = [pytest.mark.root, pytest.mark.slow]

FACEBOOK = next(s.ip for s in SITES if s.label == "facebook")
X_COM = next(s.ip for s in SITES if s.label == "x")
PUPIL = device("pupil")
LESSON = "2026-11-23T10:15:00+00:00"


def is_circumvention(event: object) -> bool:
    return "circumvention" in str(getattr(event, "flags", "")).split(",")


def test_a_query_to_another_resolver_is_answered_by_schoolgate(lab: LabClient) -> None:
    lab.set_clock(LESSON)
    since = lab.last_event_id()
    # The internet's resolver would answer with Facebook's address; schoolgate answers instead.
    assert lab.resolve("pupil", "facebook.com", f"@{RESOLVER_IP}") == [GATEWAY_LAN_IP]
    assert lab.resolve("pupil", "www.facebook.com", f"@{RESOLVER_IP}", "+tcp") == [GATEWAY_LAN_IP]
    assert lab.resolve("pupil", "library.example.org", "@192.0.2.1") != []  # any address at all
    bypasses = lab.wait_events(
        lambda e: e.source == "gateway" and e.rule_id == "gateway.redirect.dns" and e.client_ip == PUPIL.ip,
        since,
        count=3,
    )
    assert {(e.host, e.url) for e in bypasses} == {
        (RESOLVER_IP, f"udp://{RESOLVER_IP}:53"),
        (RESOLVER_IP, f"tcp://{RESOLVER_IP}:53"),
        ("192.0.2.1", "udp://192.0.2.1:53"),
    }
    for event in bypasses:
        # Recorded with who did it, but not circumvention: printers, TVs and phones do this by design.
        assert not is_circumvention(event) and event.flags == "foreign_resolver"
        assert (event.device_id, event.mac, event.person_id, event.role, event.verdict) == (
            PUPIL.device_id,
            PUPIL.mac,
            PUPIL.person_id,
            "pupil",
            "redirect",
        )
        assert event.category is None


def test_the_firefox_canary_is_nxdomain(lab: LabClient) -> None:
    done = lab.dig("pupil", "use-application-dns.net")
    assert "status: NXDOMAIN" in done.stdout, done.stdout
    done = lab.dig("staff", "use-application-dns.net", f"@{RESOLVER_IP}")
    assert "status: NXDOMAIN" in done.stdout, done.stdout


def _connect(host: str, port: int) -> tuple[str, float]:
    started = time.monotonic()
    try:
        socket.create_connection((host, port), timeout=5).close()
        return "connected", time.monotonic() - started
    except OSError as err:
        return errno.errorcode.get(err.errno or 0, type(err).__name__), time.monotonic() - started


def _udp(host: str, port: int) -> tuple[str, float]:
    started = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.connect((host, port))
        sock.send(b"\xc0" + b"\0" * 1199)  # the size of a QUIC Initial
        try:
            sock.recv(2048)
            return "answered", time.monotonic() - started
        except OSError as err:
            return errno.errorcode.get(err.errno or 0, type(err).__name__), time.monotonic() - started


@pytest.mark.parametrize(
    ("kind", "attempt", "host", "port", "protocol", "circumvention"),
    [
        ("dot", _connect, RESOLVER_IP, 853, "tcp", True),
        ("dot", _udp, RESOLVER_IP, 853, "udp", True),  # DNS over QUIC
        ("doh", _connect, RESOLVER_IP, 443, "tcp", True),
        # a watched prefix (Meta's ranges in the config): refused quietly, never circumvention
        ("quic", _udp, FACEBOOK, 443, "udp", False),
    ],
)
def test_encrypted_dns_and_quic_are_rejected_at_once_and_recorded(
    lab: LabClient, kind: str, attempt: object, host: str, port: int, protocol: str, circumvention: bool
) -> None:
    since = lab.last_event_id()
    outcome, seconds = call_in(lab.ns("pupil"), lambda: attempt(host, port))  # type: ignore[operator]
    # rejected, not dropped: the device learns at once and falls back
    assert outcome in ("ECONNREFUSED", "EHOSTUNREACH"), outcome
    assert seconds < 1.0
    (event,) = lab.wait_events(
        lambda e: (
            e.source == "gateway"
            and e.rule_id == f"gateway.refuse.{kind}"
            and e.host == host
            and e.url == f"{protocol}://{host}:{port}"
        ),
        since,
    )
    assert is_circumvention(event) is circumvention and kind in event.flags.split(",")
    assert (event.client_ip, event.mac, event.device_id, event.role, event.verdict) == (
        PUPIL.ip,
        PUPIL.mac,
        PUPIL.device_id,
        "pupil",
        "block" if circumvention else "refused",
    )


def test_doh_by_name_is_blocked_in_dns_and_by_address_in_the_kernel(lab: LabClient) -> None:
    since = lab.last_event_id()
    assert lab.resolve("pupil", "cloudflare-dns.com") == [GATEWAY_LAN_IP]
    done = lab.curl(
        "pupil",
        "https://cloudflare-dns.com/dns-query?dns=AAABAAABAAAAAAAAA3d3dwdleGFtcGxlA2NvbQAAAQAB",
        "--resolve",
        f"cloudflare-dns.com:443:{DOH_IP}",
    )
    assert done.returncode == 7, done.stderr  # connection refused (TCP reset from the gateway)
    dns_event = lab.wait_events(lambda e: e.source == "dns" and e.host == "cloudflare-dns.com", since)[0]
    assert dns_event.rule_id == "no-circumvention" and is_circumvention(dns_event)
    lab.wait_events(lambda e: e.rule_id == "gateway.refuse.doh" and e.host == DOH_IP, since)


def test_an_innocent_sni_to_facebooks_address_is_blocked(lab: LabClient) -> None:
    lab.set_clock(LESSON)
    since = lab.last_event_id()
    done = lab.curl("pupil", "https://weather.example.net/", "--resolve", f"weather.example.net:443:{FACEBOOK}")
    assert done.returncode == 35, (done.returncode, done.stderr)  # killed by the proxy
    (event,) = lab.wait_events(
        lambda e: e.source == "proxy" and e.client_ip == PUPIL.ip and e.verdict == "block", since
    )
    assert is_circumvention(event), event.flags
    assert event.service == "facebook" and event.device_id == PUPIL.device_id
    # The same name on its own address is fine: it is the address that gave it away.
    weather = next(s.ip for s in SITES if s.label == "weather")
    done = lab.curl("pupil", "https://weather.example.net/")
    assert done.returncode == 0 and f"address={weather}" in done.stdout


def test_a_client_hello_without_sni_to_a_watched_address_is_refused(lab: LabClient) -> None:
    import ssl

    def handshake() -> str:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with socket.create_connection((FACEBOOK, 443), timeout=5) as raw:
            try:
                with context.wrap_socket(raw, server_hostname=None):
                    return "handshake completed"
            except (ssl.SSLError, OSError) as err:
                return type(err).__name__

    since = lab.last_event_id()
    assert call_in(lab.ns("pupil"), handshake) != "handshake completed"
    (event,) = lab.wait_events(lambda e: e.source == "proxy" and e.client_ip == PUPIL.ip, since)
    assert event.verdict == "block" and is_circumvention(event)


def test_the_gateway_counted_every_refusal(lab: LabClient) -> None:
    counters = lab.counters()
    assert counters["refused_dot"] >= 2 and counters["refused_doh"] >= 2 and counters["refused_quic"] >= 1


def _dns_query(name: str) -> bytes:
    """A DNS query for `name`'s A record, as a device would send it (id 0x5347, recursion desired)."""
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split("."))
    return bytes.fromhex("534701000001000000000000") + labels + b"\0\0\x01\0\x01"


def test_a_burst_of_attempts_is_recorded_whole_while_dns_and_proxy_events_are_written(lab: LabClient) -> None:
    """net watch runs in the event-writing process beside the DNS daemon's and the proxy's
    channels (`schoolgate run`). A device that fires queries at 300 other resolvers at once, each
    a redirect the kernel logs (and a query the DNS daemon answers, an event of its own), has
    every attempt recorded, each once: the watcher keeps up beside the writers."""
    staff = device("staff")
    targets = [f"198.51.100.{n}" for n in range(1, 201)] + [f"192.0.2.{n}" for n in range(1, 101)]
    query = _dns_query("library.example.org")
    since = lab.last_event_id()

    def burst() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for address in targets:
                sock.sendto(query, (address, 53))

    call_in(lab.ns("staff"), burst)
    # The bound is a safety net, not the claim: the claim is that every one arrives, once.
    found = lab.wait_events(
        lambda e: e.source == "gateway" and e.rule_id == "gateway.redirect.dns" and e.client_ip == staff.ip,
        since, count=len(targets), timeout=60,
    )
    assert sorted(e.host for e in found) == sorted(targets)
    assert {e.url for e in found} == {f"udp://{address}:53" for address in targets}
