"""From a source address to a policy Client, from every source of identity the appliance has.

The neighbour table (the MAC the appliance sees on the address), the school's DHCP leases,
the Wi-Fi controller's RADIUS sessions and the device register each say something about who
is behind an address; schoolgate.identity.evidence decides between them and records which
one identified the client. A device seen with a MAC is known by that MAC alone; the
register's fixed addresses identify a device only where no MAC can be seen.

``resolve`` runs once per DNS query, so it is a few dict lookups: a per-IP cache with a
short TTL in front of the neighbour table and the register and evidence snapshots.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from schoolgate.identity.evidence import Evidence, identify
from schoolgate.identity.leasestore import EVIDENCE_GENERATION
from schoolgate.identity.macs import normalise_mac
from schoolgate.identity.neighbours import NeighbourTable, canonical_ip
from schoolgate.identity.register import DeviceRegister, load_register
from schoolgate.policy.types import Client
from schoolgate.store.overlay import read_generation


def _utc_now() -> datetime:
    return datetime.now(UTC)


class IdentityResolver:
    """Resolves client addresses against swappable register and evidence snapshots."""

    def __init__(
        self,
        register: DeviceRegister | None = None,
        neighbours: NeighbourTable | None = None,
        *,
        evidence: Evidence | None = None,
        ttl: float = 5.0,
        unknown_ttl: float = 1.0,
        max_cache: int = 65_536,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._register = register or DeviceRegister.empty()
        self._evidence = evidence or Evidence.empty()
        self._neighbours = neighbours
        self._ttl = ttl
        # An unknown answer may only mean the neighbour entry is not there yet: keep it briefly.
        self._unknown_ttl = min(ttl, unknown_ttl)
        self._max_cache = max_cache
        self._clock = clock
        self.now = now  # the daemon's time: which lease or session covers a query
        self._cache: dict[tuple[str, str | None], tuple[float, Client]] = {}
        self.hits = 0
        self.misses = 0

    @property
    def register(self) -> DeviceRegister:
        return self._register

    @property
    def evidence(self) -> Evidence:
        return self._evidence

    def set_register(self, register: DeviceRegister) -> None:
        """Swap in a new snapshot (after the generation moved); forget cached answers."""
        self._register = register
        self._cache = {}

    def set_evidence(self, evidence: Evidence) -> None:
        self._evidence = evidence
        self._cache = {}

    def resolve(self, ip: str, mac: str | None = None) -> Client:
        key = (ip, mac)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            self.hits += 1
            return cached[1]
        self.misses += 1
        client = self._resolve(ip, mac)
        cache = self._cache
        if len(cache) >= self._max_cache:
            cache = self._cache = {}  # simplest bound: start over (entries live seconds anyway)
        known = client.device_id or client.person_id
        cache[key] = (now + (self._ttl if known else self._unknown_ttl), client)
        return client

    def _resolve(self, ip: str, mac: str | None) -> Client:
        address = canonical_ip(ip)
        frame_mac = normalise_mac(mac) if mac else None
        neighbour_mac = None
        if frame_mac is None and self._neighbours is not None:
            neighbour_mac = self._neighbours.lookup(address)
        return identify(
            address,
            at=self.now(),
            register=self._register,
            evidence=self._evidence,
            frame_mac=frame_mac,
            neighbour_mac=neighbour_mac,
        )


class RegisterReloader:
    """Polls the change counters and reloads the resolver's register and evidence when they move.

    The register follows the overlay generation; the evidence (leases, Wi-Fi sessions and the
    directory's people) follows the identity-evidence generation and the overlay's (people are
    part of the register). Call ``poll()`` from the daemon's once-a-second loop; it opens its
    own short session. Give it a read-only session factory (``session_factory(engine,
    readonly=True)``): on SQLite a once-a-second write-mode transaction would queue behind the
    event writer.
    """

    def __init__(self, sessions: sessionmaker[Session], site: str, resolver: IdentityResolver) -> None:
        self._sessions = sessions
        self._site = site
        self._resolver = resolver
        self._lock = threading.Lock()
        self._evidence_key: tuple[int, int] | None = None
        self.reloads = 0
        self.evidence_reloads = 0

    @property
    def generation(self) -> int:
        """The overlay generation of the register in use (daemons report it in their status row,
        so that whoever changed the register can see when they have picked it up)."""
        return self._resolver.register.generation

    def poll(self) -> bool:
        """Reload what changed (or everything, the first time); True if anything was reloaded."""
        from schoolgate.identity.snapshot import load_evidence

        with self._lock, self._sessions() as session:
            generation = read_generation(session, self._site)
            evidence_key = (generation, read_generation(session, self._site, EVIDENCE_GENERATION))
            reloaded = False
            current = self._resolver.register
            if not (current.site == self._site and current.generation == generation and self.reloads):
                self._resolver.set_register(load_register(session, self._site))
                self.reloads += 1
                reloaded = True
            if evidence_key != self._evidence_key:
                self._resolver.set_evidence(load_evidence(session, self._site, self._resolver.now()))
                self._evidence_key = evidence_key
                self.evidence_reloads += 1
                reloaded = True
            return reloaded
