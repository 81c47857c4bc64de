"""IdentityResolver.resolve cost on the DNS hot path, next to a bare dict lookup reference.

Prints ns per call for: a cache hit, a cache miss (register lookup by MAC from a warm
neighbour table) and the reference (one dict.get). No netlink: the neighbour dump is fixed.
Run: .venv/bin/python bench/identity_resolve.py [DEVICES]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

from schoolgate.identity import DeviceRegister, IdentityResolver, NeighbourTable, RegisteredDevice
from schoolgate.policy.types import Role


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    ips = [f"10.20.{i // 250}.{i % 250 + 1}" for i in range(n)]
    macs = [f"02:00:00:00:{i // 256:02x}:{i % 256:02x}" for i in range(n)]
    register = DeviceRegister(
        "bench",
        [RegisteredDevice(f"D{i}", f"Device {i}", macs[i], None, Role.PUPIL, f"p{i}", f"P {i}") for i in range(n)],
    )
    entries = [{"state": 2, "attrs": [("NDA_DST", ip), ("NDA_LLADDR", mac)]} for ip, mac in zip(ips, macs, strict=True)]

    def dump() -> Iterable[Mapping[str, Any]]:
        return entries

    table = NeighbourTable(dump=dump)
    table.refresh()
    rounds = 50

    resolver = IdentityResolver(register, table, ttl=3600)
    for ip in ips:
        resolver.resolve(ip)
    start = time.perf_counter()
    for _ in range(rounds):
        for ip in ips:
            resolver.resolve(ip)
    hit = (time.perf_counter() - start) / (rounds * n)

    start = time.perf_counter()
    for _ in range(rounds):
        uncached = IdentityResolver(register, table, ttl=0)
        for ip in ips:
            uncached.resolve(ip)
    miss = (time.perf_counter() - start) / (rounds * n)

    reference = dict(zip(ips, macs, strict=True))
    start = time.perf_counter()
    for _ in range(rounds):
        for ip in ips:
            reference.get(ip)
    ref = (time.perf_counter() - start) / (rounds * n)

    print(f"devices: {n}")
    print(f"resolve, cache hit:   {hit * 1e9:8.0f} ns/call")
    print(f"resolve, cache miss:  {miss * 1e9:8.0f} ns/call")
    print(f"reference dict.get:   {ref * 1e9:8.0f} ns/call")


if __name__ == "__main__":
    main()
