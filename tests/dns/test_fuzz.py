"""Fuzzing the real daemon: 100,000+ mutated and random packets over UDP, some over TCP.

The corpus is real queries: captured from dig (by a socket standing in for a server) and made
by dnspython. A seeded mutator flips bits, overwrites, truncates, splices, inflates counts and
makes pure noise. The daemon must answer with a well-formed message (FORMERR and friends for
broken queries) or drop, never die, and still answer normally afterwards.
"""

from __future__ import annotations

import select
import socket
import struct
import subprocess
import time

import dns.message
import dns.rcode
import pytest
from conftest import addresses, ask, wait_for
from mutator import Mutator

SEED = 20261118
UDP_PACKETS = 100_000
TCP_PACKETS = 3_000
TIME_LIMIT_S = 150


def capture_dig_queries() -> list[bytes]:
    """What dig really sends, for several query shapes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    port = sock.getsockname()[1]
    captured = []
    shapes = [
        ["www.example.test", "A"],
        ["www.facebook.com", "AAAA", "+dnssec"],
        ["ech.example.test", "HTTPS", "+cookie"],
        ["big.example.test", "TXT", "+nsid", "+bufsize=4096"],
        ["example.test", "MX", "+noedns"],
    ]
    try:
        for shape in shapes:
            proc = subprocess.Popen(
                ["dig", "+tries=1", "+time=2", "-p", str(port), "@127.0.0.1", *shape],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            data, addr = sock.recvfrom(4096)
            captured.append(data)
            # Answer REFUSED so dig finishes at once.
            sock.sendto(data[:2] + b"\x81\x05" + data[4:6] + b"\x00\x00\x00\x00\x00\x00" + data[12:], addr)
            proc.wait(10)
    finally:
        sock.close()
    return captured


def made_queries() -> list[bytes]:
    out = []
    for name, rdtype, kwargs in [
        ("games.test", "A", {}),
        ("www.google.com", "A", {"use_edns": 0}),
        ("use-application-dns.net", "A", {}),
        ("_dns.resolver.arpa", "SVCB", {"use_edns": 0, "want_dnssec": True}),
        ("schoolgate.lan", "AAAA", {"use_edns": 0, "payload": 512}),
        ("a.b.c.d.e.f.g.h.example.test", "PTR", {}),
    ]:
        out.append(dns.message.make_query(name, rdtype, **kwargs).to_wire())
    return out


def check_reply(reply: bytes) -> None:
    assert len(reply) >= 12, reply
    flags = struct.unpack("!H", reply[2:4])[0]
    assert flags & 0x8000  # QR
    assert flags & 0xF in (0, 1, 2, 3, 4, 5), reply
    dns.message.from_wire(reply, ignore_trailing=True)  # well-formed enough for dnspython


@pytest.mark.slow
def test_fuzzed_packets_never_stop_the_daemon(fresh_daemon, authority) -> None:
    corpus = capture_dig_queries() + made_queries()
    assert len(corpus) >= 10
    d = fresh_daemon([authority.address]).start()
    mutator = Mutator(corpus, SEED)
    started = time.monotonic()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.setblocking(False)
    target = ("127.0.0.1", d.port)
    replies = 0

    def drain(wait: float) -> None:
        nonlocal replies
        while True:
            ready, _, _ = select.select([sock], [], [], wait)
            if not ready:
                return
            try:
                data = sock.recv(65535)
            except BlockingIOError:
                return
            check_reply(data)
            replies += 1
            wait = 0

    try:
        for i in range(UDP_PACKETS):
            try:
                sock.sendto(mutator.packet(), target)
            except (BlockingIOError, OSError):
                drain(0.01)
            if i % 200 == 199:
                drain(0.002)
            assert time.monotonic() - started < TIME_LIMIT_S
        drain(1.0)
    finally:
        sock.close()
    assert replies > UDP_PACKETS // 4  # most packets got an answer (FORMERR at least)
    for _ in range(TCP_PACKETS // 100):
        with socket.create_connection(("127.0.0.1", d.port), timeout=5) as conn:
            for _ in range(100):
                packet = mutator.packet()
                length = len(packet) if mutator.rng.random() < 0.9 else mutator.rng.randrange(65536)
                conn.sendall(struct.pack("!H", length) + packet[:length])
                if length != len(packet):
                    break  # the framing is now off: the daemon must cope and we move on
        assert time.monotonic() - started < TIME_LIMIT_S
    assert d.proc is not None and d.proc.poll() is None
    assert addresses(ask(d.port, "schoolgate.lan")) == ["10.99.0.2"]
    assert addresses(ask(d.port, "www.facebook.com", tcp=True)) == ["10.99.0.1"]
    wait_for(lambda: ask(d.port, "www.example.test", timeout=2).rcode() == dns.rcode.NOERROR, timeout=40, interval=0.5)
    log = d.log_text()
    assert "Traceback" not in log and "resolver chain failed" not in log, log[-3000:]
    assert d.stop() == 0
