"""DHCP lease files from the school's own DHCP server, read into one shape.

A lease ties an address to a MAC (and a host name) from a start to an end, so an event can be
put down to the device that held the address at the time. Four servers are understood:

- `windows`: Windows Server DHCP, `Get-DhcpServerv4Lease | Export-Csv` (schoolgate.identity.leaseformats.windows);
- `isc`: ISC dhcpd's `dhcpd.leases` journal (.isc);
- `kea`: Kea's memfile lease CSV, `kea-leases4.csv` (.kea);
- `dnsmasq`: dnsmasq's lease file (.dnsmasq).

Parsing is pure: text in, leases and problems out. A record that cannot be read becomes a
problem with its line number and the rest of the file is read all the same.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo

FORMATS = ("windows", "isc", "kea", "dnsmasq")
MAX_NAME = 100  # Device.device_id's length: a host name may become a device id
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?$")


class LeaseFormatError(ValueError):
    """The whole file is not a lease file of the format asked for (a bad record is a problem)."""


@dataclass(frozen=True)
class LeaseProblem:
    line: int
    text: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}: {self.text[:120]!r}"


@dataclass(frozen=True, slots=True)
class DhcpLease:
    """One lease as the server recorded it. Times are aware (UTC for the servers that say so,
    the school's time zone for Windows' local times)."""

    line: int  # where the record starts in the file
    ip: str
    mac: str  # lower case, colon separated
    hostname: str | None
    starts: datetime | None  # None: the file does not say (Windows, dnsmasq)
    ends: datetime | None  # None: the lease never ends (a reservation, an infinite lease)
    active: bool = True  # False: released, expired or free: the end is when it stopped


@dataclass
class LeaseFile:
    format: str
    leases: list[DhcpLease] = field(default_factory=list)
    problems: list[LeaseProblem] = field(default_factory=list)
    skipped: int = 0  # records that are not IPv4 Ethernet leases (DHCPv6, declined, no MAC)
    consumed: int = 0  # characters of the text that held whole records (for following a file)

    def summary(self) -> str:
        parts = [f"{len(self.leases)} leases ({self.format})"]
        if self.skipped:
            parts.append(f"{self.skipped} records without an IPv4 address and MAC skipped")
        if self.problems:
            parts.append(f"{len(self.problems)} bad records skipped")
        return ", ".join(parts)


def clean_hostname(text: str | None) -> str | None:
    """A host name as a lease gives it, or None; raises ValueError for one that is not a name."""
    if text is None:
        return None
    name = text.strip().rstrip(".")
    if not name or name == "*":
        return None
    if len(name) > MAX_NAME or not _HOSTNAME.match(name):
        raise ValueError(f"host name {name!r} is not a valid host name")
    return name


def hostname_or_note(text: str | None, line: int, raw: str, result: LeaseFile) -> str | None:
    """The host name, or None with a problem noted: a bad name never costs the lease itself."""
    try:
        return clean_hostname(text)
    except ValueError as err:
        result.problems.append(LeaseProblem(line, raw, f"{err}; the lease is kept without it"))
        return None


def detect_format(text: str) -> str | None:
    """The format of a lease file from its first records, or None if it is none of them."""
    head = text.lstrip("\ufeff")[:8192]
    first = next((line.strip() for line in head.splitlines() if line.strip()), "")
    lowered = first.lower()
    if lowered.startswith("#type") or ("ipaddress" in lowered and "clientid" in lowered):
        return "windows"
    if lowered.replace(" ", "").startswith("address,hwaddr"):
        return "kea"
    if re.search(r"(?m)^\s*(lease6?\s+\S+\s*\{|server-duid\s|authoring-byte-order\s)", head):
        return "isc"
    if re.match(r"^\d+\s+\S+\s+\S+\s+\S+(\s+\S+)?$", first):
        return "dnsmasq"
    return None


Parser = Callable[..., LeaseFile]


# How a Windows export's dates are read ([identity] lease_date_order, --date-order): None = decide
# from the file's own dates.
DATE_ORDERS: dict[str, bool | None] = {"auto": None, "day-first": True, "month-first": False}


def parse_lease_file(text: str, fmt: str = "auto", *, tz: tzinfo, day_first: bool | None = None) -> LeaseFile:
    """Parse a whole lease file. `tz`: the zone of times a file writes without one (Windows);
    `day_first`: Windows' date order if the file cannot show it (None: decided from the file,
    else day first, as UK servers write)."""
    text = text.lstrip("\ufeff")
    if fmt == "auto":
        found = detect_format(text)
        if found is None:
            raise LeaseFormatError(
                "this is not a lease file schoolgate knows (Windows DHCP CSV, ISC dhcpd.leases, Kea CSV or dnsmasq)"
            )
        fmt = found
    if fmt not in FORMATS:
        raise LeaseFormatError(f"unknown lease format {fmt!r} (one of: {', '.join(FORMATS)})")
    if fmt == "windows":
        from schoolgate.identity.leaseformats.windows import parse_windows

        return parse_windows(text, tz=tz, day_first=day_first)
    if fmt == "isc":
        from schoolgate.identity.leaseformats.isc import parse_isc

        return parse_isc(text)
    if fmt == "kea":
        from schoolgate.identity.leaseformats.kea import parse_kea

        return parse_kea(text)
    from schoolgate.identity.leaseformats.dnsmasq import parse_dnsmasq

    return parse_dnsmasq(text)


def utc_from_timestamp(seconds: int) -> datetime:
    from datetime import UTC

    return datetime.fromtimestamp(seconds, UTC)
