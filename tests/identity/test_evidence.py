"""Deciding between identity sources: the fresher, stronger claim wins; the event says which."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schoolgate.identity.evidence import (
    SESSION_STALE,
    Claim,
    Evidence,
    LeaseSpan,
    PersonInfo,
    SessionSpan,
    choose,
    identify,
    username_keys,
)
from schoolgate.identity.register import DeviceRegister, RegisteredDevice
from schoolgate.policy.types import Role

NOW = datetime(2026, 11, 23, 10, 15, tzinfo=UTC)
M = timedelta(minutes=1)
A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
IP = "10.42.0.21"
REGISTER = DeviceRegister("s", [
    RegisteredDevice("class-ipad", "Class iPad", A, None, Role.PUPIL, "p1", "Ada Pupil", year_group=5),
    RegisteredDevice("printer", "Printer", None, "10.42.0.5", None),
])
CARA = PersonInfo("s-001", "Cara Teacher", Role.STAFF, groups=frozenset({"teachers"}))
PEOPLE = {"s-001": CARA, "cara.teacher@kingswood.sch.uk": CARA, "cara.teacher": CARA}


@pytest.mark.parametrize(
    ("claims", "winner"),
    [
        ([Claim("dhcp", A, NOW - 30 * M), Claim("radius", B, NOW - 10 * M)], "radius"),  # fresher
        ([Claim("dhcp", A, NOW - 5 * M), Claim("radius", B, NOW - 40 * M)], "dhcp"),  # fresher, though weaker
        ([Claim("dhcp", A, NOW - 10 * M), Claim("radius", B, NOW - 10 * M - 30 * timedelta(seconds=1))], "radius"),
        ([Claim("neighbour", A, NOW), Claim("radius", B, NOW - 10 * M)], "neighbour"),  # seen on the wire now
        ([Claim("neighbour", A, NOW), Claim("frame", B, NOW)], "frame"),  # the packet itself
        ([], None),
    ],
)
def test_choose(claims: list[Claim], winner: str | None) -> None:
    chosen = choose(claims)
    assert (chosen.source if chosen else None) == winner


@pytest.mark.parametrize(
    ("username", "keys"),
    [
        ("Cara.Teacher@Kingswood.sch.uk", ["cara.teacher@kingswood.sch.uk", "cara.teacher"]),
        ("KINGSWOOD\\cteacher", ["kingswood\\cteacher", "cteacher"]),
        ("s-001", ["s-001"]),
    ],
)
def test_username_keys(username: str, keys: list[str]) -> None:
    assert username_keys(username) == keys


def test_a_signed_in_member_of_staff_is_themselves_with_their_directory_role() -> None:
    evidence = Evidence("s", sessions=[SessionSpan("Cara.Teacher@kingswood.sch.uk", B, IP, NOW - 20 * M,
                                                   NOW - 5 * M, None)], people=PEOPLE)
    client = identify(IP, at=NOW, register=REGISTER, evidence=evidence)
    assert (client.mac, client.person_id, client.person_name, client.role, client.groups, client.identity_source) == (
        B, "s-001", "Cara Teacher", Role.STAFF, frozenset({"teachers"}), "radius")
    assert client.device_id is None  # her own phone: not in the register


def test_a_user_not_in_the_directory_is_still_named_and_gets_no_role() -> None:
    evidence = Evidence("s", sessions=[SessionSpan("visitor42", B, IP, NOW - 20 * M, NOW - 5 * M, None)])
    client = identify(IP, at=NOW, register=REGISTER, evidence=evidence)
    assert (client.person_id, client.person_name, client.role, client.identity_source) == (
        "visitor42", "visitor42", None, "radius")


def test_signing_in_on_a_registered_device_names_the_user_on_it() -> None:
    evidence = Evidence("s", sessions=[SessionSpan("s-001", A, None, NOW - 20 * M, NOW - 5 * M, None)], people=PEOPLE)
    client = identify(IP, at=NOW, register=REGISTER, evidence=evidence, neighbour_mac=A)
    assert (client.device_id, client.person_name, client.role, client.identity_source) == (
        "class-ipad", "Cara Teacher", Role.STAFF, "radius")


def test_a_lease_and_radius_disagree_and_the_fresher_wins() -> None:
    lease = LeaseSpan(A, "class-ipad", NOW - 3 * 60 * M, NOW + 9 * 60 * M, renewed=NOW - 60 * M)
    stale_session = SessionSpan("s-001", B, IP, NOW - 5 * 60 * M, NOW - 2 * 60 * M, None)
    evidence = Evidence("s", leases={IP: [lease]}, sessions=[stale_session], people=PEOPLE)
    client = identify(IP, at=NOW, register=REGISTER, evidence=evidence)
    assert (client.mac, client.device_id, client.person_name, client.identity_source) == (
        A, "class-ipad", "Ada Pupil", "dhcp")
    fresh_session = SessionSpan("s-001", B, IP, NOW - 5 * 60 * M, NOW - 10 * M, None)
    evidence = Evidence("s", leases={IP: [lease]}, sessions=[fresh_session], people=PEOPLE)
    client = identify(IP, at=NOW, register=REGISTER, evidence=evidence)
    assert (client.mac, client.person_name, client.identity_source) == (B, "Cara Teacher", "radius")


def test_sessions_end_at_stop_or_when_stale() -> None:
    stopped = SessionSpan("s-001", B, IP, NOW - 60 * M, NOW - 30 * M, NOW - M)
    assert identify(IP, at=NOW, register=REGISTER, evidence=Evidence("s", sessions=[stopped])).person_id is None
    forgotten = SessionSpan("s-001", B, IP, NOW - SESSION_STALE - 90 * M, NOW - SESSION_STALE - M, None)
    assert identify(IP, at=NOW, register=REGISTER, evidence=Evidence("s", sessions=[forgotten])).person_id is None


def test_the_lease_of_the_time_and_its_host_name() -> None:
    evidence = Evidence("s", leases={IP: [
        LeaseSpan(B, "someones-phone", NOW - 120 * M, NOW - 60 * M, NOW - 120 * M),
        LeaseSpan("02:00:00:00:00:0c", "new-phone", NOW - 60 * M, NOW + 60 * M, NOW - 60 * M),
    ]})
    client = identify(IP, at=NOW, register=REGISTER, evidence=evidence)
    assert (client.mac, client.device_name, client.identity_source) == ("02:00:00:00:00:0c", "new-phone", "dhcp")
    earlier = identify(IP, at=NOW - 90 * M, register=REGISTER, evidence=evidence)
    assert (earlier.mac, earlier.device_name) == (B, "someones-phone")


def test_the_register_address_only_when_no_mac_is_seen() -> None:
    empty = Evidence.empty()
    assert identify("10.42.0.5", at=NOW, register=REGISTER, evidence=empty).identity_source == "register"
    by_mac = identify("10.42.0.5", at=NOW, register=REGISTER, evidence=empty, neighbour_mac=B)
    assert (by_mac.device_id, by_mac.identity_source) == (None, "neighbour")
    assert identify("10.42.0.99", at=NOW, register=REGISTER, evidence=empty).identity_source is None
