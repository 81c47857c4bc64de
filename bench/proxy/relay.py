"""CPU per passed-through connection, and per MiB copied, in the front door's relays
(proxy/_relay.c's Relays, on the proxy daemon's loop) against a relay of asyncio's own
transports (two Protocols writing to each other, flow control by pause_reading), the rounds
interleaved.

    .venv/bin/python -P bench/proxy/relay.py [--connections 2000] [--mib 256] [--rounds 3]

A device process (this script again, in its `devices` role) opens connections to the relay
one at a time, each sending a ClientHello-sized first message that the echo server (in the
device process) sends back before the device half-closes and reads to the end: a passthrough's
life, as bench/proxy/instructions.py makes it. Then one connection carries `--mib` MiB each way.
What is measured is the relay's process CPU (user and system, from getrusage) from the first
connection to the last, per connection and per MiB: the loop's waits and the kernel's work for
the relay's own system calls included, the devices' and the echo server's CPU not. The relay
dials the echo server itself for each accepted connection and hands the two sockets over, as
the front door does after a PASS (no judging here: bench/proxy/instructions.py has the whole).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import resource
import socket
import subprocess
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]
HELLO = bytes(range(256)) * 2  # a ClientHello's size
CHUNK = 256 * 1024


def cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


# ------------------------------------------------------------------ the devices and the echo server
async def devices(relay_port: int, echo_port: int, connections: int, mib: int) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", echo_port)
    for _ in range(connections):
        reader, writer = await asyncio.open_connection("127.0.0.1", relay_port)
        writer.write(HELLO)
        await reader.readexactly(len(HELLO))
        writer.write_eof()
        await reader.read()
        writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", relay_port)
    block = b"\x5a" * CHUNK

    async def send() -> None:
        for _ in range(mib * 4):
            writer.write(block)
            await writer.drain()
        writer.write_eof()

    sending = asyncio.ensure_future(send())
    received = 0
    while chunk := await reader.read(1 << 20):
        received += len(chunk)
    await sending
    assert received == mib * 1024 * 1024, received
    writer.close()
    server.close()


# ------------------------------------------------------------------ the relays measured
class Half(asyncio.Protocol):
    """One side of asyncio's relay: what it reads is written to the other side's transport."""

    def __init__(self, first: bytes = b"") -> None:
        self.transport: asyncio.Transport | None = None
        self.other: Half | None = None
        self.first = first
        self.finished = False  # its peer has sent its FIN

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.first:
            self.transport.write(self.first)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        assert self.other is not None and self.other.transport is not None
        self.other.transport.write(data)

    def eof_received(self) -> bool:
        assert self.other is not None and self.other.transport is not None
        self.finished = True
        if self.other.finished or self.other.transport.is_closing():
            return False  # both FINs in: this transport closes, and connection_lost closes the other
        self.other.transport.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.close()

    def pause_writing(self) -> None:  # the other side is read no more until this one drains
        assert self.other is not None and self.other.transport is not None
        self.other.transport.pause_reading()  # type: ignore[attr-defined]

    def resume_writing(self) -> None:
        assert self.other is not None and self.other.transport is not None
        self.other.transport.resume_reading()  # type: ignore[attr-defined]


async def relay(kind: str, echo_port: int, connections: int, mib: int) -> tuple[float, float, float, float]:
    """Relay `connections` + 1 connections; (user, system) seconds for the short ones, then for
    the bulk one."""
    from schoolgate.proxy.relay import SplicePoller

    loop = asyncio.get_running_loop()
    poller = SplicePoller(loop)
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 1)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.setblocking(False)
    done = 0
    all_done = loop.create_future()
    marks: list[tuple[float, float]] = []
    tasks: set[asyncio.Task[None]] = set()

    class Token:
        @staticmethod
        def ended(error: int) -> None:
            finished()

    def finished() -> None:
        nonlocal done
        done += 1
        if done == connections:
            marks.append(cpu())
        if done == connections + 1:
            all_done.set_result(None)

    async def serve_python(device: socket.socket, first: bytes) -> None:
        device_side = Half()
        device_transport, _ = await loop.connect_accepted_socket(lambda: device_side, device)
        device_transport.pause_reading()
        server_side = Half(first)
        server_side.other, device_side.other = device_side, server_side
        closed = loop.create_future()
        real_lost = server_side.connection_lost

        def lost(exc: Exception | None) -> None:
            real_lost(exc)
            closed.set_result(None)

        server_side.connection_lost = lost  # type: ignore[method-assign]
        await loop.create_connection(lambda: server_side, "127.0.0.1", echo_port)
        device_transport.resume_reading()
        await closed
        finished()

    def accept() -> None:
        while True:
            try:
                device, _ = listener.accept()
            except BlockingIOError:
                return
            if not marks:
                marks.append(cpu())
            # As the front door: the first bytes are in at the accept (TCP_DEFER_ACCEPT), read
            # without waiting, then sent to the server first.
            first = device.recv(65536, socket.MSG_DONTWAIT)
            if kind == "python":
                task = loop.create_task(serve_python(device, first))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                continue
            device.setblocking(False)
            server = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            assert server.connect_ex(("127.0.0.1", echo_port)) in (0, errno.EINPROGRESS)
            server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            poller.relays.add(device.detach(), server.detach(), first, Token())

    poller.add_reader(listener.fileno(), accept)  # on the daemon's loop: from the loop's one wait
    process = subprocess.Popen(
        [sys.executable, "-P", __file__, "devices", str(listener.getsockname()[1]), str(echo_port), str(connections),
         str(mib)],
    )
    await all_done
    marks.append(cpu())
    if process.wait() != 0:
        raise SystemExit("the devices failed")
    poller.close()
    listener.close()
    (u0, s0), (u1, s1), (u2, s2) = marks
    return u1 - u0, s1 - s0, u2 - u1, s2 - s1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["devices"]:
        relay_port, echo_port, connections, mib = map(int, args[1:5])
        asyncio.run(devices(relay_port, echo_port, connections, mib))
        return 0
    if args[:1] == ["relay"]:  # one measurement, in a process of its own
        from schoolgate.proxy.relay import new_event_loop

        kind, connections, mib = args[1], int(args[2]), int(args[3])
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            print(*runner.run(relay(kind, free_port(), connections, mib)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args(args)
    results: dict[str, list[list[float]]] = {"c": [], "python": []}
    for _ in range(options.rounds):
        for kind, rounds in results.items():  # interleaved: the machine's other load falls on both alike
            done = subprocess.run(
                [sys.executable, "-P", __file__, "relay", kind, str(options.connections), str(options.mib)],
                capture_output=True, text=True, check=True, cwd=CHECKOUT,
            )
            rounds.append([float(value) for value in done.stdout.split()])
    labels = {"c": "proxy/_relay.c's Relays", "python": "asyncio's transports"}
    print(f"{options.connections} passthroughs one at a time, then {options.mib} MiB each way on one; "
          f"median of {options.rounds} rounds")
    for kind, rounds in results.items():
        per = sorted(rounds, key=lambda r: r[0] + r[1])[len(rounds) // 2]
        user, system = (1e6 * value / options.connections for value in per[:2])
        bulk_user, bulk_system = (1e6 * value / options.mib for value in per[2:])
        print(f"  {labels[kind]:<26} per connection: {user:6.1f} us user {system:6.1f} us system;"
              f"  per MiB: {bulk_user:6.1f} us user {bulk_system:6.1f} us system")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
