"""RADIUS accounting from the school's Wi-Fi controller: one datagram in, one record out.

The controller sends an Accounting-Request (RFC 2866) when a device's session starts, now and
then while it lasts (Interim-Update) and when it stops; each names the user who signed in
(User-Name), the device (Calling-Station-Id: its MAC) and, once it has one, its address
(Framed-IP-Address). pyrad decodes the packet and checks its Request Authenticator against
the controller's shared secret; this module turns what it says into an `AccountingRecord`,
or a `BadPacket` that says why the packet was dropped (RFC 2866: silently, and counted).
No I/O here: the server (schoolgate.identity.radiusserver) does the sockets and the database.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from importlib import resources
from typing import Any

from schoolgate.identity.macs import normalise_mac

ACCOUNTING_REQUEST = 4
STATUSES = {"Start": "start", "Stop": "stop", "Interim-Update": "interim", "Accounting-On": "on",
            "Accounting-Off": "off"}
MAX_DELAY_S = 3600  # an Acct-Delay-Time beyond an hour is a confused controller, not a late packet


class BadPacket(Exception):
    """Why a datagram was dropped; `kind` names the counter it goes to."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AccountingRecord:
    status: str  # start, interim, stop, on, off
    nas: str  # which controller (NAS-Identifier, NAS-IP-Address, or the sender's address)
    session_id: str
    username: str
    mac: str | None
    ip: str | None
    at: datetime  # when the controller saw it: received, less Acct-Delay-Time
    terminate_cause: str = ""


@dataclass(frozen=True)
class RadiusClient:
    """A controller allowed to send accounting: its address (or range) and shared secret."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    secret: bytes


@lru_cache(maxsize=1)
def dictionary() -> Any:
    """The attribute dictionary (identity/data/radius-dictionary.txt), parsed once."""
    import io

    from pyrad.dictionary import Dictionary

    text = resources.files("schoolgate.identity").joinpath("data/radius-dictionary.txt").read_text()
    return Dictionary(io.StringIO(text))


def secret_for(clients: list[RadiusClient], sender: str) -> bytes | None:
    address = ipaddress.ip_address(sender.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for client in clients:
        if address in client.network:
            return client.secret
    return None


_OCTETS = re.compile(r"^([0-9A-Fa-f]{2})([-:]?)([0-9A-Fa-f]{2})\2([0-9A-Fa-f]{2})\2([0-9A-Fa-f]{2})\2"
                     r"([0-9A-Fa-f]{2})\2([0-9A-Fa-f]{2})(?![0-9A-Fa-f])")
_CISCO = re.compile(r"^([0-9A-Fa-f]{4})\.([0-9A-Fa-f]{4})\.([0-9A-Fa-f]{4})(?![0-9A-Fa-f])")


def calling_station_mac(value: str) -> str | None:
    """Calling-Station-Id as controllers write it: `AA-BB-CC-DD-EE-FF`, `aa:bb:...`,
    `aabb.ccdd.eeff` (Cisco) or `AABBCCDDEEFF`, possibly followed by `:SSID`."""
    text = value.strip()
    octets = _OCTETS.match(text)
    if octets:
        return normalise_mac("".join(octets.group(i) for i in (1, 3, 4, 5, 6, 7)))
    cisco = _CISCO.match(text)
    return normalise_mac("".join(cisco.groups())) if cisco else None


def _first(packet: Any, name: str) -> Any:
    values = packet.get(name)
    return values[0] if values else None


def decode(
    data: bytes, sender: str, clients: list[RadiusClient], received_at: datetime
) -> tuple[Any, AccountingRecord]:
    """(the pyrad packet, what it says). Raises BadPacket: unknown-client, malformed,
    bad-authenticator, not-accounting or incomplete."""
    from pyrad.packet import AcctPacket, PacketError

    secret = secret_for(clients, sender)
    if secret is None:
        raise BadPacket("unknown_client", f"{sender} is not one of [identity] radius_clients")
    try:
        packet = AcctPacket(packet=data, secret=secret, dict=dictionary())
    except (PacketError, ValueError, KeyError, IndexError, TypeError) as err:
        raise BadPacket("malformed", f"cannot be decoded: {err}") from err
    if packet.code != ACCOUNTING_REQUEST:
        raise BadPacket("not_accounting", f"code {packet.code} is not an Accounting-Request")
    if not packet.VerifyAcctRequest():
        raise BadPacket("bad_authenticator", "the Request Authenticator does not match the shared secret")
    try:
        record = _record(packet, sender, received_at)
    except (PacketError, ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError) as err:
        raise BadPacket("malformed", f"an attribute cannot be read: {err}") from err
    return packet, record


def _record(packet: Any, sender: str, received_at: datetime) -> AccountingRecord:
    status = STATUSES.get(str(_first(packet, "Acct-Status-Type")))
    if status is None:
        raise BadPacket("incomplete", f"Acct-Status-Type {_first(packet, 'Acct-Status-Type')!r} is not handled")
    nas = _first(packet, "NAS-Identifier") or _first(packet, "NAS-IP-Address") or _first(packet, "NAS-IPv6-Address")
    session_id = _first(packet, "Acct-Session-Id") or ""
    username = _first(packet, "User-Name") or ""
    if status in ("start", "interim", "stop") and not (session_id and username):
        raise BadPacket("incomplete", "a session record needs Acct-Session-Id and User-Name")
    delay = _first(packet, "Acct-Delay-Time") or 0
    calling = _first(packet, "Calling-Station-Id")
    framed = _first(packet, "Framed-IP-Address") or _first(packet, "Framed-IPv6-Address")
    cause = _first(packet, "Acct-Terminate-Cause")
    return AccountingRecord(
        status=status,
        nas=str(nas or sender)[:100],
        session_id=str(session_id)[:100],
        username=str(username).strip()[:200],
        mac=calling_station_mac(str(calling)) if calling else None,
        ip=str(ipaddress.ip_address(str(framed))) if framed else None,
        at=received_at - timedelta(seconds=min(int(delay), MAX_DELAY_S)),
        terminate_cause=str(cause or "")[:40],
    )


def reply(packet: Any) -> bytes:
    """The Accounting-Response to a request (sent only once it is recorded)."""
    return bytes(packet.CreateReply().ReplyPacket())
