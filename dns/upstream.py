"""Forwarding to the school's upstream resolvers: failover, timeouts, TCP on truncation, health.

Every query goes out on a UDP socket of its own, bound to a source port drawn at random for
it and connected to the upstream (the kernel drops datagrams from anyone else), with a fresh
random ID (RFC 5452): someone on the LAN who wants to poison the cache must guess the port
and the ID, about 31 bits, for each query, instead of an ID for one of a few sockets that
live as long as the daemon. An answer must also repeat our question before it is taken.
An upstream that fails `down_after` times in a row is skipped for a back-off that doubles up to
`max_backoff_s`; when its back-off ends the next query tries it again. When every upstream is
resting, the one whose rest ends first is asked anyway, so a resting upstream that answers again
is used at once. The whole forward is
bounded: when no upstream answers within the budget the caller gets UpstreamFailure.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import secrets
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from schoolgate.dns.wire import (
    CD,
    EDNS_UDP_SIZE,
    HEADER,
    NOERROR,
    NXDOMAIN,
    QFIXED,
    QR,
    RD,
    SERVFAIL,
    TC,
    edns_opt,
)

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("!H")
# An answer to a query is NOERROR or NXDOMAIN; any other code (SERVFAIL, REFUSED, and the
# ones that make no sense here) is no answer: the next upstream is tried.
_USABLE = (NOERROR, NXDOMAIN)


class UpstreamFailure(Exception):
    pass


def parse_address(text: str, default_port: int = 53) -> tuple[str, int]:
    """'1.2.3.4', '1.2.3.4:53', '[::1]:53' or '::1' -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    else:
        host, port = text, default_port
    if not 0 < port < 65536:
        raise ValueError(f"bad port in {text!r}")
    socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    return host, port


@dataclass
class UpstreamHealth:
    address: str
    successes: int = 0
    failures: int = 0
    timeouts: int = 0
    consecutive_failures: int = 0
    last_rtt_ms: float | None = None
    down_until: float = 0.0  # monotonic
    backoff_s: float = 0.0
    tcp_queries: int = 0

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "address": self.address,
            "successes": self.successes,
            "failures": self.failures,
            "timeouts": self.timeouts,
            "last_rtt_ms": None if self.last_rtt_ms is None else round(self.last_rtt_ms, 2),
            "down": self.down_until > now,
            "retry_in_s": round(max(0.0, self.down_until - now), 1),
            "tcp_queries": self.tcp_queries,
        }


