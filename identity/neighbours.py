"""The kernel's neighbour table (ARP and NDP): which MAC is behind a LAN address.

Read through netlink (pyroute2) in whichever network namespace the daemon runs. The table
is cached; a lookup that misses refreshes it, but at most once per ``min_refresh`` seconds,
so a flood of queries from unknown addresses cannot turn into a flood of netlink dumps.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from schoolgate.identity.macs import normalise_mac

log = logging.getLogger(__name__)

# Linux NUD states (include/uapi/linux/neighbour.h) that vouch for the link-layer address.
NUD_REACHABLE = 0x02
NUD_STALE = 0x04
NUD_DELAY = 0x08
NUD_PROBE = 0x10
NUD_PERMANENT = 0x80
USABLE_STATES = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT

Dump = Callable[[], Iterable[Mapping[str, Any]]]


def _attr(message: Mapping[str, Any], name: str) -> Any:
    getter = getattr(message, "get_attr", None)
    if getter is not None:
        return getter(name)
    for key, value in message.get("attrs", ()):
        if key == name:
            return value
    return None


@functools.lru_cache(maxsize=65_536)
def canonical_ip(ip: str) -> str:
    """One spelling per address (IPv6 compressed, IPv4-mapped IPv6 unwrapped).

    Cached: it runs on every DNS query, and a LAN has a bounded set of client addresses.
    """
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def parse_neighbours(messages: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """{ip: mac} from RTM_NEWNEIGH messages, keeping only entries with a usable MAC."""
    table: dict[str, str] = {}
    for message in messages:
        if not int(message.get("state", 0)) & USABLE_STATES:
            continue
        dst = _attr(message, "NDA_DST")
        lladdr = _attr(message, "NDA_LLADDR")
        if not dst or not lladdr:
            continue
        mac = normalise_mac(str(lladdr))
        if mac is None or mac == "00:00:00:00:00:00":
            continue
        table[canonical_ip(str(dst))] = mac
    return table


def _dump_neighbours(netns: str | None) -> list[Mapping[str, Any]]:
    from pyroute2 import IPRoute

    with IPRoute(netns=netns) if netns else IPRoute() as ipr:
        return list(ipr.get_neighbours())


def netlink_dump(netns: str | None = None, timeout: float = 5.0) -> list[Mapping[str, Any]]:
    """Every neighbour entry (IPv4 and IPv6) of the current (or the named) network namespace.

    Safe to call from a thread that runs an asyncio loop (the DNS daemon's): pyroute2's
    synchronous API drives an event loop of its own, which cannot nest in a running one,
    so there the dump runs in a short-lived helper thread (a few milliseconds).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _dump_neighbours(netns)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="schoolgate-neigh") as pool:
        return pool.submit(_dump_neighbours, netns).result(timeout=timeout)


class NeighbourTable:
    """A cached ip -> MAC map of the neighbour table, refreshed on a miss."""

    def __init__(self, *, min_refresh: float = 2.0, dump: Dump | None = None, netns: str | None = None) -> None:
        self.min_refresh = min_refresh
        self._dump: Dump = dump or (lambda: netlink_dump(netns))
        self._table: dict[str, str] = {}
        self._refreshed_at = float("-inf")
        self._lock = threading.Lock()
        self.refreshes = 0
        self.errors = 0

    def lookup(self, ip: str) -> str | None:
        key = canonical_ip(ip)
        mac = self._table.get(key)
        if mac is not None:
            return mac
        if time.monotonic() - self._refreshed_at < self.min_refresh:
            return None
        self.refresh(force=False)
        return self._table.get(key)

    def refresh(self, *, force: bool = True) -> None:
        """Re-read the kernel table (unless another thread just did, when not forced)."""
        with self._lock:
            if not force and time.monotonic() - self._refreshed_at < self.min_refresh:
                return
            self._refreshed_at = time.monotonic()
            try:
                table = parse_neighbours(self._dump())
            except Exception as err:  # netlink trouble must not stop name resolution
                self.errors += 1
                log.warning("cannot read the neighbour table: %s", err)
                return
            self.refreshes += 1
            self._table = table  # swapped whole: readers never see a half-built map

    def snapshot(self) -> dict[str, str]:
        return dict(self._table)
