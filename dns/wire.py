"""DNS messages at the byte level: the query parser of the hot path and small answer builders.

Every query passes through here, so parsing reads only what the resolver needs (header, the one
question, the EDNS OPT record) straight from the bytes, without building dnslib objects. The
builders write answers the daemon makes itself (blocked names, special names, errors) with the
owner name compressed to the question at offset 12.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from schoolgate.policy.types import Client, Decision

HEADER = struct.Struct("!HHHHHH")
U16 = struct.Struct("!H")
U32 = struct.Struct("!I")
RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
QFIXED = struct.Struct("!HH")

# Header flag bits
QR = 0x8000
AA = 0x0400
TC = 0x0200
RD = 0x0100
RA = 0x0080
AD = 0x0020
CD = 0x0010
OPCODE_MASK = 0x7800

# Response codes
NOERROR = 0
FORMERR = 1
SERVFAIL = 2
NXDOMAIN = 3
NOTIMP = 4
REFUSED = 5
BADVERS = 16  # extended: the low four bits go in the header, the rest in the OPT record

# Types and classes
TYPE_A = 1
TYPE_NS = 2
TYPE_CNAME = 5
TYPE_SOA = 6
TYPE_PTR = 12
TYPE_MX = 15
TYPE_TXT = 16
TYPE_AAAA = 28
TYPE_SRV = 33
TYPE_DNAME = 39
TYPE_OPT = 41
TYPE_SVCB = 64
TYPE_HTTPS = 65
TYPE_IXFR = 251
TYPE_AXFR = 252
TYPE_MAILB = 253
TYPE_MAILA = 254
TYPE_ANY = 255
CLASS_IN = 1

TYPE_NAMES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV",
    35: "NAPTR", 39: "DNAME", 43: "DS", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 64: "SVCB", 65: "HTTPS",
    255: "ANY", 257: "CAA",
}

# EDNS(0): the buffer size the DNS flag day 2020 settled on; never advertise or honour more
# over UDP, so answers are not fragmented.
EDNS_UDP_SIZE = 1232
PLAIN_UDP_SIZE = 512
OPT_CODE_EDE = 15
EDE_BLOCKED = 15
EDE_FILTERED = 17
EDE_PROHIBITED = 18
EDE_STALE = 3
EDE_NETWORK_ERROR = 23

QUESTION_PTR = b"\xc0\x0c"  # a compression pointer to the question's name


class Drop(Exception):
    """The packet has no parseable header (or is a response): answer nothing."""


class QueryError(Exception):
    """The packet has a header but cannot be served; answer with `rcode`."""

    def __init__(self, rcode: int, ident: int, flags: int, reason: str, question_end: int = 0) -> None:
        super().__init__(reason)
        self.rcode = rcode
        self.ident = ident
        self.flags = flags
        self.reason = reason
        self.question_end = question_end  # > 12 when the question parsed and may be echoed


LONGEST_TYPE_NAME = max(len("TYPE65535"), *map(len, TYPE_NAMES.values()))


def type_name(qtype: int) -> str:
    return TYPE_NAMES.get(qtype) or f"TYPE{qtype}"


@dataclass(slots=True)
class Query:
    """One client question, with what the stages learn about it on the way."""

    raw: bytes
    ident: int
    flags: int
    qname: str  # lower-case, dotted, no trailing dot; "" is the root
    qname_wire: bytes  # the question's name in wire form, lower-case
    qtype: int
    qclass: int
    question_end: int  # offset just after the question
    edns: bool = False
    udp_size: int = PLAIN_UDP_SIZE
    dnssec_ok: bool = False
    client_ip: str = ""
    tcp: bool = False
    client: Client | None = None
    decision: Decision | None = None
    # Set by the stage that answered from its own knowledge (special names, policy): logged in full.
    answered_by: str = ""
    special_rule: str = ""
    now: datetime | None = None  # the policy clock's instant for this query
    ts: float = 0.0  # the same instant as POSIX seconds
    ttl_ceiling: int = 86_400  # seconds until the decision may change: no TTL may exceed it

    @property
    def max_size(self) -> int:
        if self.tcp:
            return 65535
        if not self.edns:
            return PLAIN_UDP_SIZE
        return max(PLAIN_UDP_SIZE, min(self.udp_size, EDNS_UDP_SIZE))

    @property
    def question(self) -> bytes:
        return self.raw[12 : self.question_end]

    def derive(self, qname: str, qtype: int | None = None) -> Query:
        """A copy asking for another name (safe-search targets), with the same client and flags."""
        wire = encode_name(qname)
        qt = self.qtype if qtype is None else qtype
        raw = HEADER.pack(self.ident, self.flags, 1, 0, 0, 0) + wire + QFIXED.pack(qt, self.qclass)
        return Query(
            raw=raw, ident=self.ident, flags=self.flags, qname=qname.lower().rstrip("."),
            qname_wire=wire.lower(), qtype=qt, qclass=self.qclass, question_end=len(raw),
            edns=self.edns, udp_size=self.udp_size, dnssec_ok=self.dnssec_ok, client_ip=self.client_ip,
            tcp=True, client=self.client, decision=self.decision, now=self.now, ts=self.ts,
            ttl_ceiling=self.ttl_ceiling,
        )


def encode_name(name: str) -> bytes:
    """Dotted name to wire form. Raises ValueError for a label over 63 or a name over 255 bytes."""
    name = name.rstrip(".")
    if not name:
        return b"\x00"
    out = bytearray()
    for label in name.split("."):
        raw = label.encode("idna") if not label.isascii() else label.encode("ascii")
        if not raw or len(raw) > 63:
            raise ValueError(f"bad label in {name!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > 255:
        raise ValueError(f"name too long: {name!r}")
    return bytes(out)


def read_name(data: bytes, offset: int) -> tuple[str, int]:
    """Read a possibly compressed name; return (dotted lower-case name, offset after it)."""
    labels: list[str] = []
    end = -1
    jumps = 0
    total = 0
    size = len(data)
    while True:
        if offset >= size:
            raise ValueError("name runs past the end")
        length = data[offset]
        if length == 0:
            offset += 1
            break
        if length & 0xC0 == 0xC0:
            if offset + 1 >= size:
                raise ValueError("truncated pointer")
            target = ((length & 0x3F) << 8) | data[offset + 1]
            if end < 0:
                end = offset + 2
            jumps += 1
            if jumps > 64 or target >= offset:
                raise ValueError("compression loop or forward pointer")
            offset = target
            continue
        if length & 0xC0:
            raise ValueError("reserved label type")
        offset += 1
        if offset + length > size:
            raise ValueError("label runs past the end")
        total += length + 1
        if total > 255:
            raise ValueError("name too long")
        labels.append(data[offset : offset + length].decode("latin-1").lower())
        offset += length
    return ".".join(labels), (end if end >= 0 else offset)


def skip_name(data: bytes, offset: int) -> int:
    """Offset just after a name (does not follow pointers)."""
    size = len(data)
    while True:
        if offset >= size:
            raise ValueError("name runs past the end")
        length = data[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            if offset + 2 > size:
                raise ValueError("truncated pointer")
            return offset + 2
        if length & 0xC0:
            raise ValueError("reserved label type")
        offset += length + 1


def dotted_name(data: bytes, end: int, dots: list[int]) -> str:
    """The question's name in dotted lower case ("" for the root): the wire name from byte 12
    to `end` (past its zero byte), each length byte at `dots` (offsets from byte 13) a dot."""
    if end <= 13:
        return ""
    dotted = bytearray(data[13 : end - 1])
    for dot in dots:
        dotted[dot] = 46  # "."
    return dotted.decode("latin-1").lower()


def parse_query(data: bytes) -> Query:
    """Parse and validate a client query. Raises Drop or QueryError (with the rcode to answer)."""
    size = len(data)
    if size < 12:
        raise Drop("shorter than a header")
    ident, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    if flags & QR:
        raise Drop("a response, not a query")
    if flags & OPCODE_MASK:
        raise QueryError(NOTIMP, ident, flags, "only standard queries are served")
    if qdcount != 1:
        raise QueryError(FORMERR, ident, flags, f"{qdcount} questions")
    if ancount or nscount:
        raise QueryError(FORMERR, ident, flags, "a query with answer or authority records")
    # The question's name: plain labels only (a pointer has nothing to point at yet). The walk
    # notes where the length bytes are; the dotted name is the wire name with those made dots
    # (one copy, not one per label: this runs for every query).
    offset = 12
    dots: list[int] = []
    while True:
        if offset >= size:
            raise QueryError(FORMERR, ident, flags, "question name runs past the end")
        length = data[offset]
        if length == 0:
            break
        if length > 63:
            raise QueryError(FORMERR, ident, flags, "compressed or oversized label in the question")
        if offset > 12:
            dots.append(offset - 13)
        offset += length + 1
        if offset > size:
            raise QueryError(FORMERR, ident, flags, "question label runs past the end")
    offset += 1
    if offset - 12 > 255:
        raise QueryError(FORMERR, ident, flags, "question name longer than 255 bytes")
    if offset + 4 > size:
        raise QueryError(FORMERR, ident, flags, "question type and class missing")
    qtype, qclass = QFIXED.unpack_from(data, offset)
    question_end = offset + 4
    name_wire = data[12:offset].lower()
    qname = dotted_name(data, offset, dots)
    query = Query(data, ident, flags, qname, name_wire, qtype, qclass, question_end)
    # Additional section: the EDNS OPT record (at most one); other records (TSIG...) are ignored.
    offset = question_end
    for _ in range(arcount):
        try:
            name_start = offset
            offset = skip_name(data, offset)
        except ValueError as err:
            raise QueryError(FORMERR, ident, flags, f"additional record: {err}", question_end) from None
        if offset + 10 > size:
            raise QueryError(FORMERR, ident, flags, "additional record truncated", question_end)
        rtype, rclass, ttl, rdlength = RR_FIXED.unpack_from(data, offset)
        offset += 10 + rdlength
        if offset > size:
            raise QueryError(FORMERR, ident, flags, "additional record data truncated", question_end)
        if rtype == TYPE_OPT:
            if query.edns or data[name_start] != 0:
                raise QueryError(FORMERR, ident, flags, "more than one OPT record, or not at the root",
                                 question_end)
            query.edns = True
            query.udp_size = rclass
            query.dnssec_ok = bool(ttl & 0x8000)
            if (ttl >> 16) & 0xFF:
                raise QueryError(BADVERS, ident, flags, "EDNS version not supported", question_end)
    if qclass != CLASS_IN:
        raise QueryError(REFUSED, ident, flags, "only class IN is served", question_end)
    if qtype == 0:
        raise QueryError(FORMERR, ident, flags, "query type 0", question_end)
    if qtype in (TYPE_AXFR, TYPE_IXFR):
        raise QueryError(REFUSED, ident, flags, "zone transfers are not served", question_end)
    if qtype in (TYPE_MAILA, TYPE_MAILB) or 128 <= qtype < TYPE_ANY:
        raise QueryError(NOTIMP, ident, flags, "meta query type", question_end)
    return query


def edns_opt(dnssec_ok: bool, ede: tuple[int, str] | None = None, ext_rcode: int = 0) -> bytes:
    """Our OPT record: 1232-byte buffer, the client's DO bit echoed, an optional Extended DNS Error."""
    rdata = b""
    if ede is not None:
        text = ede[1].encode("utf-8")[:200]
        rdata = U16.pack(OPT_CODE_EDE) + U16.pack(2 + len(text)) + U16.pack(ede[0]) + text
    ttl = (ext_rcode << 24) | (0x8000 if dnssec_ok else 0)
    return b"\x00" + RR_FIXED.pack(TYPE_OPT, EDNS_UDP_SIZE, ttl, len(rdata)) + rdata


