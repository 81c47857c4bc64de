"""Private network namespaces for the gateway tests (names start with `sgt-gw`, removed after),
and the probe a client in one uses to try a refused protocol."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest


def _ns(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@pytest.fixture
def private_netns() -> Iterator[str]:
    """An empty namespace of this test's own, deleted afterwards."""
    name = f"sgt-gw{os.getpid() % 100000}"
    _ns("netns", "del", name, check=False)
    _ns("netns", "add", name)
    _ns("netns", "exec", name, "ip", "link", "set", "lo", "up")
    try:
        yield name
    finally:
        _ns("netns", "del", name, check=False)


@pytest.fixture
def gateway_pair() -> Iterator[tuple[str, str]]:
    """A gateway namespace with LAN interface `sgt-lan` and one client (10.98.0.2, fd98::2).

    The gateway's own LAN addresses (10.98.0.1/24, fd98::1/64) come from `net apply`.
    """
    tag = os.getpid() % 100000
    gw, client = f"sgt-gwg{tag}", f"sgt-gwc{tag}"
    for name in (gw, client):
        _ns("netns", "del", name, check=False)
        _ns("netns", "add", name)
    try:
        _ns("link", "add", "sgt-lan", "netns", gw, "type", "veth", "peer", "name", "eth0", "netns", client)
        script = {
            gw: [
                "ip link set lo up",
                "ip link set sgt-lan up",
                "ip route add default dev sgt-lan",  # somewhere to forward to (nothing answers)
                "ip -6 route add default dev sgt-lan",
                "sysctl -qw net.ipv4.ip_forward=1",
                "sysctl -qw net.ipv6.conf.all.forwarding=1",
            ],
            client: [
                "ip link set lo up",
                "ip addr add 10.98.0.2/24 dev eth0",
                "ip link set eth0 address 02:98:00:00:00:02",
                "ip link set eth0 up",
                "ip route add default via 10.98.0.1",
                "ip addr add fd98::2/64 dev eth0 nodad",
                "ip -6 route add default via fd98::1",
            ],
        }
        for name, commands in script.items():
            for command in commands:
                _ns("netns", "exec", name, *command.split())
        yield gw, client
    finally:
        for name in (gw, client):
            _ns("netns", "del", name, check=False)


@pytest.fixture
def bridge_trio() -> Iterator[tuple[str, str, str]]:
    """Bridge mode's cable: a client (10.97.0.11) -- the appliance (ports lan0, wan0) -- a router.

    The router (10.97.0.1) also holds 198.51.100.7 (a "server" behind it) and is the client's
    gateway and DNS, as a school's router would be. The appliance's bridge, address
    (10.97.0.2) and ruleset come from `net apply`.
    """
    tag = os.getpid() % 100000
    client, appliance, router = f"sgt-brc{tag}", f"sgt-bra{tag}", f"sgt-brr{tag}"
    names = (client, appliance, router)
    for name in names:
        _ns("netns", "del", name, check=False)
        _ns("netns", "add", name)
    try:
        _ns("link", "add", "eth0", "netns", client, "type", "veth", "peer", "name", "lan0", "netns", appliance)
        _ns("link", "add", "wan0", "netns", appliance, "type", "veth", "peer", "name", "eth0", "netns", router)
        script = {
            client: [
                "ip link set lo up",
                "ip link set eth0 address 02:97:00:00:00:11",
                "ip addr add 10.97.0.11/24 dev eth0",
                "ip link set eth0 up",
                "ip route add default via 10.97.0.1",
            ],
            appliance: ["ip link set lo up", "ip link set lan0 address 02:97:00:00:00:02"],
            router: [
                "ip link set lo up",
                "ip addr add 10.97.0.1/24 dev eth0",
                "ip addr add 198.51.100.7/32 dev lo",
                "ip addr add 198.51.100.200/32 dev lo",
                "ip link set eth0 up",
            ],
        }
        for name, commands in script.items():
            for command in commands:
                _ns("netns", "exec", name, *command.split())
        yield client, appliance, router
    finally:
        for name in names:
            _ns("netns", "del", name, check=False)


class RefusalProbe:
    """What a client sees when it tries a refused protocol: an outcome and how long it took.

    The outcome is "connected" or "answered" when the gateway let it through, else the name of
    the error the client got (ConnectionRefusedError for a TCP reset, TimeoutError when the
    packets were dropped in silence). The seconds show a refusal was immediate, not a timeout.
    Run them in the client's namespace (lab.netns.call_in).
    """

    @staticmethod
    def tcp(host: str, port: int) -> tuple[str, float]:
        started = time.monotonic()
        try:
            socket.create_connection((host, port), timeout=3).close()
            return "connected", 0.0
        except OSError as err:
            return type(err).__name__, time.monotonic() - started

    @staticmethod
    def quic(host: str) -> tuple[str, float]:
        """A QUIC Initial-sized datagram to port 443 (a long-header first byte, 1,200 bytes)."""
        started = time.monotonic()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(3)
            sock.connect((host, 443))
            sock.send(b"\xc0" + b"\0" * 1199)
            try:
                sock.recv(100)
                return "answered", 0.0
            except OSError as err:
                return type(err).__name__, time.monotonic() - started


@pytest.fixture
def refusal_probe() -> RefusalProbe:
    return RefusalProbe()
