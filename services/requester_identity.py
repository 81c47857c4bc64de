"""Who sent a block-page request, found from the connection's address, never from the form.

The block page's link carries a device value, but anyone can edit a link. The device a
request is filed under decides which open request it merges into and whom the exception is
proposed for, so it must come from what the appliance itself knows about the address:

1. the neighbour table's MAC for the address (when the console runs on the gateway), then the
   device register by MAC, then by fixed IP (the same lookup DNS and the proxy use);
2. failing that, the device DNS or the proxy last logged for this address a few minutes ago
   (they resolved it with the MAC in hand), so a console that is not on the gateway still
   finds DHCP devices.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from schoolgate.store.models import AccessEvent

#: How old a logged event may be to vouch for an address's device (DHCP leases move slowly,
#: but an address can change hands when a device leaves).
RECENT_TRAFFIC = timedelta(minutes=10)

FROM_REGISTER = "register"
FROM_TRAFFIC = "recent traffic"


class MacLookup(Protocol):
    def lookup(self, ip: str) -> str | None: ...


@dataclass(frozen=True, slots=True)
class VerifiedRequester:
    device_id: str
    person_id: str | None
    found_by: str  # FROM_REGISTER or FROM_TRAFFIC
    role: str | None = None  # the device's role (its own, or its owner's); None: not known


def identify_requester(
    session: Session, site: str, ip: str | None, now: datetime, neighbours: MacLookup | None = None
) -> VerifiedRequester | None:
    """The registered device behind `ip`, or None when the appliance does not know it."""
    if not ip:
        return None
    from schoolgate.identity.neighbours import canonical_ip
    from schoolgate.identity.register import load_register
    from schoolgate.identity.resolver import IdentityResolver

    try:
        address = canonical_ip(ip)
    except ValueError:
        return None
    resolver = IdentityResolver(load_register(session, site), neighbours)  # type: ignore[arg-type]
    client = resolver.resolve(address)
    if client.device_id:
        return VerifiedRequester(
            client.device_id, client.person_id, FROM_REGISTER, client.role.value if client.role else None
        )
    event = session.scalars(
        select(AccessEvent)
        .where(
            AccessEvent.site == site,
            AccessEvent.client_ip == address,
            AccessEvent.ts >= now - RECENT_TRAFFIC,
            AccessEvent.ts <= now + timedelta(minutes=1),
            AccessEvent.device_id.is_not(None),
        )
        .order_by(AccessEvent.ts.desc(), AccessEvent.id.desc())
        .limit(1)
    ).first()
    if event is None or not event.device_id:
        return None
    return VerifiedRequester(event.device_id, event.person_id or None, FROM_TRAFFIC, event.role or None)
