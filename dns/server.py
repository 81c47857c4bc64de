"""UDP and TCP listeners that feed the resolver chain.

UDP reads are drained in a tight loop from one reader callback (no per-datagram protocol
objects); answers that are ready at once are sent from the same callback. Only upstream
fetches become tasks. A query that the chain cannot handle (a bug, never a client's fault)
is answered SERVFAIL and counted: nothing a packet contains may stop the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from schoolgate.dns._datagrams import receive as receive_datagrams
from schoolgate.dns._datagrams import send as send_datagrams
from schoolgate.dns.chain import Answer, Stage
from schoolgate.dns.fastpath import FastAnswer
from schoolgate.dns.upstream import parse_address
from schoolgate.dns.wire import (
    PLAIN_UDP_SIZE,
    Drop,
    Query,
    QueryError,
    error_reply,
    parse_query,
    servfail,
    truncated,
)

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("!H")
READ_BATCH = 64
TCP_IDLE_S = 10.0
TCP_MAX_CONNECTIONS = 256


@dataclass
class Counters:
    queries: int = 0
    dropped: int = 0
    refused: int = 0  # queries answered FORMERR, NOTIMP, REFUSED or BADVERS
    internal_errors: int = 0
    truncated: int = 0
    tcp_queries: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _client_ip(addr: Any) -> str:
    host = str(addr[0])
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host.split("%", 1)[0]


def bind_socket(address: str, kind: int, reuse_port: bool) -> socket.socket:
    host, port = parse_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_DGRAM:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class QueryHandler:
    """Runs one query through the chain; shared by the UDP and TCP listeners.

    A UDP query goes to the fast path first (`fast`, schoolgate.dns.fastpath: a blocked name or
    a cache hit answered in one call; the UDP listener takes it per wake-up from `drain`), and
    to the chain when that declines it.
    """

    def __init__(
        self, chain: Stage, fast: FastAnswer | None = None, drain: Callable[[], FastAnswer] | None = None
    ) -> None:
        self.chain = chain
        self.fast = fast
        # The fast path for one wake-up's datagrams (FastPath.drain: one clock reading, policy
        # and identity per client for all of them); without it, `fast` answers each alone.
        self.drain = drain
        self.counters = Counters()
        self.tasks: set[asyncio.Task[None]] = set()

    def handle(self, data: bytes, client_ip: str, tcp: bool) -> Answer | Awaitable[Answer]:
        if self.fast is not None and not tcp:
            answer = self.try_fast(data, client_ip)
            if answer is not None:
                self.counters.queries += 1
                return answer
        return self.through_chain(data, client_ip, tcp)

    def try_fast(self, data: bytes, client_ip: str) -> bytes | None:
        """The fast path's answer, or None for the chain to answer."""
        fast = self.fast
        if fast is None:
            return None
        try:
            answer: bytes | None = fast(data, client_ip)
        except Exception:
            # Never the client's fault: the chain answers (SERVFAIL if it fails the same way).
            log.exception("the fast path failed for a query from %s", client_ip)
            return None
        return answer

    def through_chain(self, data: bytes, client_ip: str, tcp: bool) -> Answer | Awaitable[Answer]:
        counters = self.counters
        counters.queries += 1
        try:
            query = parse_query(data)
        except Drop:
            counters.dropped += 1
            return None
        except QueryError as err:
            counters.refused += 1
            return error_reply(err, data)
        query.client_ip = client_ip
        query.tcp = tcp
        try:
            result = self.chain.resolve(query)
        except Exception:
            counters.internal_errors += 1
            log.exception("resolver chain failed for %s", query.qname)
            return servfail(query)
        if isinstance(result, bytes | bytearray):  # the common case: answered at once
            # Any answer fits a plain UDP reply's 512 bytes: the client's size is read only
            # for a longer one.
            if len(result) > PLAIN_UDP_SIZE and len(result) > query.max_size:
                counters.truncated += 1
                return truncated(query)
            return result
        if result is None:
            return None
        return self._finish(query, result)

    async def _finish(self, query: Query, pending: Awaitable[Answer]) -> Answer:
        try:
            answer = await pending
        except Exception:
            self.counters.internal_errors += 1
            log.exception("resolver chain failed for %s", query.qname)
            return servfail(query)
        return self.fit(query, answer)

    def fit(self, query: Query, answer: Answer) -> Answer:
        if answer is not None and len(answer) > query.max_size:
            self.counters.truncated += 1
            return truncated(query)
        return answer


