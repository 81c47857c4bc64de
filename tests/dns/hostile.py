"""A hostile upstream resolver for the fuzz tests: every answer it gives is made to hurt.

For each query it builds a real answer of a randomly chosen shape (addresses, a CNAME to a
blocked name, a long CNAME chain, an HTTPS record carrying ECH, NXDOMAIN with an SOA, a TXT
too large for UDP, a pile of additional records, an error code), then mutates it with a
seeded `Mutator` while keeping the ID and the question, so that most answers pass the
resolver's checks and reach its parsers. Some queries first get a datagram of noise or an
answer to another question, as a spoofer would send. Over TCP the length prefix may lie
or the connection may close half way. `honest = True` turns it into a plain resolver.
"""

from __future__ import annotations

import base64
import contextlib
import random
import socket
import struct
import threading

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from mutator import Mutator

_ECH_CONFIG = b"\xfe\x0d" + (120).to_bytes(2, "big") + bytes(range(120))  # version, length, contents
ECH = len(_ECH_CONFIG).to_bytes(2, "big") + _ECH_CONFIG  # an ECHConfigList holding it
UDP_LIMIT = 1232


def _rrset(name: dns.name.Name, ttl: int, rdtype: str, *texts: str) -> dns.rrset.RRset:
    return dns.rrset.from_text_list(name, ttl, dns.rdataclass.IN, rdtype, list(texts))


def honest_answer(query: dns.message.Message, shape: str, rng: random.Random | None = None) -> dns.message.Message:
    """A well-formed answer of `shape` to `query`."""
    reply = dns.message.make_response(query)
    reply.flags |= dns.flags.AA | dns.flags.RA
    qname = query.question[0].name
    qtype = query.question[0].rdtype
    if shape == "addresses":
        if qtype == dns.rdatatype.AAAA:
            reply.answer.append(_rrset(qname, 300, "AAAA", "2001:db8::1", "2001:db8::2"))
        else:
            reply.answer.append(_rrset(qname, 300, "A", "192.0.2.1", "192.0.2.2", "192.0.2.3"))
    elif shape == "blocked_alias":
        target = dns.name.from_text("www.facebook.com")
        reply.answer.append(_rrset(qname, 300, "CNAME", target.to_text()))
        reply.answer.append(_rrset(target, 300, "A", "192.0.2.21"))
    elif shape == "chain":
        owner = qname
        for n in range(12):
            nxt = dns.name.from_text(f"c{n}", qname)
            reply.answer.append(_rrset(owner, 60 + n, "CNAME", nxt.to_text()))
            owner = nxt
        reply.answer.append(_rrset(owner, 30, "A", "192.0.2.9"))
    elif shape == "https":
        ech = base64.b64encode(ECH).decode()
        reply.answer.append(
            _rrset(qname, 300, "HTTPS", f'1 . alpn="h2,h3" port=8443 ipv4hint=192.0.2.50 ech="{ech}"')
        )
    elif shape == "nxdomain":
        reply.set_rcode(dns.rcode.NXDOMAIN)
        zone = qname.parent() if len(qname) > 2 else qname
        reply.authority.append(_rrset(zone, 300, "SOA", f"ns.{zone} hostmaster.{zone} 1 3600 600 86400 60"))
    elif shape == "big":
        reply.answer.append(_rrset(qname, 300, "TXT", *(f'"{"x" * 200}{n}"' for n in range(12))))
    elif shape == "additional":
        reply.answer.append(_rrset(qname, 300, "A", "192.0.2.7"))
        for n in range(20):
            reply.additional.append(_rrset(dns.name.from_text(f"ns{n}.example.test"), 300, "AAAA", f"2001:db8::{n}"))
    else:  # an error code
        errors = [dns.rcode.SERVFAIL, dns.rcode.REFUSED, dns.rcode.FORMERR, dns.rcode.NOTIMP]
        reply.set_rcode((rng or random).choice(errors))
    return reply


SHAPES = ("addresses", "blocked_alias", "chain", "https", "nxdomain", "big", "additional", "error")


class HostileUpstream:
    def __init__(self, seed: int, host: str = "127.0.0.1") -> None:
        self.mutator = Mutator([], seed)
        self.rng = self.mutator.rng
        self.lock = threading.Lock()  # one thread at a time draws from the seeded generator
        for _ in range(50):  # one port for UDP and TCP: the kernel's UDP pick may be taken for TCP
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self.udp.bind((host, 0))
            self.port = self.udp.getsockname()[1]
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self.tcp.bind((host, self.port))
                break
            except OSError:
                self.udp.close()
                self.tcp.close()
        else:
            raise RuntimeError("no port free for both UDP and TCP")
        self.tcp.listen(64)
        self.address = f"{host}:{self.port}"
        self.honest = False
        self.answered = 0
        self.tcp_answered = 0
        self.source_ports: list[int] = []
        self._closed = False
        self._threads = [threading.Thread(target=self._serve_udp, daemon=True),
                         threading.Thread(target=self._serve_tcp, daemon=True)]

    def start(self) -> HostileUpstream:
        for thread in self._threads:
            thread.start()
        return self

    def close(self) -> None:
        self._closed = True
        for sock in (self.udp, self.tcp):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _answers(self, data: bytes, tcp: bool) -> list[bytes]:
        """What to send back for one query: noise first sometimes, then the (mutated) answer."""
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return []
        if not query.question:
            return []
        with self.lock:
            shape = "addresses" if self.honest else self.rng.choice(SHAPES)
            wire = honest_answer(query, shape, self.rng).to_wire(max_size=65535)
            if not tcp and len(wire) > UDP_LIMIT:
                truncated = dns.message.make_response(query)
                truncated.flags |= dns.flags.TC
                wire = truncated.to_wire()
            if self.honest:
                return [wire]
            keep = 12 + len(query.question[0].name.to_wire()) + 4
            out: list[bytes] = []
            roll = self.rng.random()
            if roll < 0.1:
                out.append(self.rng.randbytes(self.rng.randint(0, 600)))  # noise from a spoofer
            elif roll < 0.2:
                other = dns.message.make_query(f"other{self.rng.randrange(99)}.example.test", "A")
                other.id = query.id
                out.append(honest_answer(other, "addresses").to_wire())  # the right ID, another question
            out.append(wire if self.rng.random() < 0.15 else self.mutator.answer(wire, keep))
            return out

    def _serve_udp(self) -> None:
        while not self._closed:
            try:
                data, addr = self.udp.recvfrom(65535)
            except OSError:
                return
            if addr is None:  # shut down
                return
            self.source_ports.append(addr[1])
            for wire in self._answers(data, tcp=False):
                with contextlib.suppress(OSError):
                    self.udp.sendto(wire[:65507], addr)
            self.answered += 1

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
                head = conn.recv(2, socket.MSG_WAITALL)
                if len(head) < 2:
                    return
                data = conn.recv(struct.unpack("!H", head)[0], socket.MSG_WAITALL)
                for wire in self._answers(data, tcp=True):
                    with self.lock:
                        roll = 1.0 if self.honest else self.rng.random()
                        wrong = self.rng.randrange(65536)
                    if roll < 0.05:
                        conn.sendall(struct.pack("!H", wrong) + wire)  # a length that lies
                    elif roll < 0.1:
                        conn.sendall(struct.pack("!H", len(wire)) + wire[: len(wire) // 2])  # cut short
                        return
                    else:
                        conn.sendall(struct.pack("!H", len(wire)) + wire)
                self.tcp_answered += 1
            except OSError:
                return
