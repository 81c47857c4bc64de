"""The nftables sets that steer watched services' connections into the proxy.

The DNS daemon learns which addresses belong to watched services (Facebook, X, ...) from the
answers it gives, and adds them here with a timeout. The interface is small so the daemon runs
without nftables in tests and development (MemoryWatchedSets), while the gateway uses the real
kernel sets (NftWatchedSets, in schoolgate.gateway.nft).
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterable
from typing import Protocol

# The names the generated ruleset uses; one place so the DNS daemon and the ruleset agree.
NFT_TABLE = "schoolgate"
WATCHED_V4 = "watched4"
WATCHED_V6 = "watched6"
# Addresses the policy's lists name (IP entries): steered to the proxy, which judges them per
# role; filled by the circumvention watcher when a list version is swapped in.
BLOCKED_V4 = "blocked4"
BLOCKED_V6 = "blocked6"
# The table families schoolgate may own: inet always (gateway, dns-only), bridge in bridge mode.
TABLE_FAMILIES = ("inet", "bridge")


def watched_family(mode: str) -> str:
    """Which table holds the watched sets: the one whose chains steer web connections.

    In bridge mode the bridge table decides which frames go to the proxy, so the sets DNS
    feeds live there; otherwise in the inet table.
    """
    return "bridge" if mode == "bridge" else "inet"


class WatchedSets(Protocol):
    def add(self, addresses: Iterable[str], timeout_s: int) -> None:
        """Steer connections to these addresses into the proxy for `timeout_s` seconds."""
        ...

    def add_now(self, addresses: Iterable[str], timeout_s: int) -> None:
        """As `add`, but in force when it returns (raises if it could not be): for a name whose
        very first connection must reach the proxy. Blocks: call it off the event loop."""
        ...


class MemoryWatchedSets:
    """An in-process stand-in with the same timeout semantics, for tests and development."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._expiry: dict[str, float] = {}

    def add(self, addresses: Iterable[str], timeout_s: int) -> None:
        deadline = time.monotonic() + timeout_s
        with self._lock:
            for address in addresses:
                key = str(ipaddress.ip_address(address))
                self._expiry[key] = max(deadline, self._expiry.get(key, 0.0))

    def add_now(self, addresses: Iterable[str], timeout_s: int) -> None:
        self.add(addresses, timeout_s)

    def contains(self, address: str) -> bool:
        key = str(ipaddress.ip_address(address))
        with self._lock:
            return self._expiry.get(key, 0.0) > time.monotonic()

    def snapshot(self) -> frozenset[str]:
        now = time.monotonic()
        with self._lock:
            return frozenset(a for a, t in self._expiry.items() if t > now)
