"""Windows Server DHCP: the CSV of `Get-DhcpServerv4Lease -ScopeId ... | Export-Csv`.

What Windows puts in such a file, all of which is read here:

- Windows PowerShell writes a `#TYPE Microsoft.Management...DhcpServerv4Lease` line first
  (without -NoTypeInformation), then a header row; every field is in double quotes;
- the encoding is UTF-16 or UTF-8, with or without a byte-order mark (decoded before this,
  by schoolgate.identity.exports);
- `ClientId` is the MAC as `aa-bb-cc-dd-ee-ff`, or with the hardware type in front
  (`01-aa-bb-cc-dd-ee-ff`) for a client that sent one, or without separators;
- `LeaseExpiryTime` is the server's local time in the server's regional format:
  `25/11/2026 14:03:22` (UK), `11/25/2026 2:03:22 PM` (US), `25.11.2026 14:03:22`, or ISO.
  Which number is the day is decided from the whole file (a 13 or more can only be a day);
  a file whose every date could be either is read day first, as UK servers write, unless
  told otherwise. A reservation has no expiry: it never ends;
- `AddressState` says whether the lease is current: Active and ActiveReservation are; a
  declined, expired or inactive one is skipped.

The export has no start time: the lease is taken to start when schoolgate first sees it.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import re
from datetime import datetime, tzinfo

from schoolgate.identity.leaseformats import (
    DhcpLease,
    LeaseFile,
    LeaseFormatError,
    LeaseProblem,
    hostname_or_note,
)
from schoolgate.identity.macs import normalise_mac

_DATE = re.compile(
    r"^(?P<a>\d{1,4})[./-](?P<b>\d{1,2})[./-](?P<c>\d{1,4})[ T]+"
    r"(?P<h>\d{1,2}):(?P<m>\d{2})(?::(?P<s>\d{2}))?(?:\.\d+)?\s*(?P<ampm>[AaPp]\.?[Mm]\.?)?$"
)
CURRENT_STATES = {"active", "activereservation"}
KNOWN_STATES = CURRENT_STATES | {"inactivereservation", "declined", "expired", "offered", "inactive"}


def client_mac(client_id: str) -> str | None:
    """The MAC in a Windows ClientId: 6 octets, or 7 with the Ethernet hardware type (01) first."""
    digits = re.sub(r"[\s:.\-]", "", client_id.strip()).lower()
    if len(digits) == 14 and digits.startswith("01"):
        digits = digits[2:]
    return normalise_mac(digits) if len(digits) == 12 else None


def _date_parts(text: str) -> re.Match[str] | None:
    return _DATE.match(text.strip())


def decide_day_first(values: list[str], default: bool | None) -> bool:
    """Day first or month first, from every date in the file.

    A first number above 12 can only be a day, a second above 12 only a day too (month first).
    Contradicting dates mean the file was edited by hand: then the default decides and the
    dates that do not fit become problems.
    """
    day_first_seen = month_first_seen = False
    for value in values:
        match = _date_parts(value)
        if match is None or len(match["a"]) == 4:
            continue
        first, second = int(match["a"]), int(match["b"])
        day_first_seen |= first > 12
        month_first_seen |= second > 12
    if day_first_seen != month_first_seen:
        return day_first_seen
    return True if default is None else default


def parse_local_time(text: str, *, day_first: bool, tz: tzinfo) -> datetime:
    match = _date_parts(text)
    if match is None:
        raise ValueError(f"{text!r} is not a date and time")
    if len(match["a"]) == 4:
        year, month, day = int(match["a"]), int(match["b"]), int(match["c"])
    else:
        first, second, year = int(match["a"]), int(match["b"]), int(match["c"])
        if year < 100:
            year += 2000
        day, month = (first, second) if day_first else (second, first)
    hour, minute, second_ = int(match["h"]), int(match["m"]), int(match["s"] or 0)
    ampm = (match["ampm"] or "").replace(".", "").lower()
    if ampm:
        if not 1 <= hour <= 12:
            raise ValueError(f"{text!r}: hour {hour} with {ampm.upper()}")
        hour = hour % 12 + (12 if ampm == "pm" else 0)
    try:
        return datetime(year, month, day, hour, minute, second_, tzinfo=tz)
    except ValueError as err:
        raise ValueError(f"{text!r} is not a real date ({err})") from err


def _strip_type_lines(text: str) -> tuple[str, int]:
    """Drop PowerShell's `#TYPE ...` (and any other `#`) lines before the header."""
    lines = text.splitlines(keepends=True)
    skipped = 0
    while skipped < len(lines) and lines[skipped].lstrip().startswith("#"):
        skipped += 1
    return "".join(lines[skipped:]), skipped


def parse_windows(text: str, *, tz: tzinfo, day_first: bool | None = None) -> LeaseFile:
    body, offset = _strip_type_lines(text)
    reader = csv.reader(io.StringIO(body, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise LeaseFormatError("the file is empty: no header row") from None
    except csv.Error as err:
        raise LeaseFormatError(f"line {offset + 1}: the header cannot be read ({err})") from err
    columns = {name.strip().lower(): index for index, name in enumerate(header)}
    missing = [name for name in ("ipaddress", "clientid") if name not in columns]
    if missing:
        raise LeaseFormatError(
            f"line {offset + 1}: not a Get-DhcpServerv4Lease export (no column "
            f"{' or '.join(n.replace('ipaddress', 'IPAddress').replace('clientid', 'ClientId') for n in missing)})"
        )
    records: list[tuple[int, list[str]]] = []
    result = LeaseFile("windows")
    line = offset + reader.line_num + 1
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            result.problems.append(LeaseProblem(line, "", f"cannot be read as CSV ({err})"))
            line = offset + reader.line_num + 1
            continue
        start, line = line, offset + reader.line_num + 1
        if any(cell.strip() for cell in record):
            records.append((start, record))
    expiry_at = columns.get("leaseexpirytime")
    dates = [r[expiry_at] for _, r in records if expiry_at is not None and expiry_at < len(r) and r[expiry_at]]
    order = decide_day_first(dates, day_first)

    def cell(record: list[str], name: str) -> str:
        index = columns.get(name)
        return record[index].strip() if index is not None and index < len(record) else ""

    for number, record in records:
        raw = ",".join(record)
        state = cell(record, "addressstate").replace(" ", "").lower()
        if state and state not in KNOWN_STATES:
            result.problems.append(LeaseProblem(number, raw, f"unknown AddressState {state!r}"))
            continue
        if state and state not in CURRENT_STATES:
            result.skipped += 1
            continue
        try:
            address = ipaddress.ip_address(cell(record, "ipaddress"))
        except ValueError:
            result.problems.append(LeaseProblem(number, raw, f"{cell(record, 'ipaddress')!r} is not an IP address"))
            continue
        if address.version != 4:
            result.skipped += 1
            continue
        mac = client_mac(cell(record, "clientid"))
        if mac is None:
            result.problems.append(
                LeaseProblem(number, raw, f"ClientId {cell(record, 'clientid')!r} is not an Ethernet MAC address")
            )
            continue
        try:
            expiry = cell(record, "leaseexpirytime")
            ends = parse_local_time(expiry, day_first=order, tz=tz) if expiry else None
        except ValueError as err:
            result.problems.append(LeaseProblem(number, raw, str(err)))
            continue
        hostname = hostname_or_note(cell(record, "hostname") or None, number, raw, result)
        result.leases.append(DhcpLease(number, str(address), mac, hostname, None, ends))
    result.consumed = len(text)
    return result
