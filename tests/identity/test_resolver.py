"""Resolving a client address to a policy Client through the register and neighbour table."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.identity import DeviceRegister, IdentityResolver, NeighbourTable, RegisterReloader, load_register
from schoolgate.identity.macs import normalise_mac
from schoolgate.identity.neighbours import parse_neighbours
from schoolgate.policy.types import Client, Ownership, Role
from schoolgate.store.models import Device, Person
from schoolgate.store.overlay import bump_generation

SITE = "testschool"


def seed(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        pupil = Person(site=SITE, external_id="p100", name="Ada Pupil", role="pupil", year_group=5, groups="5B, choir")
        teacher = Person(site=SITE, external_id="t7", name="Mr Teacher", role="staff")
        leaver = Person(site=SITE, external_id="p9", name="Left School", role="pupil", active=False)
        s.add_all([pupil, teacher, leaver])
        s.flush()
        s.add_all(
            [
                Device(site=SITE, device_id="IPAD-01", name="iPad 1", mac="02:00:00:00:01:01", person_id=pupil.id),
                Device(
                    site=SITE,
                    device_id="STAFF-LAP",
                    name="Staff laptop",
                    mac="02:00:00:00:02:02",
                    ip="10.10.0.20",
                    person_id=teacher.id,
                    trusts_school_ca=True,
                    ownership="school_owned",
                ),
                # a class set: the device's own role wins over its (staff) owner's
                Device(
                    site=SITE,
                    device_id="CLASS-3",
                    name="Class set 3",
                    mac="02:00:00:00:03:03",
                    role="pupil",
                    person_id=teacher.id,
                ),
                Device(site=SITE, device_id="PRINTER", name="Printer", ip="10.10.0.5"),
                Device(site=SITE, device_id="OLD", name="Old", mac="02:00:00:00:09:09", person_id=leaver.id),
                Device(
                    site=SITE, device_id="ODD", name="Odd", mac="02-00-00-00-0A-0A", role="wizard", ownership="lent"
                ),
                Device(site="elsewhere", device_id="X", name="X", mac="02:00:00:00:0f:0f", role="staff"),
            ]
        )


@pytest.fixture
def register(sessions: sessionmaker[Session]) -> DeviceRegister:
    seed(sessions)
    with sessions() as s:
        return load_register(s, SITE)


class FakeKernel:
    """A neighbour dump with the shape pyroute2 returns."""

    def __init__(self, entries: dict[str, str], state: int = 0x02) -> None:
        self.entries = entries
        self.state = state
        self.dumps = 0

    def __call__(self) -> Iterable[Mapping[str, Any]]:
        self.dumps += 1
        return [
            {"state": self.state, "attrs": [("NDA_DST", ip), ("NDA_LLADDR", mac)]} for ip, mac in self.entries.items()
        ]


def test_resolution_by_mac_from_the_neighbour_table(register: DeviceRegister) -> None:
    kernel = FakeKernel({"10.10.3.4": "02:00:00:00:01:01"})
    resolver = IdentityResolver(register, NeighbourTable(dump=kernel))
    assert resolver.resolve("10.10.3.4") == Client(
        ip="10.10.3.4",
        mac="02:00:00:00:01:01",
        device_id="IPAD-01",
        device_name="iPad 1",
        person_id="p100",
        person_name="Ada Pupil",
        role=Role.PUPIL,
        year_group=5,
        groups=frozenset({"5B", "choir"}),
        identity_source="neighbour",
    )


def test_resolution_by_a_mac_the_caller_already_knows(register: DeviceRegister) -> None:
    resolver = IdentityResolver(register, None)
    client = resolver.resolve("10.10.3.9", mac="02:00:00:00:02:02")
    assert (client.device_id, client.role, client.trusts_school_ca) == ("STAFF-LAP", Role.STAFF, True)
    assert client.ownership is Ownership.SCHOOL_OWNED


def test_ownership_not_recorded_or_unreadable_is_none(register: DeviceRegister) -> None:
    resolver = IdentityResolver(register, None)
    assert resolver.resolve("10.10.3.9", mac="02:00:00:00:01:01").ownership is None  # not recorded
    assert resolver.resolve("10.10.3.9", mac="02:00:00:00:0a:0a").ownership is None  # "lent": not a value
    assert resolver.resolve("10.10.3.77").ownership is None  # not in the register at all


def test_resolution_by_fixed_ip_when_no_mac_is_known(register: DeviceRegister) -> None:
    resolver = IdentityResolver(register, NeighbourTable(dump=FakeKernel({})))
    client = resolver.resolve("10.10.0.20")
    assert (client.device_id, client.person_id, client.role) == ("STAFF-LAP", "t7", Role.STAFF)
    assert client.mac == "02:00:00:00:02:02"
    printer = resolver.resolve("10.10.0.5")
    assert (printer.device_id, printer.role, printer.person_id) == ("PRINTER", None, None)


def test_unknown_devices_get_no_role(register: DeviceRegister) -> None:
    resolver = IdentityResolver(register, NeighbourTable(dump=FakeKernel({"10.10.9.9": "02:99:99:99:99:99"})))
    assert resolver.resolve("10.10.9.9") == Client(ip="10.10.9.9", mac="02:99:99:99:99:99", identity_source="neighbour")
    assert resolver.resolve("10.10.9.10") == Client(ip="10.10.9.10")
    # another site's device is not this site's
    assert resolver.resolve("10.10.9.11", mac="02:00:00:00:0f:0f").role is None


def test_device_role_overrides_the_owner_role(register: DeviceRegister) -> None:
    client = IdentityResolver(register).resolve("10.1.1.1", mac="02:00:00:00:03:03")
    assert (client.role, client.person_id) == (Role.PUPIL, "t7")


def test_inactive_people_and_unknown_roles_are_ignored(register: DeviceRegister) -> None:
    resolver = IdentityResolver(register)
    old = resolver.resolve("10.1.1.2", mac="02:00:00:00:09:09")
    assert (old.device_id, old.person_id, old.role) == ("OLD", None, None)
    odd = resolver.resolve("10.1.1.3", mac="02:00:00:00:0a:0a")  # stored with dashes, upper case
    assert (odd.device_id, odd.role) == ("ODD", None)


def test_ipv6_and_mapped_addresses_are_canonical(register: DeviceRegister) -> None:
    kernel = FakeKernel({"fd00::1:23": "02:00:00:00:01:01", "10.10.3.4": "02:00:00:00:02:02"})
    resolver = IdentityResolver(register, NeighbourTable(dump=kernel))
    assert resolver.resolve("fd00:0:0:0:0:0:1:23").device_id == "IPAD-01"
    client = resolver.resolve("::ffff:10.10.3.4")
    assert (client.ip, client.device_id) == ("10.10.3.4", "STAFF-LAP")


def test_answers_are_cached_per_ip_for_the_ttl(register: DeviceRegister) -> None:
    now = [100.0]
    kernel = FakeKernel({"10.10.3.4": "02:00:00:00:01:01"})
    table = NeighbourTable(dump=kernel, min_refresh=0.0)
    resolver = IdentityResolver(register, table, ttl=5.0, clock=lambda: now[0])
    assert resolver.resolve("10.10.3.4").device_id == "IPAD-01"
    kernel.entries["10.10.3.4"] = "02:00:00:00:02:02"  # the address moved to another device
    assert resolver.resolve("10.10.3.4").device_id == "IPAD-01"  # cached
    assert resolver.hits == 1
    now[0] += 5.1
    table.refresh()
    assert resolver.resolve("10.10.3.4").device_id == "STAFF-LAP"


def test_neighbour_table_refreshes_on_a_miss_at_most_every_interval() -> None:
    kernel = FakeKernel({})
    table = NeighbourTable(dump=kernel, min_refresh=3600)
    assert table.lookup("10.0.0.1") is None
    kernel.entries["10.0.0.1"] = "02:00:00:00:00:01"
    for _ in range(100):
        assert table.lookup("10.0.0.1") is None  # a flood of misses: no netlink storm
    assert kernel.dumps == 1
    table.refresh()
    assert table.lookup("10.0.0.1") == "02:00:00:00:00:01"


def test_neighbour_entries_without_a_usable_mac_are_ignored() -> None:
    messages = [
        {"state": 0x02, "attrs": [("NDA_DST", "10.0.0.1"), ("NDA_LLADDR", "02:00:00:00:00:01")]},
        {"state": 0x04, "attrs": [("NDA_DST", "10.0.0.2"), ("NDA_LLADDR", "02:00:00:00:00:02")]},  # stale
        {"state": 0x20, "attrs": [("NDA_DST", "10.0.0.3"), ("NDA_LLADDR", "02:00:00:00:00:03")]},  # failed
        {"state": 0x01, "attrs": [("NDA_DST", "10.0.0.4")]},  # incomplete
        {"state": 0x40, "attrs": [("NDA_DST", "ff02::16"), ("NDA_LLADDR", "33:33:00:00:00:16")]},  # noarp
        {"state": 0x80, "attrs": [("NDA_DST", "0.0.0.0"), ("NDA_LLADDR", "00:00:00:00:00:00")]},
    ]
    assert parse_neighbours(messages) == {"10.0.0.1": "02:00:00:00:00:01", "10.0.0.2": "02:00:00:00:00:02"}


def test_a_failing_netlink_read_is_survived() -> None:
    def broken() -> list[Mapping[str, Any]]:
        raise OSError("netlink went away")

    table = NeighbourTable(dump=broken, min_refresh=0)
    assert table.lookup("10.0.0.1") is None
    assert table.errors == 1


@pytest.mark.parametrize(
    ("text", "mac"),
    [
        ("02:AB:cd:00:11:22", "02:ab:cd:00:11:22"),
        ("02-ab-cd-00-11-22", "02:ab:cd:00:11:22"),
        ("02abcd001122", "02:ab:cd:00:11:22"),
        ("02:ab:cd:00:11", None),
        ("02:ab-cd:00:11:22", None),
        ("zz:ab:cd:00:11:22", None),
        ("", None),
    ],
)
def test_mac_spellings(text: str, mac: str | None) -> None:
    assert normalise_mac(text) == mac


def test_the_register_reloads_when_the_generation_moves(sessions: sessionmaker[Session]) -> None:
    seed(sessions)
    resolver = IdentityResolver(ttl=60)
    reloader = RegisterReloader(sessions, SITE, resolver)
    assert reloader.poll() is True
    assert resolver.resolve("10.1.1.1", mac="02:00:00:00:01:01").device_id == "IPAD-01"
    assert reloader.poll() is False  # nothing changed: no reload
    with sessions.begin() as s:
        s.add(Device(site=SITE, device_id="NEW", name="New", mac="02:00:00:00:0b:0b", role="guest"))
        bump_generation(s, SITE)
    assert reloader.poll() is True
    assert resolver.register.generation == 1
    assert resolver.resolve("10.1.1.9", mac="02:00:00:00:0b:0b").role is Role.GUEST
    assert len(resolver.register) == 7


def test_unknown_answers_are_cached_only_briefly(register: DeviceRegister) -> None:
    now = [100.0]
    kernel = FakeKernel({})
    table = NeighbourTable(dump=kernel, min_refresh=0.0)
    resolver = IdentityResolver(register, table, ttl=5.0, unknown_ttl=1.0, clock=lambda: now[0])
    assert resolver.resolve("10.10.3.4").device_id is None
    kernel.entries["10.10.3.4"] = "02:00:00:00:01:01"  # the neighbour entry appears
    now[0] += 1.1
    assert resolver.resolve("10.10.3.4").device_id == "IPAD-01"


@pytest.mark.parametrize(
    ("neighbour_mac", "device_id", "role"),
    [
        # A phone the register does not know, set to the staff laptop's fixed address: unknown,
        # so the policy gives it its network's role; never the laptop's role or name.
        ("02:66:66:66:66:66", None, None),
        # A registered pupil iPad on that address is still the pupil's iPad.
        ("02:00:00:00:01:01", "IPAD-01", Role.PUPIL),
        # The laptop itself.
        ("02:00:00:00:02:02", "STAFF-LAP", Role.STAFF),
        # No MAC to be seen (a routed network): the fixed address is all there is.
        (None, "STAFF-LAP", Role.STAFF),
    ],
)
def test_a_fixed_address_never_lends_its_device_to_another_mac(
    register: DeviceRegister, neighbour_mac: str | None, device_id: str | None, role: Role | None
) -> None:
    entries = {"10.10.0.20": neighbour_mac} if neighbour_mac else {}
    resolver = IdentityResolver(register, NeighbourTable(dump=FakeKernel(entries)))
    client = resolver.resolve("10.10.0.20")
    assert (client.device_id, client.role) == (device_id, role)
    if device_id is None:
        assert client == Client(ip="10.10.0.20", mac=neighbour_mac, identity_source="neighbour")
    # The same when the caller already knows the MAC (the gateway's NFLOG messages carry it).
    if neighbour_mac:
        direct = IdentityResolver(register).resolve("10.10.0.20", mac=neighbour_mac)
        assert (direct.device_id, direct.role) == (device_id, role)
