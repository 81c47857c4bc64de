"""The neighbour table read for real, from a network namespace the test creates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from schoolgate.identity import DeviceRegister, IdentityResolver, NeighbourTable, RegisteredDevice
from schoolgate.policy.types import Role

pytestmark = pytest.mark.root


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create a network namespace")
    name = f"storetest-{os.getpid()}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "add", "sgt0", "type", "veth", "peer", "name", "sgt1")
        ip("-n", name, "addr", "add", "10.77.0.1/24", "dev", "sgt0")
        ip("-n", name, "-6", "addr", "add", "fd77::1/64", "dev", "sgt0", "nodad")
        ip("-n", name, "link", "set", "sgt0", "up")
        ip("-n", name, "link", "set", "sgt1", "up")
        ip("-n", name, "neigh", "add", "10.77.0.23", "lladdr", "02:11:22:33:44:55", "dev", "sgt0", "nud", "reachable")
        ip("-n", name, "-6", "neigh", "add", "fd77::23", "lladdr", "02:11:22:33:44:66", "dev", "sgt0")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True, timeout=30)


REGISTER = DeviceRegister(
    "testschool",
    [
        RegisteredDevice(device_id="LAP-23", name="Laptop 23", mac="02:11:22:33:44:55", ip=None, role=Role.PUPIL),
        RegisteredDevice(device_id="TAB-23", name="Tablet 23", mac="02:11:22:33:44:66", ip=None, role=Role.STAFF),
    ],
)


def test_neighbour_table_of_a_named_namespace(netns: str) -> None:
    table = NeighbourTable(netns=netns, min_refresh=0)
    resolver = IdentityResolver(REGISTER, table)
    laptop = resolver.resolve("10.77.0.23")
    assert (laptop.mac, laptop.device_id, laptop.role) == ("02:11:22:33:44:55", "LAP-23", Role.PUPIL)
    tablet = resolver.resolve("fd77::23")
    assert (tablet.mac, tablet.device_id) == ("02:11:22:33:44:66", "TAB-23")
    assert resolver.resolve("10.77.0.99").role is None  # no neighbour entry: unknown
    # an entry that appears later is found by the refresh on the next miss
    ip("-n", netns, "neigh", "add", "10.77.0.99", "lladdr", "02:11:22:33:44:55", "dev", "sgt0")
    assert table.lookup("10.77.0.99") == "02:11:22:33:44:55"


def test_a_daemon_running_inside_the_namespace_reads_its_own_table(netns: str) -> None:
    # The default path: no netns given, the process simply runs in the namespace.
    script = textwrap.dedent(
        """
        import json
        from schoolgate.identity import NeighbourTable
        table = NeighbourTable()
        print(json.dumps({"v4": table.lookup("10.77.0.23"), "v6": table.lookup("fd77::23"),
                          "none": table.lookup("10.77.0.50")}))
        """
    )
    out = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", script],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(out.stdout) == {"v4": "02:11:22:33:44:55", "v6": "02:11:22:33:44:66", "none": None}


def test_the_table_can_be_read_from_inside_a_running_event_loop(netns: str) -> None:
    import asyncio

    async def lookup() -> str | None:
        return NeighbourTable(netns=netns, min_refresh=0).lookup("10.77.0.23")

    assert asyncio.run(lookup()) == "02:11:22:33:44:55"
