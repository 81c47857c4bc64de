"""Who a connection's client is, without leaving the event loop when the answer is fresh.

The identity resolver may read the neighbour table over netlink on a miss, so the proxy asks
it from a worker thread. But a device opens connections in bursts (a page load is dozens), and
a thread hop per connection cost more than the rest of a killed connection's handling. So
the resolver's answers are kept here per client address for a short while, and a connection
whose address was answered recently is identified on the loop with one dict lookup.

Two things keep a busy device's connections off the thread entirely:

- an answer past half its life is refreshed in the background (one lookup off the loop)
  while it still serves, so a device that keeps connecting finds a fresh answer each time;
- connections from one address that arrive while its lookup is under way all wait for that
  one lookup instead of each starting its own.

Freshness is what it was without them: an answer serves for at most `ttl` seconds counted
from when its lookup *started* (so a device that changed hands or role is judged by the new
facts within `ttl`, however long the lookup took), and only while the register it came from
is still the current one: a device registered, moved to another role or removed is seen by
the next connection after the reload.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import NamedTuple

from schoolgate.policy.types import Client

REFRESH_AT = 0.5  # of an answer's life: from then on a connection that uses it renews it


class _Answer(NamedTuple):
    expires: float  # the lookup's start + ttl: not served from then on
    refresh_at: float  # from then on, a use starts a fresh lookup in the background
    register: object  # the register snapshot it was resolved against
    client: Client


class RecentClients:
    """Per-IP answers of `resolve`, reused for `ttl` seconds (`unknown_ttl` for an unknown
    device: its neighbour entry may simply not be there yet). `cached` and `lookup` are called
    on the event loop; `resolve` runs in the loop's default executor."""

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
        self._entries: dict[str, _Answer] = {}
        self._in_flight: dict[str, asyncio.Future[Client]] = {}  # ip -> its one lookup under way
        self.hits = 0
        self.misses = 0
        self.lookups = 0  # lookups started off the loop (misses and refreshes)
        self.refreshes = 0  # ... of which started ahead of expiry, while the old answer served
        self.shared = 0  # connections that waited for a lookup another connection had started

    def cached(self, ip: str) -> Client | None:
        """The recent answer for `ip`, or None if it must be looked up (on the loop: no I/O).
        An answer past REFRESH_AT of its life is renewed in the background as it is used."""
        entry = self._entries.get(ip)
        if entry is None:
            self.misses += 1
            return None
        now = self._clock()
        if entry.expires <= now or entry.register is not self._register():
            self.misses += 1
            return None
        if now >= entry.refresh_at and ip not in self._in_flight:
            self.refreshes += 1
            self._start(ip)
        self.hits += 1
        return entry.client

    def lookup(self, ip: str) -> asyncio.Future[Client]:
        """The lookup of `ip` under way, or a new one (on the loop). Its answer is kept here
        before the future is done. Await it through `asyncio.shield`: one waiter cancelled
        must not cancel the others' lookup."""
        found = self._in_flight.get(ip)
        if found is not None:
            self.shared += 1
            return found
        return self._start(ip)

    def _start(self, ip: str) -> asyncio.Future[Client]:
        self.lookups += 1
        future = asyncio.get_running_loop().run_in_executor(None, self.resolve, ip)
        self._in_flight[ip] = future
        future.add_done_callback(lambda done: self._finished(ip, done))
        return future

    def _finished(self, ip: str, future: asyncio.Future[Client]) -> None:
        if self._in_flight.get(ip) is future:
            del self._in_flight[ip]
        if not future.cancelled():
            future.exception()  # a background refresh has no waiter: its error is the waiters' to log

    def resolve(self, ip: str) -> Client:
        """Ask the resolver (may block: call it from a worker thread) and keep the answer."""
        register = self._register()  # before resolving: a reload meanwhile makes this stale
        started = self._clock()  # the answer's life counts from here: its facts are no older
        client = self._resolve(ip)
        entries = self._entries
        if len(entries) >= self._max_entries:
            # Simplest bound: start over (entries live seconds anyway). A new dict, not
            # clear(): the loop may be reading the old one.
            entries = self._entries = {}
        ttl = self._ttl if client.device_id else self._unknown_ttl
        entries[ip] = _Answer(started + ttl, started + ttl * REFRESH_AT, register, client)
        return client

    def __len__(self) -> int:
        return len(self._entries)
