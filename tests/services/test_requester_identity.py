"""The block-page requester's device, found from the connection's address (never the link)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session

from schoolgate.services import register
from schoolgate.services.actor import Actor
from schoolgate.services.requester_identity import FROM_REGISTER, FROM_TRAFFIC, identify_requester
from schoolgate.store.models import AccessEvent

SITE = "testschool"


class Neighbours:
    """The kernel's neighbour table, as the gateway sees it."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table

    def lookup(self, ip: str) -> str | None:
        return self.table.get(ip)


def _setup(session: Session, technician: Actor, now):  # type: ignore[no-untyped-def]
    register.create_person(session, site=SITE, now=now, actor=technician,
                           form=register.PersonForm(external_id="p1", name="Amira", role="pupil"))
    register.create_device(session, site=SITE, now=now, actor=technician, form=register.DeviceForm(
        device_id="FIXED-1", name="Fixed PC", ip="10.20.0.5"))
    register.create_device(session, site=SITE, now=now, actor=technician, form=register.DeviceForm(
        device_id="LAPTOP-12", name="Laptop 12", mac="02:00:00:00:00:12", owner="p1"))
    register.create_device(session, site="otherschool", now=now, actor=technician, form=register.DeviceForm(
        device_id="OTHER-1", name="Other school PC", ip="10.20.0.6"))
    session.add(AccessEvent(site=SITE, ts=now - timedelta(minutes=2), source="dns", client_ip="10.20.0.40",
                            device_id="DHCP-40", person_id="p9", role="pupil", host="example.org", verdict="block",
                            rule_id="r", count=1))
    session.add(AccessEvent(site=SITE, ts=now - timedelta(minutes=30), source="dns", client_ip="10.20.0.41",
                            device_id="OLD-41", role="pupil", host="example.org", verdict="block", rule_id="r",
                            count=1))
    session.flush()


@pytest.mark.parametrize(
    ("ip", "neighbours", "device", "person", "found_by"),
    [
        ("10.20.0.5", {}, "FIXED-1", None, FROM_REGISTER),  # the register's fixed address
        ("10.20.0.12", {"10.20.0.12": "02:00:00:00:00:12"}, "LAPTOP-12", "p1", FROM_REGISTER),  # by MAC
        ("::ffff:10.20.0.5", {}, "FIXED-1", None, FROM_REGISTER),  # IPv4-mapped spelling
        ("10.20.0.40", {}, "DHCP-40", "p9", FROM_TRAFFIC),  # logged by DNS two minutes ago
        ("10.20.0.41", {}, None, None, None),  # logged too long ago to vouch
        ("10.20.0.6", {}, None, None, None),  # another school's device
        ("10.20.0.99", {"10.20.0.99": "02:00:00:00:00:99"}, None, None, None),  # unknown MAC
        ("not an address", {}, None, None, None),
        (None, {}, None, None, None),
    ],
)
def test_identify_requester(
    session: Session,
    technician: Actor,
    ip: str | None,
    neighbours: dict[str, str],
    device: str | None,
    person: str | None,
    found_by: str | None,
) -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 10, 6, 9, 0, tzinfo=UTC)
    _setup(session, technician, now)
    found = identify_requester(session, SITE, ip, now, Neighbours(neighbours))
    if device is None:
        assert found is None
    else:
        assert found is not None
        assert (found.device_id, found.person_id, found.found_by) == (device, person, found_by)