def error_reply(err: QueryError, data: bytes) -> bytes:
    """FORMERR/NOTIMP/REFUSED/BADVERS for a packet whose header parsed."""
    flags = QR | (err.flags & (OPCODE_MASK | RD)) | RA | (err.rcode & 0xF)
    if err.question_end > 12:
        question = data[12 : err.question_end]
        opt = edns_opt(False, ext_rcode=err.rcode >> 4) if err.rcode == BADVERS else b""
        return HEADER.pack(err.ident, flags, 1, 0, 0, 1 if opt else 0) + question + opt
    return HEADER.pack(err.ident, flags, 0, 0, 0, 0)


def reply(
    query: Query,
    rcode: int = NOERROR,
    answers: bytes = b"",
    ancount: int = 0,
    *,
    authority: bytes = b"",
    nscount: int = 0,
    aa: bool = False,
    ede: tuple[int, str] | None = None,
) -> bytes:
    """An answer built from parts, with the client's question echoed (its case kept)."""
    flags = QR | (query.flags & (RD | CD)) | RA | (AA if aa else 0) | rcode
    opt = edns_opt(query.dnssec_ok, ede) if query.edns else b""
    return (
        HEADER.pack(query.ident, flags, 1, ancount, nscount, 1 if opt else 0)
        + query.raw[12 : query.question_end]
        + answers
        + authority
        + opt
    )


def rr(rtype: int, ttl: int, rdata: bytes, owner: bytes = QUESTION_PTR) -> bytes:
    return owner + RR_FIXED.pack(rtype, CLASS_IN, ttl, len(rdata)) + rdata


def servfail(query: Query, ede: tuple[int, str] | None = None) -> bytes:
    return reply(query, SERVFAIL, ede=ede)


def truncated(query: Query) -> bytes:
    """TC=1 with the question only: the client retries over TCP (RFC 7766)."""
    flags = QR | (query.flags & (RD | CD)) | RA | TC
    opt = edns_opt(query.dnssec_ok) if query.edns else b""
    return HEADER.pack(query.ident, flags, 1, 0, 0, 1 if opt else 0) + query.raw[12 : query.question_end] + opt


def append_opt(answer: bytearray, query: Query, ede: tuple[int, str] | None = None) -> bytearray:
    """Add our OPT record to an answer stored without one, when the client spoke EDNS."""
    if query.edns:
        answer[10:12] = U16.pack(((answer[10] << 8) | answer[11]) + 1)
        answer += edns_opt(query.dnssec_ok, ede)
    return answer
