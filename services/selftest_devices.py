"""The self-test's own "devices": the appliance's probe addresses, in the device register.

The self-test asks from an address of the appliance in each role's network (see
schoolgate.selftest.vantage). Registering each as a device (kind `selftest`, no owner, no role
of its own, so the network's role applies as for any unknown device) makes their events say
plainly "schoolgate self-test" in the activity log, and lets the alert rules, the rollups and
the digest leave them out: a self-test is not a pupil trying blocked sites.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from schoolgate.services.actor import Actor
from schoolgate.services.common import audit, bump_overlay
from schoolgate.store.models import Device

DEVICE_PREFIX = "schoolgate-selftest-"
KIND = "selftest"
ACTOR = Actor(name="system:selftest", display_name="schoolgate self-test")


def device_id_for(network: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", network.lower()).strip("-") or "network"
    return (DEVICE_PREFIX + slug)[:100]


def is_selftest(device_id: str | None) -> bool:
    return bool(device_id) and str(device_id).startswith(DEVICE_PREFIX)


def not_selftest(column: Any) -> Any:
    """SQL: the row is not a self-test device's (for event queries)."""
    return or_(column.is_(None), ~column.startswith(DEVICE_PREFIX, autoescape=True))


def register_probes(session: Session, site: str, probes: Sequence[tuple[str, str]], now: datetime) -> bool:
    """Make the register hold exactly these (network name, address) probes; True if it changed.

    Changes are audited and the overlay generation bumped (DNS and the proxy reload the
    register within seconds); the caller commits.
    """
    wanted = {device_id_for(network): (network, address) for network, address in probes}
    existing = {d.device_id: d for d in session.scalars(select(Device).where(Device.site == site, Device.kind == KIND))}
    changed = False
    for device_id, (network, address) in wanted.items():
        name = f"schoolgate self-test ({network})"
        row = existing.pop(device_id, None)
        if row is None:
            # An address taken by another device is the technician's to sort out: never steal it.
            holder = session.scalars(select(Device).where(Device.site == site, Device.ip == address)).first()
            if holder is not None:
                continue
            session.add(Device(site=site, device_id=device_id, name=name, mac=None, ip=address, kind=KIND, role=None,
                               notes="the appliance's own address in this network, for its self-test",
                               created_at=now))
        elif (row.ip, row.name) == (address, name):
            continue
        else:
            row.ip, row.name = address, name
        audit(session, site=site, actor=ACTOR, action="device.selftest", object_type="device", object_id=device_id,
              detail={"ip": address, "network": network}, now=now)
        changed = True
    for device_id, row in existing.items():
        session.delete(row)
        audit(session, site=site, actor=ACTOR, action="device.selftest.remove", object_type="device",
              object_id=device_id, detail={}, now=now)
        changed = True
    if changed:
        session.flush()
        bump_overlay(session, site=site, now=now)
    return changed