class UdpListener:
    def __init__(self, sock: socket.socket, handler: QueryHandler) -> None:
        self.sock = sock
        self.handler = handler
        self.loop = asyncio.get_running_loop()
        self._fd = sock.fileno()

    def start(self) -> None:
        self.loop.add_reader(self._fd, self._readable)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self._fd)
        self.sock.close()

    def _readable(self) -> None:
        # Per wake-up: the waiting datagrams in one system call (up to READ_BATCH); per datagram
        # the fast path (a blocked name or a cache hit, answered in one call), else the chain;
        # the answers ready are sent together at the end, in one system call (dns/_datagrams.c),
        # and those that wait for upstream when it answers.
        try:
            datagrams = receive_datagrams(self._fd, READ_BATCH)
        except OSError as err:
            log.debug("udp receive error: %s", err)
            return
        handler = self.handler
        counters = handler.counters
        fast = handler.fast if handler.drain is None else handler.drain()
        through_chain = handler.through_chain
        replies: list[tuple[bytes, bytes]] = []
        for data, client_ip, sender in datagrams:
            result: Answer | Awaitable[Answer] = None
            try:
                result = fast(data, client_ip) if fast is not None else None
            except Exception:
                # Never the client's fault: the chain answers (SERVFAIL if it fails the same way).
                log.exception("the fast path failed for a query from %s", client_ip)
            if result is not None:
                counters.queries += 1
            else:
                try:
                    result = through_chain(data, client_ip, False)
                except Exception:
                    counters.internal_errors += 1
                    log.exception("udp query handling failed")
                    continue
                if result is None:
                    continue
            if isinstance(result, bytes):
                replies.append((result, sender))
            elif isinstance(result, bytearray):
                replies.append((bytes(result), sender))
            else:
                task = self.loop.create_task(self._later(result, sender))
                handler.tasks.add(task)
                task.add_done_callback(handler.tasks.discard)
        if replies:
            self._send(replies)

    async def _later(self, pending: Awaitable[Answer], sender: bytes) -> None:
        answer = await pending
        if answer is not None:
            self._send([(bytes(answer), sender)])

    def _send(self, replies: list[tuple[bytes, bytes]]) -> None:
        try:
            sent, failed = send_datagrams(self._fd, replies)
        except OSError as err:
            log.debug("udp send failed: %s", err)
            return
        if sent + failed < len(replies):
            log.debug("udp socket buffer full: %d answers not sent (the clients will retry)",
                      len(replies) - sent - failed)


class TcpListener:
    """DNS over TCP (RFC 7766): length-prefixed messages, several per connection, idle timeout."""

    def __init__(self, sock: socket.socket, handler: QueryHandler) -> None:
        self.sock = sock
        self.handler = handler
        self.server: asyncio.Server | None = None
        self.connections = 0

    async def start(self) -> None:
        self.sock.listen(128)
        self.server = await asyncio.start_server(self._serve, sock=self.sock)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        else:
            self.sock.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= TCP_MAX_CONNECTIONS:
            writer.close()
            return
        self.connections += 1
        peer = writer.get_extra_info("peername")
        client_ip = _client_ip(peer) if peer else ""
        try:
            while True:
                try:
                    async with asyncio.timeout(TCP_IDLE_S):
                        (length,) = _LENGTH.unpack(await reader.readexactly(2))
                        data = await reader.readexactly(length)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return
                self.handler.counters.tcp_queries += 1
                result = self.handler.handle(data, client_ip, True)
                if result is not None and not isinstance(result, bytes | bytearray):
                    result = await result
                if result is None:
                    continue
                writer.write(_LENGTH.pack(len(result)) + result)
                await writer.drain()
        except (ConnectionError, OSError):
            return
        except Exception:
            self.handler.counters.internal_errors += 1
            log.exception("tcp connection from %s failed", client_ip)
        finally:
            self.connections -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
