"""Instructions per killed or passed-through connection in the proxy's front door, counted by
callgrind: a figure that a shared, noisy machine does not move.

    .venv/bin/python -P bench/proxy/instructions.py [--kind kill|kill-new|kill-judged|pass|all] [--counts 100 700]

The lab benchmark (bench/proxy/run.py) measures CPU time per connection from /proc against
Squid in the same run; on a machine that others are using its runs spread by 10-30%, more than
most single changes to the front door move it. Here the front door runs on loopback with the
real addons and the tests' policy (tests/proxy/policy.toml), under valgrind's callgrind, while
a device process outside valgrind (this script again, in its `devices` role) opens connections
one at a time: each ClientHello is killed at the SNI (a pupil, Facebook) or spliced to a local
echo server (staff, an allowed site), which it sends back before the device half-closes and
reads to the end. `kill-new` names a new Facebook name on every connection (n1.www.facebook.com,
n2...): each is judged at the door, none is a repeat. The same run is made with two numbers of
connections, so that the difference is the connections' own cost, free of the interpreter's
start-up and imports. One at a time, every connection has the loop's wake-ups of its own, as on
a lightly loaded appliance.

What is counted is user-space instructions in the proxy's process (the kernel's share of a
system call is not); `strace -c -f -p PID` on the lab's proxy counts the system calls.
PYTHONHASHSEED is fixed, yet a run can still differ from the last by a few thousand
instructions per connection (once by half: when the garbage collector runs is not fixed), so
compare two runs of each side. Each takes a minute or two, mostly the imports under valgrind.
Installs valgrind (Debian's) where it is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from schoolgate.lab.hello import client_hello

CHECKOUT = Path(__file__).resolve().parents[2]
POLICY = CHECKOUT / "tests" / "proxy" / "policy.toml"
WHEN = datetime(2026, 11, 18, 11, 0, tzinfo=UTC)  # a Wednesday in term: the pupil is in a lesson
FACEBOOK = "198.51.100.10"
SNI = {"kill": "www.facebook.com", "kill-new": "n{index}.www.facebook.com", "pass": "allowed.test"}
# What is measured: (the devices' connections, whether the front door remembers this minute's
# kills as the daemon's does, the label). The device repeats one connection, so with the table
# every kill but the first is a repeat killed from memory; without it each is judged the whole
# way, as a device's first attempt at a site in a minute is.
KINDS = {
    "kill": ("kill", True, "killed at the SNI, a repeat (from memory)"),
    "kill-new": ("kill-new", True, "killed at the SNI, a new name each (at the door)"),
    "kill-judged": ("kill", False, "killed at the SNI, judged the whole way"),
    "pass": ("pass", True, "passed through (spliced)"),
}


async def devices(proxy_port: int, origin_port: int, kind: str, count: int) -> None:
    """The devices, one connection at a time, and the echo server a passthrough reaches."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", origin_port)
    hello = client_hello(SNI[kind])
    for index in range(count):
        if "{index}" in SNI[kind]:
            hello = client_hello(SNI[kind].format(index=index))
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
        writer.write(hello)
        await writer.drain()
        try:
            if kind == "pass":
                await reader.readexactly(len(hello))
                writer.write_eof()
            await reader.read()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # a kill may reset the connection
        writer.close()
    server.close()


