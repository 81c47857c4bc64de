"""The transparent proxy's front door: the ClientHello judged before mitmproxy sees the connection.

Nearly every connection the gateway steers to the proxy is either killed at its SNI or passed
through undecrypted. For those, mitmproxy's connection handler (its layers, its tasks, its
per-connection watchdog) was most of the cost while doing no more than read a ClientHello and
close the socket or copy bytes. Here the front door owns the listening socket and, per connection:

1. accepts it, reads its original destination (the gateway's redirect: SO_ORIGINAL_DST) and
   its first bytes, for every connection of a wake-up in one compiled call (proxy/_accept.c);
   a device identified lately whose ClientHello's name decides a kill is killed there, and one
   whose ClientHello is passed is spliced there (as in step 4), each by the same judge, with
   the same event, counters and connection state, without mitmproxy's objects or the hooks
   (proxy/door_verdicts.py);
2. tells the schoolgate addons of the client (`client_connected`: who is it);
3. if the first bytes are a whole ClientHello, gives it to the addons through
   `Pipeline.judge_hello_first`: the same hooks, the same one judge (`judge_tls` with the
   policy's `decide`), the same events, counters and circumvention and fronting checks as
   inside mitmproxy; the members that only record (the event log, the counters) are told once
   step 4 is done, so that neither the device nor the server waits for an event being built;
4. kills the connection (a refused verdict), or splices it to the original destination
   (a passthrough: the server dialled here, then both sockets handed to the splice poller's
   compiled relays, schoolgate.proxy.relay and proxy/_relay.c, which copy their bytes with flow
   control until both sides have finished; Python hears of it again only when it has ended, to
   tell the addons), or hands it to mitmproxy (`handover`): a connection to intercept for
   the block page, plain HTTP, or anything the front cannot judge. mitmproxy then runs it
   exactly as if it had accepted it, with the bytes already read put back in front, and the
   addons are not told twice (`Pipeline.adopt`).

A killed or spliced connection costs no task and no future: it is read, judged and carried out
from the loop's readiness callbacks (in the accept callback itself when its ClientHello is in
by then), with one timer while it waits for its first bytes; a spliced one's bytes never reach
Python. The relays' sweeps (idle splices, dials the server never answered) are one periodic
call each into the relays, not a timer per connection. Only a connection that waits for
an identity lookup off the loop (a client not seen in the last seconds), or that mitmproxy
takes, gets a task.

Interception concerns (block page, search terms, the upset button) stay in the addons. The
front never decrypts and never dials a server for a connection its verdict does not allow.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from mitmproxy import connection
from mitmproxy.net.tls import starts_like_tls_record
from mitmproxy.proxy.context import Context

from schoolgate.proxy._accept import accept_batch
from schoolgate.proxy.addons import EarlyHello, Pipeline
from schoolgate.proxy.door_verdicts import DoorPass, DoorVerdicts, Moment
from schoolgate.proxy.hello import FastClientHello, parse_client_hello
from schoolgate.proxy.relay import Relay, SplicePoller

if TYPE_CHECKING:
    from schoolgate.proxy._accept import Accepted  # a name of the stub (proxy/_accept.pyi) alone

log = logging.getLogger(__name__)

MAX_HELLO = 64 * 1024  # a ClientHello with every extension a browser sends is under 2 KiB
HELLO_WAIT_S = 10.0  # silence after which the connection is left to mitmproxy as it is
ACCEPT_BATCH = 64  # connections accepted per wake-up of the listening socket (accept_batch's most)
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
ACCEPT_PAUSE_S = 1.0  # out of file descriptors: stop accepting this long (as asyncio does)
# The kernel hands over a connection once its first bytes are in (TCP_DEFER_ACCEPT), so nearly
# every one is judged in the accept callback: no reader, no timer, one wake-up fewer. A client
# silent this long is handed over anyway (then HELLO_WAIT_S applies): web clients speak first.
DEFER_ACCEPT_S = 1
# A spliced connection with no byte either way for this long is closed, as mitmproxy closed
# an idle relay: a device that vanished without a FIN must not hold two sockets for ever.
SPLICE_IDLE_S = 600.0
IDLE_SWEEP_S = 30.0
# A passthrough whose server has not answered its dial in this long is closed. The dials are
# checked together every DIAL_CHECK_S while any is outstanding, rather than each with a timer
# of its own (made, then cancelled when the server answers a moment later, and left in the
# loop's heap until then: 2.5% of a passthrough's instructions).
CONNECT_TIMEOUT_S = 15.0
DIAL_CHECK_S = 1.0
_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)

Handover = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


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
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_ACCEPT_S)
        # Inherited by every accepted socket: a spliced device gets no Nagle delay (as on
        # asyncio's transports) without a system call of its own.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


def hello_ready(data: bytes) -> tuple[bool, FastClientHello | None]:
    """Whether the first bytes `data` are all the front door waits for (a whole ClientHello, or
    enough to see that none is coming: not TLS, or not a ClientHello mitmproxy could read), and
    the ClientHello if they are one: parsed here once, and judged as it is."""
    if len(data) >= MAX_HELLO:
        return True, None
    if len(data) < 3 or not starts_like_tls_record(data):
        return len(data) >= 3 or data[:1] != b"\x16", None
    try:
        hello = parse_client_hello(data)
    except ValueError:
        return True, None  # the pipeline finds it unparsable too: mitmproxy's TLS layer refuses it
    return hello is not None, hello


# A new Server's attributes, but its address and id: every default is an immutable value.
_SERVER_DEFAULTS = dict(vars(connection.Server(address=None, id="")))


def new_server(address: tuple[str, int], conn_id: str) -> connection.Server:
    """`connection.Server(address=address, id=conn_id)`, the same object, made without its
    generated __init__: that sets each of its twenty attributes through Server.__setattr__'s
    check, a twentieth of a killed connection's CPU (tests hold the two to be equal)."""
    server: connection.Server = connection.Server.__new__(connection.Server)
    attributes = server.__dict__
    attributes.update(_SERVER_DEFAULTS)
    attributes["address"] = address
    attributes["id"] = conn_id
    return server


