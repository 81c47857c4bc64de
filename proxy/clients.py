"""Who a connection's client is, without leaving the event loop when the answer is fresh.

The identity resolver may read the neighbour table over netlink on a miss, so the proxy asks
it from a worker thread. But a device opens connections in bursts (a page load is dozens), and
a thread hop per connection cost more than the rest of a killed connection's handling. So
the resolver's answers are kept here per client address for a short while, and a connection
whose address was answered recently is identified on the loop with one dict lookup.

An answer is only reused while the register it came from is still the current one: a
device registered, moved to another role or removed is seen by the next connection after the
reload, as it would be without this cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from schoolgate.policy.types import Client


class RecentClients:
    """Per-IP answers of `resolve`, reused for `ttl` seconds (`unknown_ttl` for an unknown
    device: its neighbour entry may simply not be there yet)."""

    def __init__(
        self,
        resolve: Callable[[str], Client],
        register: Callable[[], object],
        *,
        ttl: float = 2.0,
        unknown_ttl: float = 0.5,
        max_entries: int = 65_536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._resolve = resolve
        self._register = register  # the current register snapshot (compared by identity)
        self._ttl = ttl
        self._unknown_ttl = min(ttl, unknown_ttl)
        self._max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[float, object, Client]] = {}
        self.hits = 0
        self.misses = 0

    def cached(self, ip: str) -> Client | None:
        """The recent answer for `ip`, or None if it must be resolved (on the loop: no I/O)."""
        entry = self._entries.get(ip)
        if entry is not None and entry[0] > self._clock() and entry[1] is self._register():
            self.hits += 1
            return entry[2]
        self.misses += 1
        return None

    def resolve(self, ip: str) -> Client:
        """Ask the resolver (may block: call it from a worker thread) and keep the answer."""
        register = self._register()  # before resolving: a reload meanwhile makes this stale
        client = self._resolve(ip)
        entries = self._entries
        if len(entries) >= self._max_entries:
            # Simplest bound: start over (entries live seconds anyway). A new dict, not
            # clear(): the loop may be reading the old one.
            entries = self._entries = {}
        ttl = self._ttl if client.device_id else self._unknown_ttl
        entries[ip] = (self._clock() + ttl, register, client)
        return client

    def __len__(self) -> int:
        return len(self._entries)
