"""Forwarding to the school's upstream resolvers: failover, timeouts, TCP on truncation, health.

Each upstream gets a few connected UDP sockets (the kernel drops datagrams from anyone else)
and every query a fresh random ID; an answer must also repeat our question before it is taken.
An upstream that fails `down_after` times in a row is skipped for a back-off that doubles up to
`max_backoff_s`; when its back-off ends the next query tries it again. The whole forward is
bounded: when no upstream answers within the budget the caller gets UpstreamFailure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from schoolgate.dns.wire import (
    CD,
    EDNS_UDP_SIZE,
    FORMERR,
    HEADER,
    NOTIMP,
    QFIXED,
    QR,
    RD,
    REFUSED,
    SERVFAIL,
    TC,
    edns_opt,
)

log = logging.getLogger(__name__)

SOCKETS_PER_UPSTREAM = 4
_LENGTH = struct.Struct("!H")


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


class _UdpChannel(asyncio.DatagramProtocol):
    """One connected UDP socket to one upstream; matches answers to waiting queries by ID."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.waiting: dict[int, tuple[bytes, asyncio.Future[bytes]]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) < 12:
            return
        ident = (data[0] << 8) | data[1]
        waiter = self.waiting.get(ident)
        if waiter is None:
            return
        question, future = waiter
        # The answer must repeat our question (letter case aside): a blind spoof must guess it too.
        if not data[2] & 0x80 or not same_question(data, question) or future.done():
            return
        del self.waiting[ident]
        future.set_result(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: fail everything waiting so failover is quick.
        for _, future in self.waiting.values():
            if not future.done():
                future.set_exception(UpstreamFailure(str(exc)))
        self.waiting.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


@dataclass
class _Upstream:
    host: str
    port: int
    health: UpstreamHealth
    channels: list[_UdpChannel] = field(default_factory=list)
    next_channel: int = 0


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
        self._upstreams = []
        for text in addresses:
            host, port = parse_address(text)
            label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            self._upstreams.append(_Upstream(host, port, UpstreamHealth(label)))

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for upstream in self._upstreams:
            family = socket.AF_INET6 if ":" in upstream.host else socket.AF_INET
            for _ in range(SOCKETS_PER_UPSTREAM):
                _, protocol = await loop.create_datagram_endpoint(
                    _UdpChannel, remote_addr=(upstream.host, upstream.port), family=family
                )
                upstream.channels.append(protocol)

    def close(self) -> None:
        for upstream in self._upstreams:
            for channel in upstream.channels:
                if channel.transport is not None:
                    channel.transport.close()
            upstream.channels.clear()

    def health(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [u.health.as_dict(now) for u in self._upstreams]

    def _candidates(self) -> list[_Upstream]:
        now = time.monotonic()
        return [u for u in self._upstreams if u.health.down_until <= now]

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
                if answer[3] & 0x0F in (SERVFAIL, REFUSED, NOTIMP, FORMERR):
                    unusable = answer
                    self._failed(upstream, timeout=False)
                    continue
                if (answer[2] << 8) & TC:
                    upstream.health.tcp_queries += 1
                    remaining = deadline - loop.time()
                    answer = await self._tcp(upstream, ident, question, query, max(0.05, remaining))
            except (TimeoutError, UpstreamFailure, OSError) as err:
                self._failed(upstream, timeout=isinstance(err, TimeoutError))
                continue
            self._succeeded(upstream, time.monotonic() - started)
            return answer
        if unusable is not None and unusable[3] & 0x0F == SERVFAIL:
            raise UpstreamFailure("every upstream answered SERVFAIL")
        raise UpstreamFailure("no upstream answered")

    async def _udp(self, upstream: _Upstream, ident: int, question: bytes, query: bytes, timeout: float) -> bytes:
        if not upstream.channels:
            raise UpstreamFailure("pool not started")
        channel = upstream.channels[upstream.next_channel % len(upstream.channels)]
        upstream.next_channel += 1
        if channel.transport is None:
            raise UpstreamFailure("socket closed")
        while ident in channel.waiting:
            ident = secrets.randbits(16)
            query = _LENGTH.pack(ident) + query[2:]
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        channel.waiting[ident] = (question, future)
        try:
            channel.transport.sendto(query)
            async with asyncio.timeout(timeout):
                return await future
        finally:
            if channel.waiting.get(ident, (None, future))[1] is future:
                channel.waiting.pop(ident, None)

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


__all__ = ["EDNS_UDP_SIZE", "UpstreamFailure", "UpstreamHealth", "UpstreamPool", "parse_address", "question_wire"]
