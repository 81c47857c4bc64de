"""Who is behind an address at a moment, from every source that can say so: the pure part.

Each source makes a claim about the address (`Claim`):

- `frame`: the packet itself came from this MAC (the kernel's log of a refused packet);
- `neighbour`: the appliance's neighbour table has this MAC on the address now;
- `radius`: the Wi-Fi controller's accounting says a signed-in user's device (a MAC) has the
  address, as of its last Start or Interim-Update;
- `dhcp`: the school's DHCP server leased the address to a MAC, last confirmed when the lease
  was granted or renewed;
- `register`: the device register's fixed address, used only when no MAC is seen at all.

When the claims name different MACs, the fresher one wins: the address changed hands, and the
later evidence is about the device that has it now. Claims confirmed within `TIE` of each
other count as equally fresh, and the stronger source wins (`STRENGTH`: a signed-in user over
what a frame shows, over the neighbour table, over a DHCP lease). The person then comes from
RADIUS if a user is signed in on the winning MAC, otherwise from the device register; and the
event records which source identified it (`Client.identity_source`).

Everything here is plain data and dict lookups: `identify` runs on the DNS hot path (behind
the resolver's cache), and `Evidence` is a snapshot swapped whole when the database changes.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType

from schoolgate.identity.register import DeviceRegister, RegisteredDevice
from schoolgate.policy.types import Client, Role

SOURCE_FRAME = "frame"
SOURCE_NEIGHBOUR = "neighbour"
SOURCE_RADIUS = "radius"
SOURCE_DHCP = "dhcp"
SOURCE_REGISTER = "register"
STRENGTH = {SOURCE_RADIUS: 5, SOURCE_FRAME: 4, SOURCE_NEIGHBOUR: 3, SOURCE_DHCP: 2, SOURCE_REGISTER: 1}
TIE = timedelta(seconds=60)
# A session the controller never stopped (it missed the Stop, or rebooted) stops counting this
# long after its last Start or Interim-Update; controllers send an Interim-Update every few
# minutes to an hour while the device is connected.
SESSION_STALE = timedelta(hours=6)


@dataclass(frozen=True, slots=True)
class Claim:
    source: str
    mac: str | None
    seen: datetime  # when the source last confirmed it
    username: str | None = None  # radius: who signed in
    hostname: str | None = None  # dhcp: the name the device gave


@dataclass(frozen=True, slots=True)
class LeaseSpan:
    mac: str
    hostname: str | None
    starts: datetime
    ends: datetime | None  # None: never
    renewed: datetime  # the last time the DHCP server confirmed it

    def covers(self, at: datetime) -> bool:
        return self.starts <= at and (self.ends is None or at < self.ends)


@dataclass(frozen=True, slots=True)
class SessionSpan:
    username: str
    mac: str | None
    ip: str | None
    started: datetime
    updated: datetime  # the last Start or Interim-Update
    stopped: datetime | None

    def covers(self, at: datetime) -> bool:
        if self.stopped is not None:
            return self.started <= at < self.stopped
        return self.started <= at < self.updated + SESSION_STALE


@dataclass(frozen=True, slots=True)
class PersonInfo:
    """A person of the directory, as an identity needs them (RADIUS names them by user name)."""

    external_id: str
    name: str
    role: Role | None
    year_group: int | None = None
    groups: frozenset[str] = frozenset()


def username_keys(username: str) -> list[str]:
    """The spellings under which a RADIUS user name may be in the directory, most exact first:
    `SCHOOL\\jsmith` and `jsmith@school.org.uk` are also `jsmith`."""
    name = username.strip().lower()
    keys = [name]
    if "\\" in name:
        keys.append(name.rsplit("\\", 1)[1])
    if "@" in keys[-1]:
        keys.append(keys[-1].split("@", 1)[0])
    return list(dict.fromkeys(k for k in keys if k))


class Evidence:
    """A snapshot of the school's leases, Wi-Fi sessions and directory, indexed for lookups."""

    __slots__ = ("_leases", "_people", "_sessions_by_ip", "_sessions_by_mac", "generation", "site")

    def __init__(
        self,
        site: str,
        *,
        leases: Mapping[str, Iterable[LeaseSpan]] | None = None,
        sessions: Iterable[SessionSpan] = (),
        people: Mapping[str, PersonInfo] | None = None,
        generation: int = 0,
    ) -> None:
        self.site = site
        self.generation = generation
        self._leases = MappingProxyType({ip: tuple(sorted(spans, key=lambda s: s.starts))
                                         for ip, spans in (leases or {}).items()})
        by_ip: dict[str, list[SessionSpan]] = {}
        by_mac: dict[str, list[SessionSpan]] = {}
        for session in sessions:
            if session.ip:
                by_ip.setdefault(session.ip, []).append(session)
            if session.mac:
                by_mac.setdefault(session.mac, []).append(session)
        self._sessions_by_ip = MappingProxyType({k: tuple(v) for k, v in by_ip.items()})
        self._sessions_by_mac = MappingProxyType({k: tuple(v) for k, v in by_mac.items()})
        self._people = MappingProxyType(dict(people or {}))

    @classmethod
    def empty(cls, site: str = "") -> Evidence:
        return cls(site)

    def __bool__(self) -> bool:
        return bool(self._leases or self._sessions_by_ip or self._sessions_by_mac)

    def lease_at(self, ip: str, at: datetime) -> LeaseSpan | None:
        """The lease on `ip` at `at`: of those that cover it, the one granted last."""
        spans = self._leases.get(ip)
        if not spans:
            return None
        index = bisect.bisect_right([s.starts for s in spans], at)
        for span in reversed(spans[:index]):
            if span.covers(at):
                return span
        return None

    def session_at_ip(self, ip: str, at: datetime) -> SessionSpan | None:
        return _latest(self._sessions_by_ip.get(ip, ()), at)

    def session_for_mac(self, mac: str, at: datetime) -> SessionSpan | None:
        return _latest(self._sessions_by_mac.get(mac, ()), at)

    def person(self, username: str) -> PersonInfo | None:
        for key in username_keys(username):
            found = self._people.get(key)
            if found is not None:
                return found
        return None


