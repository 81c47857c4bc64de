"""The answer cache: wire bytes, keyed by question and by the policy decision behind the answer.

Entries are stored without an OPT record and with the TTLs the answer had when it arrived.
Serving one copies the bytes, patches the ID and the question (to keep the client's letter
case), and writes each TTL as (original - age), never more than the seconds left until the
current decision may change, so a cached "allow" never outlives the window that allowed it.

Two roles never share a policy-dependent answer: the key holds the decision's identity
(verdict, rule, rewrite), not the client. Expired entries are kept, up to `stale_for` seconds,
for serve-stale (RFC 8767) when every upstream fails.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from schoolgate.dns.wire import HEADER, U16, U32

STALE_TTL = 30  # RFC 8767 §4: the TTL given to a stale answer
MAX_TTL = 86_400
MAX_STALE_S = 86_400  # keep expired answers this long for serve-stale

CacheKey = tuple[bytes, int, int, Hashable, bool]


@dataclass(slots=True)
class Entry:
    wire: bytes
    ttls: tuple[tuple[int, int], ...]  # (offset, original ttl)
    stored: float  # monotonic
    lifetime: float  # seconds the entry is fresh
    policy_dependent: bool
    aliases: tuple[str, ...] = ()  # CNAME targets in the answer, which the policy checks too


class AnswerCache:
    def __init__(
        self,
        max_entries: int = 50_000,
        stale_for: float = MAX_STALE_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max(1, max_entries)
        self.stale_for = stale_for
        self._now = monotonic
        self._entries: OrderedDict[CacheKey, Entry] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.stale_served = 0

    def __len__(self) -> int:
        return len(self._entries)

    def store(
        self,
        key: CacheKey,
        wire: bytes,
        ttls: list[tuple[int, int]],
        lifetime: float,
        *,
        policy_dependent: bool = False,
        aliases: tuple[str, ...] = (),
    ) -> None:
        if lifetime <= 0:
            return
        entries = self._entries
        entries[key] = Entry(wire, tuple(ttls), self._now(), min(lifetime, MAX_TTL), policy_dependent, aliases)
        entries.move_to_end(key)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)

    def lookup(self, key: CacheKey) -> Entry | None:
        """A fresh entry, or None (expired entries stay for serve-stale)."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        if self._now() - entry.stored >= entry.lifetime:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def render_fresh(self, key: CacheKey, ident: int, question: bytes, *, ceiling: int, room: int) -> bytearray | None:
        """A fresh entry rendered for one client (see `render`) and counted as a hit; None, and
        nothing counted, for a miss, an entry whose CNAME targets the policy must check, or one
        longer than `room` bytes: the caller hands those to the chain, whose `lookup` counts."""
        entry = self._entries.get(key)
        if entry is None or entry.aliases or len(entry.wire) > room:
            return None
        age = self._now() - entry.stored
        if age >= entry.lifetime:
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return render(entry, ident, question, int(age), ceiling=ceiling)

    def lookup_stale(self, key: CacheKey) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None or self._now() - entry.stored >= entry.lifetime + self.stale_for:
            return None
        self.stale_served += 1
        return entry

    def age(self, entry: Entry) -> int:
        return int(self._now() - entry.stored)

    def flush_policy_dependent(self) -> int:
        """Forget answers whose content the policy shaped (safe-search rewrites and the like)."""
        doomed = [k for k, e in self._entries.items() if e.policy_dependent]
        for key in doomed:
            del self._entries[key]
        return len(doomed)

    def clear(self) -> None:
        self._entries.clear()


def render(entry: Entry, ident: int, question: bytes, age: int, *, ceiling: int, stale: bool = False) -> bytearray:
    """The cached answer for one client: its ID, its question bytes, TTLs aged and clamped."""
    out = bytearray(entry.wire)
    U16.pack_into(out, 0, ident)
    out[12 : 12 + len(question)] = question
    for offset, ttl in entry.ttls:
        value = STALE_TTL if stale else ttl - age
        value = min(value, ceiling)
        U32.pack_into(out, offset, value if value > 0 else 0)
    return out


def header_counts(wire: bytes) -> tuple[int, int, int, int]:
    _, _, qd, an, ns, ar = HEADER.unpack_from(wire)
    return qd, an, ns, ar
