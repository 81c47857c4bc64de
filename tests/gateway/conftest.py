"""Private network namespaces for the gateway tests (names start with `sgt-gw`, removed after)."""

from __future__ import annotations

import os
import subprocess
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
