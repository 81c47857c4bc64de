"""The real `schoolgate dns` process, asked by dnspython and dig over UDP and TCP, IPv4 and IPv6."""

from __future__ import annotations

import ipaddress
import subprocess
from datetime import UTC, datetime

import dns.flags
import dns.rcode
import dns.rdatatype
import pytest
from conftest import STAFF_DEVICE_IP, Daemon, add_staff_device, addresses, ask, ede
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from schoolgate.store.models import AccessEvent

LUNCH_END = datetime(2026, 11, 18, 13, 0, tzinfo=UTC)

# (who asks, name, type) -> expected (rcode, addresses or None for "no answer records", EDE code)
CASES = [
    # 127.0.0.1 is on the pupil network; ::1 the staff network; 127.0.0.3 a registered staff laptop.
    ("127.0.0.1", "www.example.test", "A", "NOERROR", ["192.0.2.10"], None),
    ("127.0.0.1", "www.example.test", "AAAA", "NOERROR", ["2001:db8::10"], None),
    ("127.0.0.1", "www.facebook.com", "A", "NOERROR", ["10.99.0.1"], 17),
    ("127.0.0.1", "www.facebook.com", "AAAA", "NOERROR", ["fd99::1"], 17),
    ("127.0.0.1", "www.facebook.com", "MX", "NOERROR", [], 17),
    ("::1", "www.facebook.com", "A", "NOERROR", ["192.0.2.21"], None),
    (STAFF_DEVICE_IP, "facebook.com", "A", "NOERROR", ["192.0.2.20"], None),
    ("127.0.0.1", "games.test", "A", "NOERROR", ["10.99.0.1"], 17),  # 10:00 is not lunch
    # a name of our own pointing (CNAME) at a blocked one is blocked too; fine for staff
    ("127.0.0.1", "sneaky.example.test", "A", "NOERROR", ["10.99.0.1"], 17),
    ("::1", "sneaky.example.test", "A", "NOERROR", ["192.0.2.21"], None),
    ("127.0.0.1", "sneaky.example.test", "A", "NOERROR", ["10.99.0.1"], 17),  # now from the cache
    ("127.0.0.1", "alias.example.test", "A", "NOERROR", ["192.0.2.10"], None),
    ("::1", "games.test", "A", "NOERROR", ["192.0.2.30"], None),
    # hard-blocked circumvention: every role, EDE 15 Blocked
    ("::1", "dns.google", "A", "NOERROR", ["10.99.0.1"], 15),
    (STAFF_DEVICE_IP, "doh.example.test", "AAAA", "NOERROR", ["fd99::1"], 15),
    ("127.0.0.1", "cloudflare-dns.com", "HTTPS", "NOERROR", [], 15),
    # special names
    ("127.0.0.1", "use-application-dns.net", "A", "NXDOMAIN", [], None),
    ("::1", "mask.icloud.com", "A", "NXDOMAIN", [], None),
    ("127.0.0.1", "mask-h2.icloud.com", "AAAA", "NXDOMAIN", [], None),
    ("127.0.0.1", "_dns.resolver.arpa", "SVCB", "NOERROR", [], None),
    ("127.0.0.1", "resolver.arpa", "A", "NOERROR", [], None),
    ("127.0.0.1", "schoolgate.lan", "A", "NOERROR", ["10.99.0.2"], None),
    ("::1", "filter.dnstest.lan", "AAAA", "NOERROR", ["fd99::2"], None),
    ("::1", "filter.dnstest.lan", "TXT", "NOERROR", [], None),
    ("127.0.0.1", "nothing-here.example.test", "A", "NXDOMAIN", [], None),
]


@pytest.mark.parametrize(("source", "name", "rdtype", "rcode", "expected", "ede_code"), CASES)
def test_answers_by_role_and_name(
    daemon: Daemon, source: str, name: str, rdtype: str, rcode: str, expected: list[str], ede_code: int | None
) -> None:
    daemon.set_time(datetime(2026, 11, 18, 10, 0, tzinfo=UTC))
    server = "::1" if ":" in source else "127.0.0.1"
    reply = ask(daemon.port, name, rdtype, server=server, source=source, use_edns=0)
    assert dns.rcode.to_text(reply.rcode()) == rcode
    assert addresses(reply) == expected
    codes = [code for code, _ in ede(reply)]
    assert codes == ([ede_code] if ede_code else [])
    if ede_code:
        assert ede(reply)[0][1] in ("pupils-social-media", "pupils-games", "hard-circumvention")
    if expected == ["10.99.0.1"] or expected == ["fd99::1"]:
        assert reply.answer[0].ttl <= 10


