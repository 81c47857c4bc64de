"""Events and audit entries for a trust's SIEM: as JSON pages to pull, or pushed over syslog.

Each record is a flat JSON object with the DfE fields (when, device, address, MAC, person,
role, site or search term, verdict, rule and clause) or the audit entry (who did what, and its
place in the hash chain). Pulling pages by id (`after`) and pushing with a cursor both deliver
every record at least once, oldest first; the receiver tells repeats apart by `uid`.

Syslog follows RFC 5424 (facility local0; notice for blocked or flagged events, info for the
rest), one message per record with the JSON as its message, over TCP with RFC 6587's octet
counting or over UDP. Everything in a record came from the network or a person (hosts, URLs,
names): JSON encoding keeps it one line and quoted, whatever it contains.

A SIEM is read by the trust's IT staff, not the DSL: an event whose search term (or URL) is a
safeguarding concern leaves with both withheld, through the console's one filter
(schoolgate.services.safeguarding_detail.shown_events), and says so (`withheld`). The DSL reads
it in the console.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from schoolgate.services.common import read_mark, write_mark
from schoolgate.services.keywords import KeywordList
from schoolgate.services.safeguarding_detail import ShownEvent, shown_events
from schoolgate.services.selftest_devices import not_selftest
from schoolgate.store.models import AccessEvent, AuditEntry

MAX_PAGE = 1000
EVENTS_CURSOR = "export_events_cursor"
AUDIT_CURSOR = "export_audit_cursor"
FACILITY_LOCAL0 = 16
SEVERITY_NOTICE = 5
SEVERITY_INFO = 6
UDP_MAX = 8192  # bytes; a longer record is cut (its JSON then says so)


def event_record(event: ShownEvent) -> dict[str, Any]:
    """An event as the SIEM receives it (`event` as shown to a reader who may not read
    safeguarding detail)."""
    return {
        "type": "event",
        "id": event.id,
        "uid": event.uid or f"{event.site}:event:{event.id}",
        "site": event.site,
        "ts": event.ts.astimezone(UTC).isoformat(),
        "source": event.source,
        "client_ip": event.client_ip,
        "mac": event.mac,
        "device_id": event.device_id,
        "device_name": event.device_name,
        "person_id": event.person_id,
        "person_name": event.person_name,
        "role": event.role,
        "host": event.host,
        "url": event.url,
        "search_term": event.search_term,
        "verdict": event.verdict,
        "rule_id": event.rule_id,
        "clause": event.clause,
        "service": event.service,
        "category": event.category,
        "flags": [f for f in (event.flags or "").split(",") if f],
        "count": event.count,
        "withheld": event.withheld,
    }


def audit_record(entry: AuditEntry) -> dict[str, Any]:
    try:
        detail = json.loads(entry.detail or "{}")
    except ValueError:
        detail = {"unreadable": entry.detail}
    return {
        "type": "audit",
        "id": entry.id,
        "uid": f"{entry.site}:audit:{entry.seq}",
        "site": entry.site,
        "seq": entry.seq,
        "ts": entry.at.astimezone(UTC).isoformat(),
        "actor": entry.actor,
        "action": entry.action,
        "object_type": entry.object_type,
        "object_id": entry.object_id,
        "detail": detail,
        "hash": entry.hash,
        "prev_hash": entry.prev_hash,
    }


def _blocked_or_flagged() -> Any:
    return (AccessEvent.verdict == "block") | (AccessEvent.flags != "")


def events_after(session: Session, site: str, after: int, *, keywords: KeywordList | None, limit: int = MAX_PAGE,
                 everything: bool = False) -> list[dict[str, Any]]:
    """Events with id > `after`, oldest first: blocked and flagged ones, or `everything`; a
    safeguarding concern's search term and URL withheld (`keywords`: the safeguarding list; None
    if it cannot be read, and then every search is withheld)."""
    conditions = [AccessEvent.site == site, AccessEvent.id > after, not_selftest(AccessEvent.device_id)]
    if not everything:
        conditions.append(_blocked_or_flagged())
    rows = session.scalars(
        select(AccessEvent).where(*conditions).order_by(AccessEvent.id).limit(max(1, min(limit, MAX_PAGE)))
    )
    return [event_record(row) for row in shown_events(rows, may_read=False, keywords=keywords)]


def audit_after(session: Session, site: str, after: int, *, limit: int = MAX_PAGE) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(AuditEntry).where(AuditEntry.site == site, AuditEntry.id > after)
        .order_by(AuditEntry.id).limit(max(1, min(limit, MAX_PAGE)))
    )
    return [audit_record(row) for row in rows]


def syslog_message(record: dict[str, Any], *, hostname: str, now: datetime) -> bytes:
    """One RFC 5424 message: the record's JSON as the message, no structured data."""
    flagged = record.get("type") == "event" and (record.get("verdict") == "block" or record.get("flags"))
    severity = SEVERITY_NOTICE if flagged or record.get("type") == "audit" else SEVERITY_INFO
    pri = FACILITY_LOCAL0 * 8 + severity
    stamp = now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    host = "".join(c for c in hostname if 33 <= ord(c) <= 126)[:255] or "-"
    body = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)
    return f"<{pri}>1 {stamp} {host} schoolgate - {record['type']} - {body}".encode()


@dataclass(frozen=True)
class SyslogTarget:
    host: str
    port: int
    protocol: str  # tcp or udp
    source: str = ""  # bind here: the appliance's LAN address

    @classmethod
    def parse(cls, text: str, protocol: str, source: str = "") -> SyslogTarget:
        host, sep, port = text.strip().rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
            raise ValueError(f"export.syslog: {text!r} must be host:port, e.g. siem.trust.example:6514")
        if protocol not in ("tcp", "udp"):
            raise ValueError(f"export.protocol: {protocol!r} must be tcp or udp")
        return cls(host.strip("[]"), int(port), protocol, source)


def send_syslog(target: SyslogTarget, messages: Sequence[bytes], timeout: float = 10.0) -> None:
    """Deliver the messages, or raise OSError (the cursor then stays, and the next run resends)."""
    if not messages:
        return
    infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM if target.protocol == "tcp"
                               else socket.SOCK_DGRAM)
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.settimeout(timeout)
        if target.source and (":" in target.source) == (family == socket.AF_INET6):
            sock.bind((target.source, 0))
        if target.protocol == "tcp":
            sock.connect(address)
            sock.sendall(b"".join(str(len(m)).encode() + b" " + m for m in messages))  # RFC 6587 octet counting
        else:
            for message in messages:
                sock.sendto(message[:UDP_MAX], address)


def export_round(session: Session, site: str, *, kind: str, everything: bool, keywords: KeywordList | None,
                 limit: int = MAX_PAGE) -> tuple[list[dict[str, Any]], int, int]:
    """The next records after this kind's cursor: (records, cursor now, cursor after them)."""
    cursor_name = EVENTS_CURSOR if kind == "event" else AUDIT_CURSOR
    cursor = read_mark(session, site, cursor_name)
    records = (events_after(session, site, cursor, keywords=keywords, limit=limit, everything=everything)
               if kind == "event"
               else audit_after(session, site, cursor, limit=limit))
    upto = int(records[-1]["id"]) if records else cursor
    return records, cursor, upto


def advance(session: Session, site: str, kind: str, upto: int, now: datetime) -> None:
    write_mark(session, site, EVENTS_CURSOR if kind == "event" else AUDIT_CURSOR, upto, now)