class _Hello:
    """A connection whose first bytes are being read."""

    __slots__ = ("client", "complete", "context", "data", "parsed", "sock", "timer")

    def __init__(self, sock: socket.socket, client: connection.Client, context: Context) -> None:
        self.sock = sock
        self.client = client
        self.context = context
        self.data = b""
        self.complete = False  # the data is all the front door waits for (hello_ready)
        self.parsed: FastClientHello | None = None  # their ClientHello, once complete
        self.timer: asyncio.TimerHandle | None = None  # set while the loop waits for more


def _receive(sock: socket.socket, size: int) -> bytes | None:
    """What the client has sent, up to `size` bytes, without waiting: None if nothing yet, b""
    once it has closed (or reset: as if it had closed). Other errors are raised."""
    try:
        return sock.recv(size, socket.MSG_DONTWAIT)  # the socket blocks (FrontDoor._accept)
    except (BlockingIOError, InterruptedError):
        return None
    except ConnectionError:
        return b""


class FrontDoor:
    """Accepts the redirected connections and judges, kills, splices or hands each over."""

    loop: asyncio.AbstractEventLoop  # the running loop, from start()
    splices: SplicePoller  # the spliced sockets' readiness, from start()

    def __init__(
        self,
        pipeline: Pipeline,
        handover: Handover,
        options: Any,
        mode: Any,
        *,
        destination: Callable[[socket.socket], tuple[str, int]] | None = None,
        verdicts: DoorVerdicts | None = None,
    ) -> None:
        self.pipeline = pipeline
        # Kills judged here or remembered from this minute, and passes judged here, without the hooks.
        self._verdicts = verdicts
        self._handover = handover
        # Where each connection was going: None, the gateway's redirect (SO_ORIGINAL_DST, read
        # with the accept); tests on loopback, where nothing was redirected, give their own.
        self._destination = destination
        self._options = options
        self._mode = mode  # mitmproxy's proxy mode, on each Client as mitmproxy would set it
        self._sockets: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._relays: dict[str, Relay] = {}  # conn id -> its splice
        self._waiting: dict[int, _Hello] = {}  # socket fd -> a connection waiting for its first bytes
        self._sweeper: asyncio.TimerHandle | None = None
        self._dial_check: asyncio.TimerHandle | None = None
        # Connection ids: unique in this process, as mitmproxy's own (uuid4 text) are; a counter
        # costs nothing, where two uuid4s (the client's and its server's) cost a killed connection
        # a few percent of its CPU.
        self._serials = itertools.count(1)
        self.accepted = 0
        self.judged_at_accept = 0  # decided in the accept callback: its first bytes were in
        self.killed = 0
        self.handed_over = 0
        self.accept_errors = 0
        self.idle_closed = 0

    # ------------------------------------------------------------------ listening
    def start(self, sockets: list[socket.socket]) -> None:
        loop = self.loop = asyncio.get_running_loop()
        self.splices = SplicePoller(loop)
        # The listening sockets' readiness: from the loop's one wait with the splices' where they
        # share it (no Handle per accepting wake-up), else the loop's own reader.
        self._listening: SplicePoller | asyncio.AbstractEventLoop = (
            self.splices if self.splices.shares_loop_wait else loop
        )
        self._sockets = sockets
        for sock in sockets:
            self._listening.add_reader(sock.fileno(), self._accept, sock, sock.family)
        self._sweeper = loop.call_later(IDLE_SWEEP_S, self._sweep_idle)

    def listen_addrs(self) -> list[Any]:
        return [sock.getsockname() for sock in self._sockets if sock.fileno() >= 0]

    def stop(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(ValueError, OSError):
                self._listening.remove_reader(sock.fileno())
            sock.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._dial_check is not None:
            self._dial_check.cancel()
        for relay in list(self._relays.values()):
            relay.close()
        self.splices.close()
        for hello in list(self._waiting.values()):
            self._stop_waiting(hello)
            self._end(hello.sock, hello.client)
        for task in list(self._tasks):
            task.cancel()

    def snapshot(self) -> dict[str, int]:
        """The front door's counters, for the proxy's status."""
        return {
            "accepted": self.accepted,
            "judged_at_accept": self.judged_at_accept,
            "killed": self.killed,
            "spliced": self.spliced,
            "splices_open": len(self._relays),
            "handed_over": self.handed_over,
            "accept_errors": self.accept_errors,
            "idle_closed": self.idle_closed,
            "killed_judged_at_door": self._verdicts.judged if self._verdicts is not None else 0,
            "killed_from_memory": self._verdicts.replayed if self._verdicts is not None else 0,
            "passed_at_door": self._verdicts.passed if self._verdicts is not None else 0,
            # 1: the spliced sockets are in the loop's own epoll (one wait per wake-up)
            "splices_in_loop_wait": int(getattr(self, "splices", None) is not None and self.splices.shares_loop_wait),
        }

    def close(self, conn_id: str) -> bool:
        """Close a spliced connection (its verdict now blocks); False if it is not the front's."""
        relay = self._relays.get(conn_id)
        if relay is None:
            return False
        relay.close()
        return True

    @property
    def spliced(self) -> int:
        """Passthroughs whose ClientHello was sent to the server (counted by the relays)."""
        splices: SplicePoller | None = getattr(self, "splices", None)
        return splices.relays.spliced if splices is not None else 0

    def _sweep_idle(self) -> None:
        closed = self.splices.relays.close_idle(SPLICE_IDLE_S)
        self.idle_closed += len(closed)
        self.splices.ended([(relay, 0) for relay in closed])
        self._sweeper = self.loop.call_later(IDLE_SWEEP_S, self._sweep_idle)

    def _watch_dial(self) -> None:
        if self._dial_check is None:
            self._dial_check = self.loop.call_later(DIAL_CHECK_S, self._check_dials)

    def _check_dials(self) -> None:
        """Close the relays whose server has not answered in CONNECT_TIMEOUT_S; check again
        while any is still dialling."""
        relays = self.splices.relays
        overdue = relays.close_overdue_dials(CONNECT_TIMEOUT_S)
        for relay in overdue:
            log.debug("passthrough to %s: no answer in time", relay.destination)
        self.splices.ended([(relay, 0) for relay in overdue])
        self._dial_check = self.loop.call_later(DIAL_CHECK_S, self._check_dials) if relays.dialling else None

    def _accept(self, listener: socket.socket, family: socket.AddressFamily) -> None:
        # One compiled call (proxy/_accept.c) accepts what waits, with each connection's original
        # destination and first bytes (TCP_DEFER_ACCEPT: nearly always its whole ClientHello):
        # per connection, a socket object, the getsockopt and the recv in Python were as much
        # again as killing a repeat from memory. A socket object is made only for a connection
        # judged the whole way (a splice at the door hands its bare descriptor to the relays);
        # the new descriptors are left blocking (no ioctl): the door and the relays read and send
        # with MSG_DONTWAIT, and only a connection handed over to mitmproxy is made non-blocking.
        connections, stopped_by, skipped = accept_batch(
            listener.fileno(), ACCEPT_BATCH, MAX_HELLO, self._destination is None
        )
        self.accept_errors += skipped  # their accept failed for themselves alone: gone
        if connections:
            self.accepted += len(connections)
            moment = self._verdicts.moment() if self._verdicts is not None else None  # before any is judged
            for accepted in connections:
                self._begin(accepted, family, moment)
        if stopped_by:
            self.accept_errors += 1
            error = OSError(stopped_by, os.strerror(stopped_by))
            if stopped_by in _OUT_OF_RESOURCES:
                # Out of descriptors: waiting is all that helps; the backlog keeps the rest.
                log.error("cannot accept connections (%s); pausing for %.0f s", error, ACCEPT_PAUSE_S)
                self._listening.remove_reader(listener.fileno())
                self.loop.call_later(ACCEPT_PAUSE_S, self._resume_accepting, listener)
            else:
                log.warning("accepting a connection failed: %s", error)

    def _resume_accepting(self, listener: socket.socket) -> None:
        if listener.fileno() >= 0:
            self._listening.add_reader(listener.fileno(), self._accept, listener, listener.family)

    # ------------------------------------------------------------------ one connection
    def _begin(self, accepted: Accepted, family: socket.AddressFamily, moment: Moment | None) -> None:
        """A new connection (its descriptor, peer, original destination and first bytes, as
        accept_batch gives them): a kill its name decides killed here (proxy/door_verdicts.py); any
        other connection's client told to the addons, then judged."""
        fd, peer, destination, first = accepted
        sock = None
        if destination is None:
            if self._destination is None:  # the kernel has none: someone dialled the port itself
                log.debug("dropping a connection from %s without an original destination", peer)
                os.close(fd)
                return
            sock = socket.socket(family, socket.SOCK_STREAM, 0, fd)
            try:
                destination = self._destination(sock)
            except (OSError, struct.error) as err:
                log.debug("dropping a connection from %s: %s", peer, err)
                sock.close()
                return
        complete, parsed = (False, None) if first is None else hello_ready(first)
        if moment is not None and parsed is not None and parsed.sni:
            verdict = self._verdicts.judge(moment, peer, parsed.sni, destination)  # type: ignore[union-attr]
            if isinstance(verdict, DoorPass):
                self._pass_at_door(sock if sock is not None else fd, verdict, destination,
                                   first)  # type: ignore[arg-type]  # first: a hello
                return
            if verdict is not None:
                if sock is None:
                    os.close(fd)
                else:
                    sock.close()
                self.killed += 1
                self.judged_at_accept += 1
                self.pipeline.relayed_early += 1
                self._verdicts.replay(verdict, moment)  # type: ignore[union-attr]
                return
        if sock is None:
            sock = socket.socket(family, socket.SOCK_STREAM, 0, fd)
        client, context = self._connection(peer, destination)
        hello = _Hello(sock, client, context)
        if first is not None:
            hello.data = first
            hello.complete = complete or not first
            hello.parsed = parsed
        try:
            pending = self.pipeline.begin_client(client)
        except Exception:
            log.exception("the front door failed on a connection from %s", peer)
            self._end(sock, client)
            return
        if pending is None:
            if hello.complete:
                self.judged_at_accept += 1
                self._decide(hello)
            else:
                self._wait(hello)
        else:  # an identity lookup off the loop first (the client was not seen lately)
            self._spawn(self._identified(hello, pending))

    async def _identified(self, hello: _Hello, pending: Awaitable[None]) -> None:
        try:
            await pending
        except Exception:
            log.exception("the front door failed on a connection from %s", hello.client.peername)
            self._end(hello.sock, hello.client)
            return
        if hello.complete:
            self._decide(hello)
        else:
            self._read_hello(hello)

    def _read_hello(self, hello: _Hello) -> None:
        """Read what the client has sent since; decide once it is all the front waits for (a
        whole ClientHello, or clearly none), else wait for more, up to HELLO_WAIT_S of silence
        in all (then decide on what came)."""
        try:
            chunk = _receive(hello.sock, MAX_HELLO - len(hello.data))
        except OSError as err:
            log.debug("connection from %s ended early: %s", hello.client.peername, err)
            self._stop_waiting(hello)
            self._end(hello.sock, hello.client)
            return
        if chunk is not None:
            hello.data += chunk
            hello.complete, hello.parsed = hello_ready(hello.data)
            if not chunk or hello.complete:
                self._stop_waiting(hello)
                self._decide(hello)
                return
        self._wait(hello)

    def _wait(self, hello: _Hello) -> None:
        """From now on the loop says when more came (the first wait only)."""
        if hello.timer is None:
            sock = hello.sock
            self._waiting[sock.fileno()] = hello
            self.loop.add_reader(sock.fileno(), self._read_hello, hello)
            hello.timer = self.loop.call_later(HELLO_WAIT_S, self._hello_timed_out, hello)

    def _hello_timed_out(self, hello: _Hello) -> None:
        hello.timer = None
        self._stop_waiting(hello)
        hello.parsed = None  # decided on what came: not a whole ClientHello
        self._decide(hello)

    def _stop_waiting(self, hello: _Hello) -> None:
        if self._waiting.pop(hello.sock.fileno(), None) is not None:
            self.loop.remove_reader(hello.sock.fileno())
        if hello.timer is not None:
            hello.timer.cancel()
            hello.timer = None

    def _connection(self, peer: Any, destination: tuple[str, int]) -> tuple[connection.Client, Context]:
        """mitmproxy's Client and Context for the addons' hooks, as mitmproxy would build them
        for an accepted connection, with the original destination as the server's address."""
        serial = next(self._serials)
        client = connection.Client(
            id=f"front-{serial}",
            peername=peer,
            sockname=destination,
            timestamp_start=time.time(),
            proxy_mode=self._mode,
            state=connection.ConnectionState.OPEN,
        )
        # Context.__init__ would make a server of its own (with a uuid4) only for us to replace
        # its address: the same attributes, set once (tests hold them to Context's own).
        context = Context.__new__(Context)
        context.client = client
        context.options = self._options
        context.server = new_server(destination, f"front-{serial}-server")
        context.layers = []
        return client, context

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _decide(self, hello: _Hello) -> None:
        """Judge the first bytes (and their ClientHello, if they are one) and carry the verdict
        out: kill, splice or hand over."""
        sock, client, context, data = hello.sock, hello.client, hello.context, hello.data
        parsed = hello.parsed
        observe = None
        try:
            verdict, observe = (
                self.pipeline.judge_hello_first(context, data, parsed) if data else (EarlyHello.REFUSE, None)
            )
            # The verdict is carried out first, then the event logged and counted: the device
            # learns of its kill, and the server of its connection, without waiting for either.
            if verdict is EarlyHello.REFUSE:
                self.killed += bool(data)
                sock.close()
                if observe is not None:
                    observe()
                self.pipeline.client_disconnected(client)
            elif verdict is EarlyHello.PASS:
                destination = context.server.address
                assert destination is not None  # the original destination, from _connection
                relay = Relay(self, client.id, sock, client)
                self._relays[client.id] = relay
                dialled = relay.connect(destination, data)
                if observe is not None:
                    observe()
                if dialled:
                    self._watch_dial()
                else:
                    relay.close()
            else:
                if observe is not None:
                    observe()
                self.handed_over += 1
                self.pipeline.adopt(client.peername, client.id)
                self._spawn(self._hand_over(sock, client, data))
        except Exception:
            log.exception("the front door failed on a connection from %s", client.peername)
            self._end(sock, client)

    def _pass_at_door(
        self, device: socket.socket | int, door_pass: DoorPass, destination: tuple[str, int], hello: bytes
    ) -> None:
        """Splice a connection its judgement at the door passes (`device`: its socket, or its
        descriptor, for which no socket object is made), as `_decide` does one the addons pass,
        then log and count it as they would (DoorVerdicts.replay_pass)."""
        conn_id = f"front-{next(self._serials)}"
        relay = Relay(self, conn_id, device)
        self._relays[conn_id] = relay
        try:
            dialled = relay.connect(destination, hello)
            self.judged_at_accept += 1
            self.pipeline.relayed_early += 1
            self._verdicts.replay_pass(door_pass, conn_id)  # type: ignore[union-attr]
        except Exception:
            log.exception("the front door failed on a connection from %s", door_pass.client.ip)
            relay.close()
            return
        if dialled:
            self._watch_dial()
        else:
            relay.close()

    def _end(self, sock: socket.socket, client: connection.Client) -> None:
        sock.close()
        self.pipeline.client_disconnected(client)

    def _relay_closed(self, relay: Relay) -> None:
        self._relays.pop(relay.conn_id, None)
        if relay.client is not None:
            self.pipeline.client_disconnected(relay.client)
        elif self._verdicts is not None:
            self._verdicts.pass_ended(relay.conn_id)

    async def _hand_over(self, sock: socket.socket, client: connection.Client, data: bytes) -> None:
        """mitmproxy takes the connection as if it had accepted it, the bytes read put back."""
        try:
            reader = asyncio.StreamReader(limit=2**16)
            if data:
                reader.feed_data(data)
            protocol = asyncio.StreamReaderProtocol(reader)
            transport, _ = await self.loop.connect_accepted_socket(lambda: protocol, sock)
            writer = asyncio.StreamWriter(transport, protocol, reader, self.loop)
            await self._handover(reader, writer)
        except Exception:
            log.exception("handing a connection from %s to mitmproxy failed", client.peername)
        finally:
            # A connection mitmproxy took is ended by it (its client_disconnected); one it
            # refused before telling the addons (no original destination) is ended here.
            if self.pipeline.forget_adoption(client.peername):
                self._end(sock, client)
