"""CPU per accepted connection in the proxy's front door: its accept steps in Python (as
FrontDoor._accept, _begin and _read_hello make them) against proxy/_accept.c's accept_batch.

    .venv/bin/python -P bench/proxy/accept.py [--connections 4000] [--rounds 5] [--inflight 1 16]
    .venv/bin/python -P bench/proxy/accept.py --instructions 100 5100

Run as root: the connections are redirected as the gateway redirects a device's (an nftables
`redirect` in a network namespace of this script's own, removed at the end), so SO_ORIGINAL_DST
answers as on the appliance. A device process (this script again, in its `devices` role) opens
connections to the redirected ports, each sending a real ClientHello, keeping up to `inflight`
open until the front closes them. The front's process accepts each connection, reads its
original destination and its first bytes, and closes it (a connection killed at its SNI, less
the judging), in one of three ways, the rounds interleaved:

- python: the front door's steps before accept_batch (listener._accept(), a socket object,
  mitmproxy's original_addr, recv(MAX_HELLO, MSG_DONTWAIT), close);
- compiled: accept_batch, then os.close of each descriptor;
- compiled+socket: accept_batch, then a socket object made round each descriptor and closed
  (what a caller that still wants a socket object for every connection would pay).

What is measured is the front's process CPU (time.process_time) from the first connection to
the last, per connection: the wake-ups' select() and the kernel's work for the front's own
system calls included (its closes' FINs delivered on loopback among them), the devices' CPU
not. With --instructions, callgrind counts the front's user-space instructions instead (the
kernel's share of a system call is not counted): a figure a busy machine does not move. The
listener is the front door's own (`listen_sockets`), on 127.0.0.1 (IPv4) and on `*`
(dual-stack, as `*:port` listens: the Python path then asks mitmproxy's original_addr, which
calls getsockname() first).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import select
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mitmproxy.platform import original_addr

from schoolgate.lab.hello import client_hello
from schoolgate.proxy._accept import accept_batch
from schoolgate.proxy.front import ACCEPT_BATCH, MAX_HELLO, listen_sockets

CHECKOUT = Path(__file__).resolve().parents[2]
FIRST_PORT = 9441  # the ports the devices dial, each redirected to the front's listener
PORTS = 8  # several: a device's ports are reused sooner than any one destination's would allow


def devices(count: int, inflight: int) -> None:
    """Open `count` connections, each sending a ClientHello; wait for the front to close each."""
    hello = client_hello("www.facebook.com")
    open_connections: collections.deque[socket.socket] = collections.deque()
    for n in range(count):
        sock = socket.create_connection(("127.0.0.1", FIRST_PORT + n % PORTS))
        sock.sendall(hello)
        open_connections.append(sock)
        while len(open_connections) >= inflight:
            oldest = open_connections.popleft()
            oldest.recv(1)  # the front's close
            oldest.close()
    for sock in open_connections:
        sock.recv(1)
        sock.close()


Handler = Callable[[socket.socket], int]


def python_steps(listener: socket.socket) -> int:
    """The front door's accept loop, original destination and first read as they were in Python."""
    family = listener.family
    served = 0
    for _ in range(ACCEPT_BATCH):
        try:
            fd, _peer = listener._accept()  # type: ignore[attr-defined]
        except (BlockingIOError, InterruptedError):
            break
        sock = socket.socket(family, socket.SOCK_STREAM, 0, fd)
        try:
            original_addr(sock)
        except (OSError, struct.error):
            sock.close()
            raise SystemExit("a connection without its original destination: the redirect is not in place") from None
        try:
            chunk = sock.recv(MAX_HELLO, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            chunk = None
        except ConnectionError:
            chunk = b""
        if not chunk:
            raise SystemExit("a connection's ClientHello was not in at accept")
        sock.close()
        served += 1
    return served


def compiled(listener: socket.socket) -> int:
    connections, _stopped_by, _skipped = accept_batch(listener.fileno(), ACCEPT_BATCH, MAX_HELLO, True)
    for fd, _peer, destination, data in connections:
        if destination is None or not data:
            raise SystemExit("a connection without its destination or its ClientHello")
        os.close(fd)
    return len(connections)


def compiled_with_socket(listener: socket.socket) -> int:
    family = listener.family
    connections, _stopped_by, _skipped = accept_batch(listener.fileno(), ACCEPT_BATCH, MAX_HELLO, True)
    for fd, _peer, destination, data in connections:
        if destination is None or not data:
            raise SystemExit("a connection without its destination or its ClientHello")
        socket.socket(family, socket.SOCK_STREAM, 0, fd).close()
    return len(connections)


HANDLERS: dict[str, Handler] = {"python": python_steps, "compiled": compiled, "compiled+socket": compiled_with_socket}


def round_of(listener: socket.socket, handler: Handler, count: int, inflight: int) -> tuple[float, int]:
    """CPU seconds for `count` connections, and the wake-ups they took."""
    device = subprocess.Popen([sys.executable, "-P", __file__, "devices", str(count), str(inflight)], cwd=CHECKOUT)
    served = wakeups = 0
    started = time.process_time()
    while served < count:
        readable, _, _ = select.select([listener], [], [], 60)
        if not readable:
            device.kill()
            raise SystemExit("the devices stopped connecting")
        wakeups += 1
        served += handler(listener)
    cpu = time.process_time() - started
    if device.wait(timeout=60) != 0:
        raise SystemExit("the devices failed")
    return cpu, wakeups


def redirected_listener(listen: str) -> socket.socket:
    """The front door's listening socket, with the devices' ports redirected to it (in place of
    any redirect before)."""
    (listener,) = listen_sockets(listen, reuse_port=False)
    port = listener.getsockname()[1]
    rules = "\n".join(f"    tcp dport {FIRST_PORT + n} redirect to :{port}" for n in range(PORTS))
    ruleset = (f"table inet sgbench\ndelete table inet sgbench\n"
               f"table inet sgbench {{\n  chain out {{\n    type nat hook output priority -100\n{rules}\n  }}\n}}\n")
    subprocess.run(["nft", "-f", "-"], input=ruleset, text=True, check=True)
    return listener


def serve_one(name: str, listen: str, count: int) -> None:
    """One round of one handler, for callgrind to count (the devices run outside valgrind)."""
    listener = redirected_listener(listen)
    round_of(listener, HANDLERS[name], count, 1)
    print(f"handled {count}")


def instructions(namespace: str, name: str, listen: str, count: int) -> int:
    """User-space instructions callgrind counted in the front's process for `count` connections."""
    with tempfile.TemporaryDirectory(prefix="sg-callgrind-") as folder:
        done = subprocess.run(
            ["ip", "netns", "exec", namespace, "valgrind", "--tool=callgrind", "--cache-sim=no",
             f"--callgrind-out-file={folder}/out", sys.executable, "-P", __file__, "serve-one", name, listen,
             str(count)],
            capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"}, check=False, cwd=CHECKOUT,
        )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None or f"handled {count}" not in done.stdout:
        raise SystemExit(f"the front run failed:\n{done.stdout}\n{done.stderr[-2000:]}")
    return int(found.group(1))


def serve(count: int, rounds: int, inflights: list[int]) -> None:
    """Inside the namespace: for each listener and inflight, interleaved rounds of each handler
    (after one round of each not counted: the caches and the allocator warmed)."""
    for listen in ("127.0.0.1:0", "*:0"):
        listener = redirected_listener(listen)
        kind = "dual-stack" if listener.family == socket.AF_INET6 else "IPv4"
        for inflight in inflights:
            for handler in HANDLERS.values():
                round_of(listener, handler, count // 4, inflight)
            results: dict[str, list[tuple[float, int]]] = {name: [] for name in HANDLERS}
            for _ in range(rounds):
                for name, handler in HANDLERS.items():
                    results[name].append(round_of(listener, handler, count, inflight))
            print(f"\nlistener {listen.split(':')[0]} ({kind}), devices keeping up to {inflight} open,"
                  f" {count} connections x {rounds} rounds (median, then each round):")
            reference = None
            for name, rows in results.items():
                per = [cpu / count * 1e6 for cpu, _ in rows]
                median = statistics.median(per)
                reference = reference or median
                per_wakeup = count * rounds / sum(wakeups for _, wakeups in rows)
                print(f"  {name:16} {median:6.2f} us CPU/connection ({', '.join(f'{p:.2f}' for p in per)});"
                      f" {median / reference:.2f} of python's; {per_wakeup:.1f} connections per wake-up")
        listener.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=4000, help="per round")
    parser.add_argument("--rounds", type=int, default=5, help="of each way, interleaved")
    parser.add_argument("--instructions", type=int, nargs=2, metavar=("FEW", "MANY"),
                        help="instead: user-space instructions per connection, counted by callgrind in runs of"
                             " FEW and MANY connections, one at a time (the difference is the connections' own)")
    parser.add_argument("--inflight", type=int, nargs="+", default=[1, 16],
                        help="connections a device keeps open at once (1: one per wake-up, as when lightly loaded)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root: the connections are redirected in a network namespace of this script's own")
        return 1
    namespace = f"sgbench-accept{os.getpid()}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        for setting in ("net.ipv4.ip_local_port_range=1024 65535", "net.ipv4.tcp_tw_reuse=1"):
            subprocess.run(["ip", "netns", "exec", namespace, "sysctl", "-qw", setting], check=True)
        subprocess.run(["ip", "netns", "exec", namespace, "ip", "link", "set", "lo", "up"], check=True)
        if args.instructions:
            from schoolgate.lab.packages import ensure_programs

            if ensure_programs({"valgrind": "valgrind"}):
                return 2
            few, many = args.instructions
            for listen in ("127.0.0.1:0", "*:0"):
                print(f"\nlistener {listen.split(':')[0]}, one connection at a time:")
                for name in HANDLERS:
                    low, high = instructions(namespace, name, listen, few), instructions(namespace, name, listen, many)
                    print(f"  {name:16} {(high - low) / (many - few):8,.0f} user-space instructions per connection"
                          f" ({few} and {many} connections: {low:,} and {high:,})", flush=True)
        else:
            subprocess.run(
                ["ip", "netns", "exec", namespace, sys.executable, "-P", __file__, "serve", str(args.connections),
                 str(args.rounds), *map(str, args.inflight)],
                check=True, cwd=CHECKOUT,
            )
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["devices"]:
        devices(int(sys.argv[2]), int(sys.argv[3]))
    elif sys.argv[1:2] == ["serve-one"]:
        serve_one(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif sys.argv[1:2] == ["serve"]:
        serve(int(sys.argv[2]), int(sys.argv[3]), [int(n) for n in sys.argv[4:]])
    else:
        sys.exit(main())