async def front_door(kind: str, count: int, remember: bool) -> dict[str, int]:
    """The front door with the real pipeline until `count` devices are done."""
    from mitmproxy import options
    from mitmproxy.proxy.mode_specs import ProxyMode

    from schoolgate.policy.engine import decide
    from schoolgate.policy.loader import load_policy
    from schoolgate.policy.types import Client, Role
    from schoolgate.proxy.addons import Pipeline, Services, build_addons
    from schoolgate.proxy.addresses import AddressBook
    from schoolgate.proxy.allowed import AllowedPasses
    from schoolgate.proxy.door_verdicts import DoorVerdicts
    from schoolgate.proxy.front import FrontDoor, listen_sockets

    policy = load_policy(POLICY)
    who = Client(ip="127.0.0.1", device_id="BENCH-1", person_id="bench", trusts_school_ca=False,
                 role=Role.STAFF if kind == "pass" else Role.PUPIL)
    book = AddressBook()
    book.learn("facebook.com", [FACEBOOK], 3600)
    services = Services(
        decide=lambda client, target, now: decide(policy, client, target, now),
        identify=lambda ip: who, identify_cached=lambda ip: who, book=book, now=lambda: WHEN,
        site="bench", submit_full=lambda event: True, submit_allowed=lambda event: True,
        submit_ask=lambda event: True, policy_version=lambda: (1, 0),
        fold_allowed=AllowedPasses(lambda event: True, "bench").add,  # as the daemon counts plain passes
    )
    with socket.socket() as probe:  # a free port for the echo server
        probe.bind(("127.0.0.1", 0))
        origin_port = int(probe.getsockname()[1])
    target = ("127.0.0.1", origin_port) if kind == "pass" else (FACEBOOK, 443)

    async def handover(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    door = FrontDoor(Pipeline(build_addons(services), services.connections), handover, options.Options(),
                     ProxyMode.parse("transparent"), destination=lambda sock: target,
                     verdicts=DoorVerdicts(services) if remember else None)
    door.start(listen_sockets("127.0.0.1:0", reuse_port=False))
    loop = asyncio.get_running_loop()
    ended_read, ended_write = os.pipe()  # the device process's end closes when it exits: one wake-up
    process = subprocess.Popen(  # the interpreter itself, outside valgrind (no --trace-children)
        [sys.executable, "-P", __file__, "devices", str(door.listen_addrs()[0][1]), str(origin_port), kind,
         str(count)],
        pass_fds=(ended_write,),
    )
    os.close(ended_write)
    ended = loop.create_future()
    loop.add_reader(ended_read, lambda: ended.done() or ended.set_result(None))
    await ended
    loop.remove_reader(ended_read)
    os.close(ended_read)
    process.wait()
    while door.snapshot()["splices_open"]:
        await asyncio.sleep(0.01)
    door.stop()
    return door.snapshot()


def measure(kind: str, count: int, remember: bool) -> int:
    """Instructions callgrind counted in a front door run of `count` connections."""
    with tempfile.TemporaryDirectory(prefix="sg-callgrind-") as folder:
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", "--cache-sim=no", f"--callgrind-out-file={folder}/out",
             sys.executable, "-P", __file__, "door", kind, str(count), "remember" if remember else "judge"],
            capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"}, check=False,
        )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None or f"handled {count}" not in done.stdout:
        raise SystemExit(f"the front door run failed:\n{done.stdout}\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "devices":
        asyncio.run(devices(int(args[1]), int(args[2]), args[3], int(args[4])))
        return 0
    if args and args[0] == "door":
        from schoolgate.proxy.relay import new_event_loop

        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            snapshot = runner.run(front_door(args[1], int(args[2]), args[3] == "remember"))
        print(f"handled {snapshot['killed'] + snapshot['spliced']}")
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=(*KINDS, "all"), default="all")
    parser.add_argument("--counts", type=int, nargs=2, default=(100, 700), metavar=("FEW", "MANY"))
    options = parser.parse_args(args)
    from schoolgate.lab.packages import ensure_programs

    if ensure_programs({"valgrind": "valgrind"}):
        return 2
    few, many = options.counts
    for kind in KINDS if options.kind == "all" else (options.kind,):
        door_kind, remember, label = KINDS[kind]
        low, high = measure(door_kind, few, remember), measure(door_kind, many, remember)
        print(f"{label:44} {(high - low) / (many - few):10,.0f} instructions per connection "
              f"({few} and {many} connections: {low:,} and {high:,})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