def test_blocked_without_edns_has_no_opt(daemon: Daemon) -> None:
    reply = ask(daemon.port, "www.facebook.com", use_edns=False)
    assert addresses(reply) == ["10.99.0.1"]
    assert reply.edns < 0


def test_ttl_is_clamped_at_the_end_of_lunch(daemon: Daemon) -> None:
    """An allow given at 12:59:30 cannot outlive lunch, in our cache or the client's."""
    daemon.set_time(datetime(2026, 11, 18, 12, 59, 30, tzinfo=UTC))
    first = ask(daemon.port, "games.test")
    assert addresses(first) == ["192.0.2.30"]  # pupils may play at lunch
    assert 0 < first.answer[0].ttl <= 30  # the upstream said 3600
    again = ask(daemon.port, "games.test")  # from the cache, same clamp
    assert again.answer[0].ttl <= 30
    daemon.set_time(LUNCH_END)
    after = ask(daemon.port, "games.test")
    assert addresses(after) == ["10.99.0.1"]  # lunch is over: blocked, not served from cache
    staff = ask(daemon.port, "games.test", server="::1")
    assert addresses(staff) == ["192.0.2.30"]
    assert staff.answer[0].ttl > 30  # staff's answer never depended on lunch


def test_safe_search_cname_with_target_resolved(daemon: Daemon) -> None:
    daemon.set_time(datetime(2026, 11, 18, 10, 0, tzinfo=UTC))
    reply = ask(daemon.port, "www.google.com")
    cname = [r for r in reply.answer if r.rdtype == dns.rdatatype.CNAME]
    assert cname and cname[0][0].target.to_text() == "forcesafesearch.google.com."
    assert str(cname[0].name) == "www.google.com."
    assert addresses(reply) == ["216.239.38.120"]
    six = ask(daemon.port, "www.google.com", "AAAA")
    assert addresses(six) == ["2001:4860:4802:32::78"]
    staff = ask(daemon.port, "www.google.com", server="::1")
    assert addresses(staff) == ["192.0.2.40"]
    assert not [r for r in staff.answer if r.rdtype == dns.rdatatype.CNAME]


