"""A small authoritative DNS server for the tests (and the benchmark), written with dnslib.

It serves a fixed zone of real-shaped records: A/AAAA, a CNAME chain, HTTPS records carrying
`ech` next to alpn/port/hints, a TXT answer too large for UDP (so truncation and TCP are
exercised), NXDOMAIN with an SOA for negative caching; or, in `synthetic` mode, an A record
for any name (the benchmark's upstream). It listens on UDP and TCP on one loopback port and
can be told to go silent (`down = True`) to simulate an upstream outage.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import struct
import threading
from collections import Counter

from dnslib import AAAA, CNAME, QTYPE, RCODE, RD, RR, SOA, TXT, A, DNSRecord

ZONE_SOA_MINIMUM = 60


def svcb_rdata(priority: int, target: str, params: list[tuple[int, bytes]]) -> bytes:
    """SVCB/HTTPS RDATA in wire form (RFC 9460), params given as (key, value bytes)."""
    out = struct.pack("!H", priority)
    for label in [x for x in target.rstrip(".").split(".") if x]:
        out += bytes([len(label)]) + label.encode()
    out += b"\x00"
    for key, value in sorted(params):
        out += struct.pack("!HH", key, len(value)) + value
    return out


def alpn(*ids: str) -> bytes:
    return b"".join(bytes([len(i)]) + i.encode() for i in ids)


ECH_CONFIG = bytes(range(64)) * 2  # an opaque ECHConfigList stand-in, 128 bytes
HTTPS_PARAMS = [
    (0, struct.pack("!HH", 1, 5)),  # mandatory: alpn, ech
    (1, alpn("h2", "h3")),
    (3, struct.pack("!H", 8443)),
    (4, socket.inet_pton(socket.AF_INET, "192.0.2.50") + socket.inet_pton(socket.AF_INET, "192.0.2.51")),
    (5, ECH_CONFIG),
    (6, socket.inet_pton(socket.AF_INET6, "2001:db8::50")),
]

RECORDS: dict[tuple[str, str], list[tuple[int, object]]] = {
    ("www.example.test", "A"): [(300, A("192.0.2.10"))],
    ("www.example.test", "AAAA"): [(300, AAAA("2001:db8::10"))],
    ("short.example.test", "A"): [(2, A("192.0.2.11"))],
    ("alias.example.test", "CNAME"): [(300, CNAME("www.example.test"))],
    ("sneaky.example.test", "CNAME"): [(300, CNAME("www.facebook.com"))],
    ("facebook.com", "A"): [(300, A("192.0.2.20"))],
    ("www.facebook.com", "A"): [(300, A("192.0.2.21"))],
    ("games.test", "A"): [(3600, A("192.0.2.30"))],
    ("www.google.com", "A"): [(300, A("192.0.2.40"))],
    ("forcesafesearch.google.com", "A"): [(300, A("216.239.38.120"))],
    ("forcesafesearch.google.com", "AAAA"): [(300, AAAA("2001:4860:4802:32::78"))],
    ("safe.duckduckgo.com", "A"): [(300, A("192.0.2.45"))],
    ("video.test", "A"): [(300, A("192.0.2.60")), (300, A("192.0.2.61"))],
    ("video.test", "AAAA"): [(300, AAAA("2001:db8::60"))],
    ("ech.example.test", "HTTPS"): [(300, RD(svcb_rdata(1, ".", HTTPS_PARAMS)))],
    ("ech.example.test", "A"): [(300, A("192.0.2.50"))],
    ("big.example.test", "TXT"): [(300, TXT([f"x{i:03d}" * 60 for i in range(8)]))],
}
ZONES = ("example.test", "facebook.com", "games.test", "google.com", "duckduckgo.com", "video.test", "test")


def _cname_target(name: str) -> str | None:
    for (owner, rtype), rrs in RECORDS.items():
        if owner == name and rtype == "CNAME":
            return str(rrs[0][1].label).rstrip(".")  # type: ignore[attr-defined]
    return None


class Authority:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, synthetic: bool = False) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # UDP and TCP on one port number. With port 0 the kernel picks a free UDP port, whose
        # TCP twin another process on this busy machine may hold: then try another.
        for attempt in range(1 if port else 50):
            self.udp = socket.socket(family, socket.SOCK_DGRAM)
            self.udp.bind((host, port))
            self.port = self.udp.getsockname()[1]
            self.tcp = socket.socket(family, socket.SOCK_STREAM)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self.tcp.bind((host, self.port))
                break
            except OSError:
                self.udp.close()
                self.tcp.close()
                if port or attempt == 49:
                    raise
        self.tcp.listen(64)
        self.host = host
        self.synthetic = synthetic
        self.down = False
        self.queries: Counter[tuple[str, str]] = Counter()
        self.tcp_queries = 0
        self._threads = [
            threading.Thread(target=self._serve_udp, daemon=True),
            threading.Thread(target=self._serve_tcp, daemon=True),
        ]
        self._closed = False

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def start(self) -> Authority:
        for thread in self._threads:
            thread.start()
        return self

    def close(self) -> None:
        self._closed = True
        for sock in (self.udp, self.tcp):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def answer(self, data: bytes, tcp: bool) -> bytes | None:
        try:
            request = DNSRecord.parse(data)
        except Exception:
            return None
        q = request.q
        name = str(q.qname).rstrip(".").lower()
        qtype = QTYPE.get(q.qtype)
        self.queries[(name, qtype)] += 1
        reply = request.reply()
        reply.header.aa = 1
        if self.synthetic:
            if q.qtype == QTYPE.A:
                digest = hashlib.blake2b(name.encode(), digest_size=3).digest()
                reply.add_answer(RR(q.qname, QTYPE.A, ttl=3600, rdata=A("10.{}.{}.{}".format(*digest))))
            return reply.pack()
        found = RECORDS.get((name, qtype))
        target = _cname_target(name)
        if found is None and target is not None:
            reply.add_answer(RR(q.qname, QTYPE.CNAME, ttl=300, rdata=CNAME(target)))
            for ttl, rdata in RECORDS.get((target, qtype), []):
                reply.add_answer(RR(target, q.qtype, ttl=ttl, rdata=rdata))
        elif found is not None:
            for ttl, rdata in found:
                reply.add_answer(RR(q.qname, q.qtype, ttl=ttl, rdata=rdata))
        else:
            exists = any(owner == name for owner, _ in RECORDS)
            if not exists:
                reply.header.rcode = RCODE.NXDOMAIN
            zone = next((z for z in ZONES if name == z or name.endswith("." + z)), "test")
            reply.add_auth(
                RR(
                    zone,
                    QTYPE.SOA,
                    ttl=300,
                    rdata=SOA("ns." + zone, "hostmaster." + zone, (1, 3600, 600, 86400, ZONE_SOA_MINIMUM)),
                )
            )
        wire = reply.pack()
        if not tcp and len(wire) > 1232:
            reply = request.reply()
            reply.header.tc = 1
            wire = reply.pack()
        return wire

    def _serve_udp(self) -> None:
        while not self._closed:
            try:
                data, addr = self.udp.recvfrom(65535)
            except OSError:
                return
            if self.down:
                continue
            wire = self.answer(data, tcp=False)
            if wire is not None:
                with contextlib.suppress(OSError):
                    self.udp.sendto(wire, addr)

    def _serve_tcp(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            threading.Thread(target=self._tcp_conn, args=(conn,), daemon=True).start()

    def _tcp_conn(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                while True:
                    head = conn.recv(2, socket.MSG_WAITALL)
                    if len(head) < 2:
                        return
                    data = conn.recv(struct.unpack("!H", head)[0], socket.MSG_WAITALL)
                    if self.down:
                        return
                    self.tcp_queries += 1
                    wire = self.answer(data, tcp=True)
                    if wire is None:
                        return
                    conn.sendall(struct.pack("!H", len(wire)) + wire)
            except OSError:
                return
