"""From a source address to a policy Client: neighbour table MAC, then the device register.

A device seen with a MAC is known by that MAC alone; the register's fixed addresses identify
a device only where no MAC can be seen.

``resolve`` runs once per DNS query, so it is a few dict lookups: a per-IP cache with a
short TTL in front of the neighbour table and the register snapshot.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from schoolgate.identity.macs import normalise_mac
from schoolgate.identity.neighbours import NeighbourTable, canonical_ip
from schoolgate.identity.register import DeviceRegister, RegisteredDevice, load_register
from schoolgate.policy.types import Client
from schoolgate.store.overlay import read_generation


def client_for(ip: str, mac: str | None, device: RegisteredDevice | None) -> Client:
    if device is None:
        # Unknown device: no role, so the policy applies its network's strictest role.
        return Client(ip=ip, mac=mac)
    return Client(
        ip=ip,
        mac=mac or device.mac,
        device_id=device.device_id,
        device_name=device.name,
        person_id=device.person_id,
        person_name=device.person_name,
        role=device.role,
        year_group=device.year_group,
        groups=device.groups,
        trusts_school_ca=device.trusts_school_ca,
        ownership=device.ownership,
    )


class IdentityResolver:
    """Resolves client addresses against a swappable register snapshot."""

    def __init__(
        self,
        register: DeviceRegister | None = None,
        neighbours: NeighbourTable | None = None,
        *,
        ttl: float = 5.0,
        unknown_ttl: float = 1.0,
        max_cache: int = 65_536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._register = register or DeviceRegister.empty()
        self._neighbours = neighbours
        self._ttl = ttl
        # An unknown answer may only mean the neighbour entry is not there yet: keep it briefly.
        self._unknown_ttl = min(ttl, unknown_ttl)
        self._max_cache = max_cache
        self._clock = clock
        self._cache: dict[tuple[str, str | None], tuple[float, Client]] = {}
        self.hits = 0
        self.misses = 0

    @property
    def register(self) -> DeviceRegister:
        return self._register

    def set_register(self, register: DeviceRegister) -> None:
        """Swap in a new snapshot (after the generation moved); forget cached answers."""
        self._register = register
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
        cache[key] = (now + (self._ttl if client.device_id else self._unknown_ttl), client)
        return client

    def _resolve(self, ip: str, mac: str | None) -> Client:
        address = canonical_ip(ip)
        found_mac = normalise_mac(mac) if mac else None
        if found_mac is None and self._neighbours is not None:
            found_mac = self._neighbours.lookup(address)
        register = self._register
        if found_mac is not None:
            # A MAC is the device's identity. An address is not: any device can set a staff
            # laptop's fixed address, and must not take on its role or have its events logged
            # under it. A MAC the register does not know is an unknown device.
            return client_for(address, found_mac, register.by_mac(found_mac))
        # No MAC to be seen (a routed network, or the console off the gateway): the register's
        # fixed address is all there is to go on.
        return client_for(address, None, register.by_ip(address))


class RegisterReloader:
    """Polls the overlay generation and reloads the resolver's register when it moves.

    Call ``poll()`` from the daemon's once-a-second loop; it opens its own short session.
    Give it a read-only session factory (``session_factory(engine, readonly=True)``): on
    SQLite a once-a-second write-mode transaction would queue behind the event writer.
    """

    def __init__(self, sessions: sessionmaker[Session], site: str, resolver: IdentityResolver) -> None:
        self._sessions = sessions
        self._site = site
        self._resolver = resolver
        self._lock = threading.Lock()
        self.reloads = 0

    def poll(self) -> bool:
        """Reload if the generation changed (or nothing is loaded yet); True if reloaded."""
        with self._lock, self._sessions() as session:
            generation = read_generation(session, self._site)
            current = self._resolver.register
            if current.site == self._site and current.generation == generation and self.reloads:
                return False
            self._resolver.set_register(load_register(session, self._site))
            self.reloads += 1
            return True
