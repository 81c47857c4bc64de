"""The transparent proxy's front door: the ClientHello judged before mitmproxy sees the connection.

Nearly every connection the gateway steers to the proxy is either killed at its SNI or passed
through undecrypted. For those, mitmproxy's connection handler (its layers, its tasks, its
per-connection watchdog) was most of the cost while doing no more than read a ClientHello and
close the socket or copy bytes. Here the front door owns the listening socket and, per connection:

1. reads the original destination (the gateway's redirect: SO_ORIGINAL_DST);
2. tells the schoolgate addons of the client (`client_connected`: who is it);
3. reads the first bytes; if they are a whole ClientHello, gives it to the addons through
   `Pipeline.judge_hello`: the same hooks, the same one judge (`judge_tls` with the policy's
   `decide`), the same events, counters and circumvention and fronting checks as inside
   mitmproxy;
4. kills the connection (a refused verdict), or splices it to the original destination
   (a passthrough: two asyncio protocols copying bytes, with flow control), or hands it to
   mitmproxy (`handover`): a connection to intercept for the block page, plain HTTP, or
   anything the front cannot judge. mitmproxy then runs it exactly as if it had accepted it,
   with the bytes already read put back in front, and the addons are not told twice
   (`Pipeline.adopt`).

Interception concerns (block page, search terms, the upset button) stay in the addons. The
front never decrypts and never dials a server for a connection its verdict does not allow.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mitmproxy import connection
from mitmproxy.net.tls import starts_like_tls_record
from mitmproxy.platform import original_addr
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.tls import get_client_hello

from schoolgate.proxy.addons import EarlyHello, Pipeline

log = logging.getLogger(__name__)

MAX_HELLO = 64 * 1024  # a ClientHello with every extension a browser sends is under 2 KiB
HELLO_WAIT_S = 10.0  # silence after which the connection is left to mitmproxy as it is
CONNECT_TIMEOUT_S = 15.0
ACCEPT_BATCH = 64  # connections accepted per wake-up of the listening socket
ACCEPT_PAUSE_S = 1.0  # out of file descriptors: stop accepting this long (as asyncio does)
WRITE_HIGH_WATER = 256 * 1024
# A spliced connection with no byte either way for this long is closed, as mitmproxy closed
# an idle relay: a device that vanished without a FIN must not hold two sockets for ever.
SPLICE_IDLE_S = 600.0
IDLE_SWEEP_S = 30.0

Handover = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """Where the client was going before the gateway's `redirect` sent it here (mitmproxy's
    own reading of SO_ORIGINAL_DST, which it uses for the connections handed to it)."""
    if original_addr is None:
        raise OSError("transparent mode needs Linux (SO_ORIGINAL_DST)")
    host, port = original_addr(sock)
    return str(host), int(port)


def listen_sockets(listen: str, *, reuse_port: bool) -> list[socket.socket]:
    """Listening sockets for `host:port` (`*:port` or `:port`: IPv4 and IPv6). With
    `reuse_port`, several workers listen on the same address and the kernel shares the
    connections among them (SO_REUSEPORT)."""
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]")
    port = int(port_text)
    if host in ("", "*"):
        if socket.has_dualstack_ipv6():
            addresses = [("::", socket.AF_INET6, True)]
        else:
            addresses = [("0.0.0.0", socket.AF_INET, False)]
    else:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        addresses = [(host, family, False)]
    sockets = []
    for address, family, dualstack in addresses:
        sock = socket.create_server(
            (address, port), family=family, backlog=1024, reuse_port=reuse_port, dualstack_ipv6=dualstack
        )
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


class _Splice(asyncio.Protocol):
    """One direction's reader of a spliced connection: what it receives goes to `peer`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Splice | None = None
        self.eof = False
        self.closed: asyncio.Future[None] = loop.create_future()
        self._loop = loop
        self.last_active = loop.time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        self.last_active = self._loop.time()
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is None or peer.transport is None or peer.eof:
            return False  # both sides done: close
        if peer.transport.can_write_eof():
            peer.transport.write_eof()  # half-close, as a TCP relay should
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            peer.transport.close()  # flushes what is buffered first
        if not self.closed.done():
            self.closed.set_result(None)

    # Flow control: when this side's buffer is full, stop reading from the other side.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class FrontDoor:
    """Accepts the redirected connections and judges, kills, splices or hands each over."""

    def __init__(
        self,
        pipeline: Pipeline,
        handover: Handover,
        options: Any,
        mode: Any,
        *,
        destination: Callable[[socket.socket], tuple[str, int]] = original_destination,
    ) -> None:
        self.pipeline = pipeline
        self._handover = handover
        self._destination = destination  # tests on loopback give their own
        self._options = options
        self._mode = mode  # mitmproxy's proxy mode, on each Client as mitmproxy would set it
        self._sockets: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        # conn id -> (client transport, server transport, its two halves)
        self._splices: dict[str, tuple[asyncio.Transport, asyncio.Transport, _Splice, _Splice]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self.accepted = 0
        self.killed = 0
        self.spliced = 0
        self.handed_over = 0
        self.accept_errors = 0
        self.idle_closed = 0

    # ------------------------------------------------------------------ listening
    def start(self, sockets: list[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        self._sockets = sockets
        for sock in sockets:
            loop.add_reader(sock.fileno(), self._accept, sock)
        self._sweeper = loop.call_later(IDLE_SWEEP_S, self._sweep_idle)

    def listen_addrs(self) -> list[Any]:
        return [sock.getsockname() for sock in self._sockets if sock.fileno() >= 0]

    def stop(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(sock.fileno())
            sock.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for client, server, _up, _down in list(self._splices.values()):
            client.abort()
            server.abort()
        for task in list(self._tasks):
            task.cancel()

    def snapshot(self) -> dict[str, int]:
        """The front door's counters, for the proxy's status."""
        return {
            "accepted": self.accepted,
            "killed": self.killed,
            "spliced": self.spliced,
            "splices_open": len(self._splices),
            "handed_over": self.handed_over,
            "accept_errors": self.accept_errors,
            "idle_closed": self.idle_closed,
        }

    def close(self, conn_id: str) -> bool:
        """Close a spliced connection (its verdict now blocks); False if it is not the front's."""
        found = self._splices.get(conn_id)
        if found is None:
            return False
        found[0].abort()
        found[1].abort()
        return True

    def _sweep_idle(self) -> None:
        loop = asyncio.get_running_loop()
        quiet_since = loop.time() - SPLICE_IDLE_S
        for client, server, up, down in list(self._splices.values()):
            if max(up.last_active, down.last_active) < quiet_since:
                self.idle_closed += 1
                client.abort()
                server.abort()
        self._sweeper = loop.call_later(IDLE_SWEEP_S, self._sweep_idle)

    def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                self.accept_errors += 1
                if err.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: waiting is all that helps; the backlog keeps the rest.
                    log.error("cannot accept connections (%s); pausing for %.0f s", err, ACCEPT_PAUSE_S)
                    loop.remove_reader(listener.fileno())
                    loop.call_later(ACCEPT_PAUSE_S, self._resume_accepting, listener)
                    return
                log.warning("accepting a connection failed: %s", err)
                continue
            sock.setblocking(False)
            self.accepted += 1
            task = loop.create_task(self._serve(sock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _resume_accepting(self, listener: socket.socket) -> None:
        if listener.fileno() >= 0:
            asyncio.get_running_loop().add_reader(listener.fileno(), self._accept, listener)

    # ------------------------------------------------------------------ one connection
    async def _serve(self, sock: socket.socket) -> None:
        try:
            peer = sock.getpeername()
            destination = self._destination(sock)
        except (OSError, struct.error) as err:  # gone already, or not redirected (someone dialled the port itself)
            log.debug("dropping a connection without an original destination: %s", err)
            sock.close()
            return
        client = connection.Client(
            peername=peer,
            sockname=destination,
            timestamp_start=time.time(),
            proxy_mode=self._mode,
            state=connection.ConnectionState.OPEN,
        )
        context = Context(client, self._options)
        context.server.address = destination
        handed_over = False
        try:
            await self.pipeline.client_connected(client)
            data = await self._first_bytes(sock)
            verdict = self.pipeline.judge_hello(context, data) if data else EarlyHello.REFUSE
            if verdict is EarlyHello.PASS:
                await self._splice(client, sock, destination, data)
            elif verdict is EarlyHello.REFUSE:
                self.killed += bool(data)
            else:
                handed_over = True
                self.handed_over += 1
                self.pipeline.adopt(peer, client.id)
                await self._hand_over(sock, data)
        except Exception:
            log.exception("the front door failed on a connection from %s", peer)
        finally:
            # A connection mitmproxy took is ended by it (its client_disconnected); one it
            # refused before telling the addons (no original destination) is ended here.
            if not handed_over or self.pipeline.forget_adoption(peer):
                sock.close()
                self.pipeline.client_disconnected(client)

    async def _first_bytes(self, sock: socket.socket) -> bytes:
        """The client's first bytes: a whole ClientHello, or whatever came before it was clear
        that none is coming (not TLS, unparsable, the client closed, or HELLO_WAIT_S of silence)."""
        loop = asyncio.get_running_loop()
        data = b""
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(HELLO_WAIT_S):
                while len(data) < MAX_HELLO:
                    chunk = await loop.sock_recv(sock, MAX_HELLO - len(data))
                    if not chunk:
                        break
                    data += chunk
                    if len(data) < 3 or not starts_like_tls_record(data):
                        if len(data) >= 3 or data[:1] != b"\x16":
                            break
                        continue
                    try:  # all in? (the pipeline parses it)
                        if get_client_hello(data) is not None:
                            break
                    except ValueError:
                        break
        return data

    async def _splice(self, client: connection.Client, sock: socket.socket, destination: tuple[str, int],
                      hello: bytes) -> None:
        loop = asyncio.get_running_loop()
        upstream = _Splice(loop)
        downstream = _Splice(loop)
        upstream.peer, downstream.peer = downstream, upstream
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                server_transport, _ = await loop.create_connection(lambda: upstream, destination[0], destination[1])
        except (OSError, TimeoutError) as err:
            log.debug("passthrough to %s failed: %s", destination, err)
            return
        server_transport.write(hello)
        try:
            client_transport, _ = await loop.connect_accepted_socket(lambda: downstream, sock)
        except OSError:
            server_transport.abort()
            return
        self.spliced += 1
        self._splices[client.id] = (client_transport, server_transport, upstream, downstream)
        try:
            # Either side's end closes the other (after flushing what it holds for it).
            await asyncio.wait((upstream.closed, downstream.closed))
        finally:
            self._splices.pop(client.id, None)
            client_transport.abort()
            server_transport.abort()

    async def _hand_over(self, sock: socket.socket, data: bytes) -> None:
        """mitmproxy takes the connection as if it had accepted it, the bytes read put back."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**16)
        if data:
            reader.feed_data(data)
        protocol = asyncio.StreamReaderProtocol(reader)
        transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        await self._handover(reader, writer)
