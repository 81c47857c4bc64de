"""Kea's memfile lease CSV (`kea-leases4.csv`).

    address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,state,user_context,pool_id
    10.41.20.11,02:41:00:00:20:11,01:02:41:00:00:20:11,43200,1795435200,1,0,0,ipad-11,0,,0

Kea appends a row whenever a lease changes (its LFC compacts the file now and then): the
start is `expire - valid_lifetime`, a lifetime of 4294967295 never ends. `state` 0 is a
current lease, 2 (expired-reclaimed) and 3 (released) ended at `expire`, 1 (declined) has no
client and is skipped. Commas in a host name are written `&#x2c`. Columns are found by the
header's names, so older files without `pool_id` or `user_context` read the same. Only whole
lines are read (`consumed`): a line Kea is still writing waits for the next read.
"""

from __future__ import annotations

import csv
import io
import ipaddress

from schoolgate.identity.leaseformats import (
    DhcpLease,
    LeaseFile,
    LeaseFormatError,
    LeaseProblem,
    hostname_or_note,
    utc_from_timestamp,
)
from schoolgate.identity.macs import normalise_mac

INFINITE = 0xFFFFFFFF
STATE_DEFAULT, STATE_DECLINED = 0, 1


def parse_kea(text: str) -> LeaseFile:
    result = LeaseFile("kea")
    whole = text[: text.rfind("\n") + 1]  # whole lines only
    result.consumed = len(whole)
    lines = whole.splitlines()
    if not lines:
        return result
    header = [name.strip().lower() for name in lines[0].split(",")]
    columns = {name: index for index, name in enumerate(header)}
    missing = [name for name in ("address", "hwaddr", "valid_lifetime", "expire") if name not in columns]
    if missing:
        raise LeaseFormatError(f"line 1: not a Kea lease file (no column {', '.join(missing)})")
    for number, raw in enumerate(lines[1:], start=2):
        if not raw.strip() or raw.startswith("#"):
            continue
        try:
            (record,) = csv.reader(io.StringIO(raw))
        except (ValueError, csv.Error) as err:
            result.problems.append(LeaseProblem(number, raw, f"cannot be read as CSV ({err})"))
            continue

        def cell(name: str, record: list[str] = record) -> str:
            index = columns.get(name)
            return record[index].strip() if index is not None and index < len(record) else ""

        try:
            address = ipaddress.ip_address(cell("address"))
        except ValueError:
            result.problems.append(LeaseProblem(number, raw, f"{cell('address')!r} is not an IP address"))
            continue
        state_text = cell("state") or "0"
        if address.version != 4 or not cell("hwaddr") or state_text == str(STATE_DECLINED):
            result.skipped += 1
            continue
        mac = normalise_mac(cell("hwaddr"))
        lifetime, expire = cell("valid_lifetime"), cell("expire")
        if mac is None:
            result.problems.append(LeaseProblem(number, raw, f"{cell('hwaddr')!r} is not an Ethernet MAC address"))
            continue
        if not (lifetime.isdigit() and expire.isdigit() and state_text.isdigit()):
            result.problems.append(LeaseProblem(number, raw, "valid_lifetime, expire and state must be numbers"))
            continue
        hostname = hostname_or_note(cell("hostname").replace("&#x2c", ",") or None, number, raw, result)
        infinite = int(lifetime) == INFINITE
        starts = None if infinite else utc_from_timestamp(int(expire) - int(lifetime))
        ends = None if infinite else utc_from_timestamp(int(expire))
        active = int(state_text) == STATE_DEFAULT
        result.leases.append(DhcpLease(number, str(address), mac, hostname, starts, ends, active))
    return result
