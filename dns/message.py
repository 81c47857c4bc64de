"""Reading and editing whole DNS responses at the byte level.

Answers from upstream are kept as bytes (the cache stores and serves them as they are), so the
few edits the resolver makes (taking out the upstream's OPT record, removing the `ech` parameter
from HTTPS records) are splices. A splice moves every byte after it, so `Message` remembers
where each compression pointer sits and rewrites the ones whose target moved.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from schoolgate.dns.wire import (
    HEADER,
    RR_FIXED,
    TYPE_A,
    TYPE_AAAA,
    TYPE_CNAME,
    TYPE_OPT,
    TYPE_SOA,
    U16,
    U32,
    read_name,
)

# Types whose RDATA may hold compressed names (RFC 1035 and RFC 3597 §4, plus SRV, which some
# servers compress anyway). Value: the byte offsets inside RDATA where names start, -1 meaning
# "right after the previous name".
_NAMES_IN_RDATA: dict[int, tuple[int, ...]] = {
    2: (0,), 3: (0,), 4: (0,), 5: (0,), 7: (0,), 8: (0,), 9: (0,), 12: (0,), 39: (0,),
    6: (0, -1),  # SOA: mname, rname
    14: (0, -1),  # MINFO
    17: (0, -1),  # RP
    15: (2,), 18: (2,), 21: (2,), 36: (2,),  # MX, AFSDB, RT, KX
    26: (2, -1),  # PX
    33: (6,),  # SRV
}

ANSWER, AUTHORITY, ADDITIONAL = 1, 2, 3


@dataclass(frozen=True, slots=True)
class Record:
    section: int
    start: int  # the owner name's first byte
    rtype: int
    rclass: int
    ttl: int
    ttl_offset: int
    rdata_offset: int
    rdlength: int

    @property
    def end(self) -> int:
        return self.rdata_offset + self.rdlength


class MessageError(ValueError):
    pass


class Message:
    """A parsed view of a response: header, question span, records, compression pointers."""

    __slots__ = ("_targets", "counts", "data", "end", "flags", "ident", "pointers", "question_end", "records")

    def __init__(self, data: bytes) -> None:
        if len(data) < 12:
            raise MessageError("shorter than a header")
        self.data = data
        self.ident: int
        self.flags: int
        self.ident, self.flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
        self.counts = [qdcount, ancount, nscount, arcount]
        self.pointers: list[int] = []  # offsets of two-byte compression pointers
        self._targets: dict[int, int] = {}  # pointer target -> wire length of the name there
        offset = 12
        try:
            for _ in range(qdcount):
                offset = self._name(offset) + 4
            if offset > len(data):
                raise MessageError("question truncated")
            self.question_end = offset
            records: list[Record] = []
            for section, count in ((ANSWER, ancount), (AUTHORITY, nscount), (ADDITIONAL, arcount)):
                for _ in range(count):
                    start = offset
                    offset = self._name(offset)
                    if offset + 10 > len(data):
                        raise MessageError("record truncated")
                    rtype, rclass, ttl, rdlength = RR_FIXED.unpack_from(data, offset)
                    rdata = offset + 10
                    offset = rdata + rdlength
                    if offset > len(data):
                        raise MessageError("record data truncated")
                    self._rdata_names(rtype, rdata, offset)
                    records.append(Record(section, start, rtype, rclass, ttl, rdata - 6, rdata, rdlength))
        except ValueError as err:
            raise MessageError(str(err)) from None
        self.records = records
        self.end = offset  # where the last record ends; anything after it is not part of the message

    @property
    def rcode(self) -> int:
        return self.flags & 0xF

    def _name(self, offset: int) -> int:
        """Skip a name, remembering where its pointer (if any) is; checks the pointer's target."""
        data = self.data
        size = len(data)
        labels = 0
        wire = 0
        while True:
            if offset >= size:
                raise MessageError("name runs past the end")
            length = data[offset]
            if length == 0:
                return offset + 1
            if length & 0xC0 == 0xC0:
                if offset + 2 > size:
                    raise MessageError("truncated pointer")
                target = ((length & 0x3F) << 8) | data[offset + 1]
                if target >= offset or target < 12:
                    raise MessageError("pointer forward or into the header")
                # The name pointed at must be a name too (a pointer into record data can
                # land on anything), and the whole name no longer than 255 bytes.
                rest = self._targets.get(target)
                if rest is None:
                    dotted = read_name(data, target)[0]
                    rest = self._targets[target] = len(dotted) + 2 if dotted else 1
                if wire + rest > 255:
                    raise MessageError("name too long")
                self.pointers.append(offset)
                return offset + 2
            if length & 0xC0:
                raise MessageError("reserved label type")
            labels += 1
            wire += length + 1
            if labels > 127 or wire > 255:
                raise MessageError("name too long")
            offset += length + 1

    def _rdata_names(self, rtype: int, start: int, end: int) -> None:
        layout = _NAMES_IN_RDATA.get(rtype)
        if layout is None:
            return
        offset = start
        for position in layout:
            if position >= 0:
                offset = start + position
            if offset >= end:
                raise MessageError("name missing from record data")
            offset = self._name(offset)
            if offset > end:
                raise MessageError("name runs out of its record")

    def name_at(self, offset: int) -> str:
        return read_name(self.data, offset)[0]

    def question_name(self) -> str:
        return self.name_at(12) if self.counts[0] else ""

    def splice(self, edits: list[tuple[int, int, bytes]], counts: list[int] | None = None) -> bytes:
        """Replace byte ranges [start, end) and fix every compression pointer that moved.

        Edits must not overlap and must not contain a pointer that other names point into
        (record data and whole records qualify: names point at owner names and the question).
        """
        edits = sorted(edits)
        data = self.data

        def moved(position: int) -> int:
            shift = 0
            for start, end, replacement in edits:
                if end <= position:
                    shift += len(replacement) - (end - start)
                elif start <= position:
                    raise MessageError("a pointer targets an edited range")
            return position + shift

        out = bytearray()
        previous = 0
        for start, end, replacement in edits:
            out += data[previous:start]
            out += replacement
            previous = end
        out += data[previous:]
        for position in self.pointers:
            if any(start <= position < end for start, end, _ in edits):
                continue  # removed with its record
            target = ((data[position] & 0x3F) << 8) | data[position + 1]
            new_target = moved(target)
            if new_target != target:
                if new_target > 0x3FFF:
                    raise MessageError("pointer target out of range")
                new_position = moved(position)
                out[new_position : new_position + 2] = U16.pack(0xC000 | new_target)
        HEADER.pack_into(out, 0, self.ident, self.flags, *(counts or self.counts))
        return bytes(out)

    def without_opt(self) -> bytes:
        """The message with its OPT record(s) removed (the cache stores answers without one)."""
        opts = [r for r in self.records if r.rtype == TYPE_OPT]
        if not opts:
            return self.data
        counts = list(self.counts)
        for record in opts:  # each from its own section: a hostile answer may put one anywhere
            counts[record.section] -= 1
        return self.splice([(r.start, r.end, b"") for r in opts], counts)

    def ttl_offsets(self) -> list[tuple[int, int]]:
        """(offset, ttl) of every record's TTL field, except OPT's (which is not a TTL)."""
        return [(r.ttl_offset, r.ttl) for r in self.records if r.rtype != TYPE_OPT]

    def negative_ttl(self) -> int | None:
        """RFC 2308: the SOA record's TTL, capped by its MINIMUM field; None without an SOA."""
        for r in self.records:
            if r.section == AUTHORITY and r.rtype == TYPE_SOA and r.rdlength >= 22:
                minimum: int = U32.unpack_from(self.data, r.end - 4)[0]
                return min(r.ttl, minimum)
        return None

    def answer_addresses(self) -> list[str]:
        """The A and AAAA addresses in the answer section."""
        out = []
        for r in self.records:
            if r.section != ANSWER:
                continue
            if r.rtype == TYPE_A and r.rdlength == 4:
                out.append(str(ipaddress.IPv4Address(self.data[r.rdata_offset : r.end])))
            elif r.rtype == TYPE_AAAA and r.rdlength == 16:
                out.append(str(ipaddress.IPv6Address(self.data[r.rdata_offset : r.end])))
        return out

    def answer_names(self) -> list[str]:
        """CNAME targets in the answer section (a chain may lead somewhere the policy blocks)."""
        return [
            self.name_at(r.rdata_offset) for r in self.records if r.section == ANSWER and r.rtype == TYPE_CNAME
        ]
