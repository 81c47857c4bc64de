"""How often a school device may file the forms that need no account (appendix A and B).

Anyone on the school network can ask for a blocked site or report content, identified by the
device the appliance finds from the connection's address and a name they give. Each filing
e-mails or queues work for a technician, so a device (and the address it uses, an IPv6 client
by its /64, since it can pick any address in its network) gets a number of filings per rolling
day, fewer for a pupil's device: a pupil cannot flood the technicians, a teaching assistant
reporting what a class saw can still do so several times.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from schoolgate.services.errors import RateLimited

UNKNOWN = "unknown"
WINDOW = timedelta(days=1)


def client_unit(address: str | None) -> str:
    """The unit an address is counted by: an IPv4 address, or the /64 of an IPv6 address."""
    try:
        ip = ipaddress.ip_address((address or "").split("%", 1)[0])
    except ValueError:
        return UNKNOWN
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass(frozen=True, slots=True)
class Allowance:
    """Filings per rolling day from one device or address."""

    pupil: int
    other: int

    def for_role(self, role: str | None) -> int:
        return self.pupil if role in (None, "pupil", "guest", "supervised") else self.other


@dataclass(frozen=True, slots=True)
class Filer:
    """Who is filing, as the appliance found them (never as the form says)."""

    device_id: str | None
    client_ip: str | None
    role: str | None  # the device's role (register, or the role of its network); None: unknown


def check(
    earlier: Iterable[tuple[str | None, str | None]], filer: Filer, allowance: Allowance, *, what: str
) -> None:
    """Refuse the filing if the device, or its address's unit, has used its day's allowance.

    `earlier`: (device_id, client_ip) of the filings of the last day (WINDOW)."""
    if filer.device_id is None and filer.client_ip is None:
        return  # a member of staff signed in to the console: their account is who they are
    unit = client_unit(filer.client_ip) if filer.client_ip else None
    count = 0
    for device_id, client_ip in earlier:
        same_device = filer.device_id is not None and device_id == filer.device_id
        same_unit = unit is not None and unit != UNKNOWN and client_ip is not None and client_unit(client_ip) == unit
        if same_device or same_unit:
            count += 1
    limit = allowance.for_role(filer.role)
    if count >= limit:
        raise RateLimited(
            f"This device has sent {count} {what} today, the most it may. If it is urgent, please tell an "
            "ICT technician or the DSL in person."
        )


def since(now: datetime) -> datetime:
    return now - WINDOW