def _latest(sessions: Iterable[SessionSpan], at: datetime) -> SessionSpan | None:
    current = [s for s in sessions if s.covers(at)]
    return max(current, key=lambda s: s.updated) if current else None


def choose(claims: Iterable[Claim]) -> Claim | None:
    """The claim to believe: the freshest, and of those within TIE of it, the strongest."""
    found = list(claims)
    if not found:
        return None
    freshest = max(claim.seen for claim in found)
    close = [claim for claim in found if freshest - claim.seen <= TIE]
    return max(close, key=lambda claim: (STRENGTH[claim.source], claim.seen))


def identify(
    ip: str,
    *,
    at: datetime,
    register: DeviceRegister,
    evidence: Evidence,
    frame_mac: str | None = None,
    neighbour_mac: str | None = None,
) -> Client:
    """The policy Client for `ip` at `at`, from every source, and which source said so."""
    claims: list[Claim] = []
    if frame_mac:
        claims.append(Claim(SOURCE_FRAME, frame_mac, at))
    if neighbour_mac:
        claims.append(Claim(SOURCE_NEIGHBOUR, neighbour_mac, at))
    lease = evidence.lease_at(ip, at)
    if lease is not None:
        claims.append(Claim(SOURCE_DHCP, lease.mac, lease.renewed, hostname=lease.hostname))
    session = evidence.session_at_ip(ip, at)
    if session is not None:
        claims.append(Claim(SOURCE_RADIUS, session.mac, session.updated, username=session.username))
    winner = choose(claims)
    mac = winner.mac if winner is not None else None
    username = winner.username if winner is not None else None
    if username is None and mac is not None:
        signed_in = evidence.session_for_mac(mac, at)  # a user on that device, whatever its address
        username = signed_in.username if signed_in is not None else None
    if mac is not None:
        # A MAC is the device's identity; an address is not (a device that takes a registered
        # laptop's fixed address must not take on its role).
        device = register.by_mac(mac)
        source = winner.source if winner is not None else None
    else:
        device = register.by_ip(ip)
        source = SOURCE_REGISTER if device is not None else (winner.source if winner is not None else None)
    hostname = lease.hostname if lease is not None and lease.mac == mac else None
    if username is not None:
        return _signed_in(ip, mac, device, username, person=evidence.person(username), hostname=hostname)
    return _from_device(ip, mac, device, source, hostname)


def _from_device(ip: str, mac: str | None, device: RegisteredDevice | None, source: str | None,
                 hostname: str | None) -> Client:
    if device is None:
        # Unknown device: no role, so the policy applies its network's strictest role.
        return Client(ip=ip, mac=mac, device_name=hostname, identity_source=source if mac else None)
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
        identity_source=source,
    )


def _signed_in(ip: str, mac: str | None, device: RegisteredDevice | None, username: str, *,
               person: PersonInfo | None, hostname: str | None) -> Client:
    """A user signed in to the Wi-Fi with their own account: they are who is there, with the
    role their directory entry gives them (the device's own role if they are not in it)."""
    return Client(
        ip=ip,
        mac=mac,
        device_id=device.device_id if device else None,
        device_name=device.name if device else hostname,
        person_id=person.external_id if person else username,
        person_name=person.name if person else username,
        role=person.role if person and person.role else (device.role if device else None),
        year_group=person.year_group if person else None,
        groups=person.groups if person else frozenset(),
        trusts_school_ca=device.trusts_school_ca if device else False,
        ownership=device.ownership if device else None,
        identity_source=SOURCE_RADIUS,
    )