def test_ech_is_removed_and_the_rest_of_the_https_record_survives(daemon: Daemon) -> None:
    reply = ask(daemon.port, "ech.example.test", "HTTPS")
    (rrset,) = reply.answer
    (https,) = list(rrset)
    params = {int(k): v for k, v in https.params.items()}
    assert 5 not in params  # ech
    assert [a.decode() for a in params[1].ids] == ["h2", "h3"]  # alpn
    assert params[3].port == 8443
    assert [str(a) for a in params[4].addresses] == ["192.0.2.50", "192.0.2.51"]
    assert [str(a) for a in params[6].addresses] == ["2001:db8::50"]
    assert [int(k) for k in params[0].keys] == [1]  # mandatory no longer names ech
    out = subprocess.run(
        ["dig", "+tries=1", "+time=3", "-p", str(daemon.port), "@127.0.0.1", "ech.example.test", "HTTPS"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    assert 'alpn="h2,h3"' in out and "ech=" not in out and "ipv4hint=192.0.2.50,192.0.2.51" in out


def test_large_answer_truncates_over_udp_and_comes_whole_over_tcp(daemon: Daemon) -> None:
    udp = ask(daemon.port, "big.example.test", "TXT", use_edns=0, payload=1232)
    assert udp.flags & dns.flags.TC
    assert not udp.answer
    tcp = ask(daemon.port, "big.example.test", "TXT", tcp=True)
    assert not tcp.flags & dns.flags.TC
    assert sum(len(s) for s in tcp.answer[0][0].strings) == 8 * 240
    out = subprocess.run(
        ["dig", "+tries=1", "+time=3", "-p", str(daemon.port), "@127.0.0.1", "big.example.test", "TXT"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    assert "Truncated, retrying in TCP mode" in out and "x007x007" in out


def test_tcp_and_ipv6_answer_like_udp(daemon: Daemon) -> None:
    daemon.set_time(datetime(2026, 11, 18, 10, 0, tzinfo=UTC))
    assert addresses(ask(daemon.port, "www.facebook.com", tcp=True)) == ["10.99.0.1"]
    assert addresses(ask(daemon.port, "www.facebook.com", server="::1", tcp=True)) == ["192.0.2.21"]
    assert addresses(ask(daemon.port, "www.example.test", server="::1")) == ["192.0.2.10"]


def test_dig_sees_the_block_and_its_reason(daemon: Daemon) -> None:
    daemon.set_time(datetime(2026, 11, 18, 10, 0, tzinfo=UTC))
    out = subprocess.run(
        ["dig", "+tries=1", "+time=3", "-p", str(daemon.port), "@127.0.0.1", "www.facebook.com"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    assert "10.99.0.1" in out
    assert "EDE: 17 (Filtered): (pupils-social-media)" in out


def test_log_rows_carry_every_required_field(fresh_daemon, authority) -> None:
    """Blocked and special answers in full, allowed ones folded; all flushed on SIGTERM."""
    d = fresh_daemon([authority.address])
    add_staff_device(d.db_url)
    d.start()
    ask(d.port, "www.facebook.com", source="127.0.0.1")
    ask(d.port, "www.facebook.com", "AAAA", source="127.0.0.1")
    ask(d.port, "use-application-dns.net", source="127.0.0.1")
    for _ in range(3):
        ask(d.port, "www.example.test", source=STAFF_DEVICE_IP)
    assert d.stop() == 0
    assert "events written" in d.log_text()
    engine = create_engine(d.db_url)
    with Session(engine) as session:
        found = list(session.scalars(select(AccessEvent)))
    engine.dispose()
    blocked = sorted((r for r in found if r.host == "www.facebook.com"), key=lambda r: r.ts)
    # Every ask, in full: the event writer folds a burst's asks for one name by one device into
    # one row (qtype the types in the order asked, count the asks), or keeps them apart if they
    # fell into different bursts; either way both asks are there, counted exactly.
    assert ",".join(r.qtype or "" for r in blocked) == "A,AAAA"
    assert sum(r.count for r in blocked) == 2
    for row in blocked:
        assert row.client_ip == "127.0.0.1" and row.role == "pupil" and row.source == "dns"
        assert row.verdict == "block" and row.rule_id == "pupils-social-media"
        assert row.service == "facebook" and row.clause == "Social Media Policy §9"
        assert row.ts == datetime(2026, 11, 18, 10, 0, tzinfo=UTC).replace(
            second=row.ts.second, microsecond=row.ts.microsecond
        )
        assert row.site == "dnstest"
    special = [r for r in found if r.host == "use-application-dns.net"]
    assert len(special) == 1
    assert special[0].verdict == "block" and special[0].rule_id == "dns.special.doh-canary"
    assert special[0].role == "pupil" and special[0].qtype == "A"
    allowed = [r for r in found if r.host == "www.example.test"]
    assert len(allowed) == 1 and allowed[0].count == 3  # one row per client and domain per minute
    row = allowed[0]
    assert row.client_ip == STAFF_DEVICE_IP and row.verdict == "allow" and row.rule_id == "default"
    assert row.device_id == "LAPTOP-07" and row.device_name == "Staff laptop 7"
    assert row.person_id == "t.jones" and row.person_name == "Tess Jones" and row.role == "staff"
    assert row.mac == "02:00:00:00:00:07"  # from the register (loopback has no neighbour entry)


def test_malformed_and_refused_queries(daemon: Daemon) -> None:
    import socket
    import struct

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2)
    try:
        # two questions -> FORMERR
        question = b"\x03www\x07example\x04test\x00\x00\x01\x00\x01"
        sock.sendto(struct.pack("!HHHHHH", 7, 0x0100, 2, 0, 0, 0) + question * 2, ("127.0.0.1", daemon.port))
        data = sock.recv(512)
        assert data[:2] == b"\x00\x07" and data[3] & 0xF == 1
        # class CH -> REFUSED
        chaos = b"\x07version\x04bind\x00\x00\x10\x00\x03"
        sock.sendto(struct.pack("!HHHHHH", 8, 0x0100, 1, 0, 0, 0) + chaos, ("127.0.0.1", daemon.port))
        data = sock.recv(512)
        assert data[:2] == b"\x00\x08" and data[3] & 0xF == 5
        # opcode NOTIFY -> NOTIMP
        sock.sendto(struct.pack("!HHHHHH", 9, 0x2000, 1, 0, 0, 0) + question, ("127.0.0.1", daemon.port))
        data = sock.recv(512)
        assert data[:2] == b"\x00\x09" and data[3] & 0xF == 4
    finally:
        sock.close()
    assert addresses(ask(daemon.port, "www.example.test")) == ["192.0.2.10"]


def test_listens_on_both_families(daemon: Daemon) -> None:
    for server in ("127.0.0.1", "::1"):
        ipaddress.ip_address(server)
        assert ask(daemon.port, "schoolgate.lan", server=server).rcode() == dns.rcode.NOERROR
