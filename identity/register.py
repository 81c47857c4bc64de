"""The device register as a frozen in-memory snapshot, for lookups on the DNS hot path.

Loaded from the database at the edge (daemon start, and whenever the ``policy_overlay``
generation moves) and swapped whole; lookups are plain dict reads with no lock and no I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from schoolgate.identity.macs import normalise_mac
from schoolgate.identity.neighbours import canonical_ip
from schoolgate.policy.types import Ownership, Role
from schoolgate.store.models import Device
from schoolgate.store.overlay import read_generation

log = logging.getLogger(__name__)


def parse_role(value: str | None) -> Role | None:
    if not value:
        return None
    try:
        return Role(value.strip().lower())
    except ValueError:
        return None


def _ownership(value: str | None, device_id: str) -> Ownership | None:
    if not value:
        return None
    try:
        return Ownership(value)
    except ValueError:
        log.warning("device %s has an unknown ownership %r: treated as not recorded", device_id, value)
        return None


def parse_groups(value: str | None) -> frozenset[str]:
    if not value:
        return frozenset()
    return frozenset(g.strip() for g in value.split(",") if g.strip())


@dataclass(frozen=True, slots=True)
class RegisteredDevice:
    """A device and its owner, flattened into what a Client needs."""

    device_id: str
    name: str
    mac: str | None
    ip: str | None
    role: Role | None  # the device's role if set, else its owner's
    person_id: str | None = None  # the person's external id (MIS id / username)
    person_name: str | None = None
    year_group: int | None = None
    groups: frozenset[str] = frozenset()
    trusts_school_ca: bool = False
    ownership: Ownership | None = None  # None: not recorded


def _mapping(items: Mapping[str, RegisteredDevice]) -> Mapping[str, RegisteredDevice]:
    return MappingProxyType(dict(items))


class DeviceRegister:
    """Immutable indexes of a site's devices: by MAC, by fixed IP and by device id."""

    __slots__ = ("_by_device_id", "_by_ip", "_by_mac", "generation", "site")

    def __init__(self, site: str, devices: Iterable[RegisteredDevice], generation: int = 0) -> None:
        self.site = site
        self.generation = generation
        by_mac: dict[str, RegisteredDevice] = {}
        by_ip: dict[str, RegisteredDevice] = {}
        by_id: dict[str, RegisteredDevice] = {}
        for device in devices:
            by_id[device.device_id] = device
            if device.mac:
                by_mac.setdefault(device.mac, device)
            if device.ip:
                by_ip.setdefault(canonical_ip(device.ip), device)
        self._by_mac = _mapping(by_mac)
        self._by_ip = _mapping(by_ip)
        self._by_device_id = _mapping(by_id)

    @classmethod
    def empty(cls, site: str = "") -> DeviceRegister:
        return cls(site, ())

    def by_mac(self, mac: str) -> RegisteredDevice | None:
        return self._by_mac.get(mac)

    def by_ip(self, ip: str) -> RegisteredDevice | None:
        return self._by_ip.get(ip)

    def by_device_id(self, device_id: str) -> RegisteredDevice | None:
        return self._by_device_id.get(device_id)

    def __len__(self) -> int:
        return len(self._by_device_id)

    def __iter__(self) -> Iterator[RegisteredDevice]:
        return iter(self._by_device_id.values())


def load_register(session: Session, site: str) -> DeviceRegister:
    """Read a site's devices (and their owners) into a fresh snapshot."""
    generation = read_generation(session, site)
    rows = session.scalars(
        select(Device).where(Device.site == site).options(selectinload(Device.person)).order_by(Device.id)
    )
    devices: list[RegisteredDevice] = []
    for row in rows:
        person = row.person if row.person is not None and row.person.active else None
        role = parse_role(row.role)
        if row.role and role is None:
            log.warning("device %s has an unknown role %r: ignored", row.device_id, row.role)
        if role is None and person is not None:
            role = parse_role(person.role)
            if role is None and person.role:
                log.warning("person %s has an unknown role %r: ignored", person.external_id, person.role)
        mac = normalise_mac(row.mac) if row.mac else None
        devices.append(
            RegisteredDevice(
                device_id=row.device_id,
                name=row.name,
                mac=mac,
                ip=row.ip or None,
                role=role,
                person_id=person.external_id if person else None,
                person_name=person.name if person else None,
                year_group=person.year_group if person else None,
                groups=parse_groups(person.groups) if person else frozenset(),
                trusts_school_ca=row.trusts_school_ca,
                ownership=_ownership(row.ownership, row.device_id),
            )
        )
    return DeviceRegister(site, devices, generation)