def local_port_range(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> tuple[int, int]:
    """The ports the system hands out for outgoing connections (Linux's default if unknown)."""
    try:
        with open(path, encoding="ascii") as f:
            low, high = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        return 32768, 60999
    if not 1024 <= low <= high <= 65535:
        return 32768, 60999
    return low, high


def reserved_ports(path: str = "/proc/sys/net/ipv4/ip_local_reserved_ports") -> frozenset[int]:
    """Ports the administrator keeps out of the outgoing range ("8080,9000-9010")."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except OSError:
        return frozenset()
    ports: set[int] = set()
    for item in filter(None, text.split(",")):
        low, _, high = item.partition("-")
        with contextlib.suppress(ValueError):
            ports.update(range(int(low), int(high or low) + 1))
    return frozenset(ports)


class SourcePorts:
    """Draws a source port for each query, uniformly from the system's outgoing range.

    The outgoing range (``ip_local_port_range``, less ``ip_local_reserved_ports``) is what the
    administrator set aside for this, so a query never takes a port a local service listens
    on. A port in use is drawn again; after a few misses the kernel picks one (also at random).
    """

    ATTEMPTS = 8

    def __init__(self, low: int | None = None, high: int | None = None, reserved: frozenset[int] | None = None,
                 randbelow: Callable[[int], int] = secrets.randbelow) -> None:
        system_low, system_high = local_port_range()
        self.low = system_low if low is None else low
        self.high = system_high if high is None else high
        self.reserved = reserved_ports() if reserved is None else reserved
        self._randbelow = randbelow
        self.collisions = 0  # draws that found the port taken
        self.kernel_chosen = 0  # sockets left to the kernel after ATTEMPTS misses

    def draw(self) -> int:
        while True:
            port = self.low + self._randbelow(self.high - self.low + 1)
            if port not in self.reserved:
                return port

    def open(self, host: str, port: int) -> socket.socket:
        """A non-blocking UDP socket on a random source port, connected to (host, port)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            any_address = "::" if family == socket.AF_INET6 else "0.0.0.0"
            for _ in range(self.ATTEMPTS):
                try:
                    sock.bind((any_address, self.draw()))
                    break
                except OSError as err:
                    if err.errno not in (errno.EADDRINUSE, errno.EACCES):
                        raise
                    self.collisions += 1
            else:
                self.kernel_chosen += 1
                sock.bind((any_address, 0))
            sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        return sock


@dataclass
class _Upstream:
    host: str
    port: int
    health: UpstreamHealth


class UpstreamPool:
    def __init__(
        self,
        addresses: list[str],
        timeout_s: float = 1.5,
        budget_s: float | None = None,
        down_after: int = 3,
        max_backoff_s: float = 30.0,
    ) -> None:
        if not addresses:
            raise ValueError("at least one upstream is needed")
        self.timeout_s = timeout_s
        self.budget_s = budget_s if budget_s is not None else min(2 * timeout_s, 4.0)
        self.down_after = down_after
        self.max_backoff_s = max_backoff_s
        self.ports = SourcePorts()
        self._running = False
        self._upstreams = []
        for text in addresses:
            host, port = parse_address(text)
            label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            self._upstreams.append(_Upstream(host, port, UpstreamHealth(label)))

    async def start(self) -> None:
        """Ready to forward (each query opens its own socket, so there is nothing to open here)."""
        self._running = True

    def close(self) -> None:
        self._running = False

    def health(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [u.health.as_dict(now) for u in self._upstreams]

    def _candidates(self) -> list[_Upstream]:
        now = time.monotonic()
        awake = [u for u in self._upstreams if u.health.down_until <= now]
        if awake:
            return awake
        # Every upstream is resting. Failing every query until a rest ends would cut a school
        # with one upstream off the internet for up to max_backoff_s after a short glitch, so the
        # one whose rest ends first is still asked: its answer ends the rest at once.
        return [min(self._upstreams, key=lambda u: u.health.down_until)]

    def _failed(self, upstream: _Upstream, timeout: bool) -> None:
        health = upstream.health
        health.failures += 1
        health.timeouts += int(timeout)
        health.consecutive_failures += 1
        if health.consecutive_failures >= self.down_after:
            health.backoff_s = min(self.max_backoff_s, max(1.0, health.backoff_s * 2))
            health.down_until = time.monotonic() + health.backoff_s
            log.warning("upstream %s marked down for %.0f s", health.address, health.backoff_s)

    def _succeeded(self, upstream: _Upstream, rtt: float) -> None:
        health = upstream.health
        if health.down_until:
            log.info("upstream %s answers again", health.address)
        health.successes += 1
        health.consecutive_failures = 0
        health.backoff_s = 0.0
        health.down_until = 0.0
        health.last_rtt_ms = rtt * 1000

    async def resolve(self, question: bytes, flags: int, dnssec_ok: bool) -> bytes:
        """Ask the upstreams `question` (name, type, class in wire form, lower-case).

        Returns the upstream's answer bytes (with its OPT record, if any), or raises UpstreamFailure.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.budget_s
        unusable: bytes | None = None
        for upstream in self._candidates():
            remaining = deadline - loop.time()
            if remaining <= 0.01:
                break
            ident = secrets.randbits(16)
            query = (
                HEADER.pack(ident, (flags & CD) | RD, 1, 0, 0, 1) + question + edns_opt(dnssec_ok)
            )
            started = time.monotonic()
            try:
                answer = await self._udp(upstream, ident, question, query, min(self.timeout_s, remaining))
                if (answer[2] << 8) & TC and answer[3] & 0x0F in _USABLE:
                    upstream.health.tcp_queries += 1
                    remaining = deadline - loop.time()
                    answer = await self._tcp(upstream, ident, question, query, max(0.05, remaining))
                if answer[3] & 0x0F not in _USABLE:  # over UDP or TCP alike
                    unusable = answer
                    self._failed(upstream, timeout=False)
                    continue
            except (TimeoutError, UpstreamFailure, OSError, EOFError) as err:  # EOFError: a TCP answer cut short
                self._failed(upstream, timeout=isinstance(err, TimeoutError))
                continue
            self._succeeded(upstream, time.monotonic() - started)
            return answer
        if unusable is not None and unusable[3] & 0x0F == SERVFAIL:
            raise UpstreamFailure("every upstream answered SERVFAIL")
        raise UpstreamFailure("no upstream answered")

    async def _udp(self, upstream: _Upstream, ident: int, question: bytes, query: bytes, timeout: float) -> bytes:
        if not self._running:
            raise UpstreamFailure("pool not started")
        loop = asyncio.get_running_loop()
        sock = self.ports.open(upstream.host, upstream.port)
        future: asyncio.Future[bytes] = loop.create_future()

        def readable() -> None:
            while not future.done():
                try:
                    data = sock.recv(65535)
                except BlockingIOError:
                    return
                except OSError as err:
                    # ICMP port unreachable and the like: fail at once so failover is quick.
                    future.set_exception(UpstreamFailure(str(err)))
                    return
                # The answer must carry our ID and repeat our question (letter case aside).
                if len(data) >= 12 and (data[0] << 8 | data[1]) == ident and data[2] & 0x80 \
                        and same_question(data, question):
                    future.set_result(data)

        fd = sock.fileno()
        loop.add_reader(fd, readable)
        try:
            sock.send(query)
            async with asyncio.timeout(timeout):
                return await future
        finally:
            loop.remove_reader(fd)
            sock.close()

    async def _tcp(self, upstream: _Upstream, ident: int, question: bytes, query: bytes, timeout: float) -> bytes:
        # Over TCP the answer may be large; advertise nothing smaller than it needs.
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(upstream.host, upstream.port)
            try:
                writer.write(_LENGTH.pack(len(query)) + query)
                await writer.drain()
                while True:
                    (length,) = _LENGTH.unpack(await reader.readexactly(2))
                    data = await reader.readexactly(length)
                    if (
                        len(data) >= 12
                        and (data[0] << 8 | data[1]) == ident
                        and data[2] & (QR >> 8)
                        and same_question(data, question)
                    ):
                        return data
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()


def same_question(answer: bytes, question: bytes) -> bool:
    """Does the answer repeat our question? Names compare without letter case; type and class exactly."""
    end = 12 + len(question)
    return answer[12 : end - 4].lower() == question[:-4] and answer[end - 4 : end] == question[-4:]


def question_wire(qname_wire: bytes, qtype: int, qclass: int) -> bytes:
    return qname_wire + QFIXED.pack(qtype, qclass)


__all__ = [
    "EDNS_UDP_SIZE",
    "SourcePorts",
    "UpstreamFailure",
    "UpstreamHealth",
    "UpstreamPool",
    "parse_address",
    "question_wire",
]
