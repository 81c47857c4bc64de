"""Fuzzing the real daemon from the other side: an upstream whose every answer is hostile.

The clients' queries are fuzzed in test_fuzz.py; here the queries are ordinary and the
answers are not (see hostile.py): mutated records, lying counts, compression loops, noise
and answers to other questions sent first, TCP answers whose length prefix lies. The daemon
must answer every client with a well-formed message (SERVFAIL at worst), never die, and
resolve normally once the upstream behaves again. Each query goes out from a source port of
its own, drawn at random (RFC 5452), which the upstream sees.

Like every forwarding resolver, the daemon passes on record data it has no reason to look
inside (an odd `alpn` value in an HTTPS record, say) as the upstream sent it; what it must
never send is a message whose framing is broken, so replies are checked structurally here
(header, question, every record's name and length) rather than by a full rdata parser.
"""

from __future__ import annotations

import random
import select
import socket
import statistics
import time

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest
from conftest import addresses, ask
from hostile import HostileUpstream

from schoolgate.dns.upstream import local_port_range

SEED = 20261119
QUERIES = 4000
IN_FLIGHT = 64
TIME_LIMIT_S = 200
QTYPES = ("A", "AAAA", "HTTPS", "TXT", "CNAME", "MX")


def _name_end(data: bytes, offset: int) -> int:
    """Where the name at `offset` ends; pointers must point backwards (no loops)."""
    end = None
    seen = 0
    while True:
        assert offset < len(data), "name runs past the message"
        length = data[offset]
        if length & 0xC0 == 0xC0:
            assert offset + 1 < len(data), "truncated pointer"
            target = (length & 0x3F) << 8 | data[offset + 1]
            assert target < offset, "a pointer that does not point backwards"
            if end is None:
                end = offset + 2
            offset = target
        elif length & 0xC0:
            raise AssertionError("reserved label type")
        elif length == 0:
            return end if end is not None else offset + 1
        else:
            seen += length + 1
            assert seen <= 255, "name too long"
            offset += length + 1


def check_framing(data: bytes, ident: int, qname: str, qtype: int) -> int:
    """The reply is a well-framed DNS response to our question; returns its RCODE."""
    assert len(data) >= 12
    counts = [int.from_bytes(data[i : i + 2], "big") for i in range(4, 12, 2)]
    assert int.from_bytes(data[:2], "big") == ident and data[2] & 0x80, "not our reply"
    assert counts[0] == 1, counts
    end = _name_end(data, 12)
    assert dns.name.from_wire(data, 12)[0] == dns.name.from_text(qname)
    assert int.from_bytes(data[end : end + 2], "big") == qtype
    offset = end + 4
    for _ in range(sum(counts[1:])):
        offset = _name_end(data, offset)
        assert offset + 10 <= len(data), "record header truncated"
        offset += 10 + int.from_bytes(data[offset + 8 : offset + 10], "big")
        assert offset <= len(data), "record data runs past the message"
    assert offset == len(data), "bytes after the last record"
    return data[3] & 0x0F


@pytest.fixture()
def hostile():
    server = HostileUpstream(SEED).start()
    yield server
    server.close()


@pytest.mark.slow
def test_hostile_upstream_answers_never_stop_the_daemon(fresh_daemon, hostile: HostileUpstream) -> None:
    d = fresh_daemon([hostile.address]).start()
    rng = random.Random(SEED)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    target = ("127.0.0.1", d.port)
    waiting: dict[int, tuple[float, str, int]] = {}  # query id -> (deadline, name, type)
    replies = unanswered = 0
    rcodes: dict[int, int] = {}
    started = time.monotonic()
    sent = 0
    try:
        while sent < QUERIES or waiting:
            while sent < QUERIES and len(waiting) < IN_FLIGHT:
                name, qtype = f"q{sent}.fuzz.test", dns.rdatatype.from_text(rng.choice(QTYPES))
                query = dns.message.make_query(name, qtype)
                query.id = sent % 65536
                sock.sendto(query.to_wire(), target)
                waiting[query.id] = (time.monotonic() + 5.0, name, qtype)  # the daemon's budget: 0.8 s
                sent += 1
            ready, _, _ = select.select([sock], [], [], 0.05)
            if ready:
                data = sock.recv(65535)
                ident = int.from_bytes(data[:2], "big")
                asked = waiting.pop(ident, None)
                assert asked is not None, "a reply nobody was waiting for"
                rcode = check_framing(data, ident, asked[1], asked[2])
                assert rcode in (0, 2, 3, 5), (rcode, data)
                replies += 1
                rcodes[rcode] = rcodes.get(rcode, 0) + 1
            now = time.monotonic()
            for ident in [i for i, (deadline, _, _) in waiting.items() if deadline < now]:
                del waiting[ident]
                unanswered += 1
            assert time.monotonic() - started < TIME_LIMIT_S
            assert d.proc is not None and d.proc.poll() is None, d.log_text()[-3000:]
    finally:
        sock.close()
    # The hostile answers really reached the daemon's parsers. Not every query goes upstream:
    # after a run of unusable answers the pool rests the upstream (and on a loaded machine the
    # timeouts add to the run), answering SERVFAIL meanwhile, which is the behaviour under test too.
    assert hostile.answered >= QUERIES // 8, (hostile.answered, rcodes)
    assert hostile.tcp_answered > 0  # and some over TCP, after a truncated answer
    assert unanswered == 0 and replies == QUERIES, (unanswered, rcodes)
    assert rcodes.get(dns.rcode.NOERROR, 0) > 0 and rcodes.get(dns.rcode.SERVFAIL, 0) > 0, rcodes
    # The upstream behaves again: ordinary answers, straight away (even if the hostile run left
    # it resting, a lone upstream is still asked, and its first good answer ends the rest).
    hostile.honest = True
    assert addresses(ask(d.port, "after.fuzz.test")) == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
    assert addresses(ask(d.port, "after6.fuzz.test", "AAAA", tcp=True)) == ["2001:db8::1", "2001:db8::2"]
    log = d.log_text()
    assert "Traceback" not in log and "resolver chain failed" not in log, log[-3000:]
    assert d.stop() == 0
    # RFC 5452: a source port drawn at random for every query, over the whole outgoing range.
    # n uniform draws from N ports give N(1 - (1 - 1/N)^n) distinct ports on average.
    ports = hostile.source_ports
    low, high = local_port_range()
    size = high - low + 1
    expected = size * (1 - (1 - 1 / size) ** len(ports))
    assert len(set(ports)) >= 0.97 * expected, (len(set(ports)), expected, len(ports))
    assert low <= min(ports) and max(ports) <= high
    # a uniform spread: the standard deviation of a uniform range is its width / sqrt(12); with
    # 500 ports or more, the sample's is within 15% of it (over 7 standard errors)
    sigma = size / 12**0.5
    assert abs(statistics.pstdev(ports) - sigma) < 0.15 * sigma
