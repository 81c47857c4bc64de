"""The fast path's compiled read of a query (dns/_question.c), against the full parser.

For every packet, `plain_name` either declines (None) or says exactly what the Python walk it
replaced said, and what `wire.parse_query` reads: where the name ends, its wire form in lower
case and its dotted lower-case name. `plain_query` reads the header, the type and class and
the OPT record around that name exactly as the fast path's Python did, and `reply` puts a reply
together as its concatenation did. Tables of odd names and odd headers, and generated packets.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schoolgate.dns._question import plain_name, plain_query, reply
from schoolgate.dns.wire import EDNS_UDP_SIZE, QueryError, dotted_name, parse_query

HEADER = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
TAIL = b"\x00\x01\x00\x01"


def reference(data: bytes) -> tuple[int, bytes, str] | None:
    """The fast path's walk before it was compiled."""
    size = len(data)
    offset = 12
    dots: list[int] = []
    while True:
        if offset >= size:
            return None
        length = data[offset]
        if length == 0:
            break
        if length > 63:
            return None
        if offset > 12:
            dots.append(offset - 13)
        offset += length + 1
    offset += 1
    if offset > 267 or offset + 4 > size:
        return None
    name_wire = data[12:offset].lower()
    if not name_wire.isascii() or 46 in name_wire:
        return None
    return offset, name_wire, dotted_name(data, offset, dots)


def wire(*labels: bytes) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"


CASES = [
    ("plain", HEADER + wire(b"www", b"example", b"com") + TAIL, (29, b"\x03www\x07example\x03com\x00",
                                                                 "www.example.com")),
    ("mixed case", HEADER + wire(b"WwW", b"ExAmPle", b"COM") + TAIL, (29, b"\x03www\x07example\x03com\x00",
                                                                       "www.example.com")),
    ("the root", HEADER + b"\x00" + TAIL, (13, b"\x00", "")),
    ("one label", HEADER + wire(b"localhost") + TAIL, (23, b"\x09localhost\x00", "localhost")),
    ("63-byte label", HEADER + wire(b"a" * 63, b"example") + TAIL, (85, wire(b"a" * 63, b"example"),
                                                                     "a" * 63 + ".example")),
    ("255-byte name", HEADER + wire(*[b"abc"] * 63, b"x") + TAIL, (267, wire(*[b"abc"] * 63, b"x"),
                                                                    ".".join(["abc"] * 63 + ["x"]))),
    ("256-byte name", HEADER + wire(*[b"abc"] * 63, b"xy") + TAIL, None),
    ("64-byte label", HEADER + wire(b"a" * 64) + TAIL, None),
    ("46-byte label (a length byte that is a dot)", HEADER + wire(b"a" * 46) + TAIL, None),
    ("a dot inside a label", HEADER + wire(b"a.b", b"example") + TAIL, None),
    ("non-ASCII", HEADER + wire("bücher".encode(), b"example") + TAIL, None),
    ("a byte 0x80", HEADER + wire(b"\x80", b"example") + TAIL, None),
    ("control bytes", HEADER + wire(b"\x00\x01", b"example") + TAIL, (24, b"\x02\x00\x01\x07example\x00",
                                                                       "\x00\x01.example")),
    ("a space and an underscore", HEADER + wire(b"_dmarc x", b"example") + TAIL,
     (30, b"\x08_dmarc x\x07example\x00", "_dmarc x.example")),
    ("a compression pointer", HEADER + b"\x03www\xc0\x0c" + TAIL, None),
    ("a reserved label type", HEADER + b"\x40" + TAIL, None),
    ("runs past the end", HEADER + b"\x07example", None),
    ("no type and class", HEADER + wire(b"example"), None),
    ("half the type and class", HEADER + wire(b"example") + b"\x00\x01", None),
    ("only a header", HEADER, None),
    ("shorter than a header", HEADER[:7], None),
    ("empty", b"", None),
]


@pytest.mark.parametrize(("packet", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_odd_names(packet: bytes, expected: tuple[int, bytes, str] | None) -> None:
    assert plain_name(packet) == expected
    assert reference(packet) == expected


@pytest.mark.parametrize("packet", [c[1] for c in CASES if c[2] is not None], ids=[c[0] for c in CASES if c[2]])
def test_a_plain_name_is_what_the_full_parser_reads(packet: bytes) -> None:
    found = plain_name(packet)
    assert found is not None
    try:
        query = parse_query(packet)
    except QueryError:
        return  # the full parser refuses it for another reason; the fast path sends it there too
    assert query.qname == found[2]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_packets_agree_with_the_reference(body: bytes) -> None:
    packet = HEADER + body
    assert plain_name(packet) == reference(packet)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=70), max_size=70), st.binary(max_size=6))
def test_generated_names_agree_with_the_reference(labels: list[bytes], tail: bytes) -> None:
    packet = HEADER + b"".join(bytes([len(label) & 0xFF]) + label for label in labels) + b"\x00" + tail
    assert plain_name(packet) == reference(packet)


def test_only_bytes_are_read() -> None:
    with pytest.raises(TypeError):
        plain_name(bytearray(HEADER + wire(b"example") + TAIL))  # type: ignore[arg-type]


# -- plain_query: the header, the name, the type and class, the OPT record -------------------

def query_reference(data: bytes, edns_udp_size: int = EDNS_UDP_SIZE) -> tuple[object, ...] | None:
    """The fast path's reading of a query before it was compiled."""
    size = len(data)
    if size < 17:
        return None
    ident, flags, qdcount, ancount, nscount, arcount = struct.unpack_from("!HHHHHH", data)
    if flags & 0xF800 or qdcount != 1 or ancount or nscount or arcount > 1:
        return None
    question = reference(data)
    if question is None:
        return None
    offset, name_wire, dotted = question
    question_end = offset + 4
    qtype, qclass = struct.unpack_from("!HH", data, offset)
    if qclass != 1 or qtype == 0 or qtype >= 128:
        return None
    edns = dnssec_ok = False
    max_size = 512
    if arcount:
        if question_end + 11 > size or data[question_end] != 0:
            return None
        rtype, udp_size, ttl, rdlength = struct.unpack_from("!HHIH", data, question_end + 1)
        if rtype != 41 or ttl & 0xFF0000 or question_end + 11 + rdlength > size:
            return None
        edns = True
        dnssec_ok = bool(ttl & 0x8000)
        max_size = max(512, min(udp_size, edns_udp_size))
    return ident, flags, question_end, name_wire, dotted, qtype, edns, dnssec_ok, max_size


def head(flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0, ident: int = 0xBEEF) -> bytes:
    return struct.pack("!HHHHHH", ident, flags, qd, an, ns, ar)


NAME = wire(b"ads", b"example")


def opt(udp: int = 1232, ext_rcode: int = 0, version: int = 0, do: bool = False, rdata: bytes = b"",
        rdlength: int | None = None, owner: bytes = b"\x00", rtype: int = 41) -> bytes:
    ttl = ext_rcode << 24 | version << 16 | (0x8000 if do else 0)
    size = len(rdata) if rdlength is None else rdlength
    return owner + struct.pack("!HHIH", rtype, udp, ttl, size) + rdata


QUESTION_END = 12 + len(NAME) + 4
QUERY_CASES = [
    ("A", head() + NAME + TAIL, (0xBEEF, 0x0100, QUESTION_END, NAME, "ads.example", 1, False, False, 512)),
    ("AAAA, RD and CD", head(flags=0x0110) + NAME + b"\x00\x1c\x00\x01",
     (0xBEEF, 0x0110, QUESTION_END, NAME, "ads.example", 28, False, False, 512)),
    ("type 127", head() + NAME + b"\x00\x7f\x00\x01", (0xBEEF, 0x0100, QUESTION_END, NAME, "ads.example", 127,
                                                        False, False, 512)),
    ("bytes after the question, no additional record", head() + NAME + TAIL + b"junk",
     (0xBEEF, 0x0100, QUESTION_END, NAME, "ads.example", 1, False, False, 512)),
    ("EDNS", head(ar=1) + NAME + TAIL + opt(), (0xBEEF, 0x0100, QUESTION_END, NAME, "ads.example", 1, True, False,
                                                1232)),
    ("EDNS with DO", head(ar=1) + NAME + TAIL + opt(do=True),
     (0xBEEF, 0x0100, QUESTION_END, NAME, "ads.example", 1, True, True, 1232)),
    ("EDNS, a large UDP size", head(ar=1) + NAME + TAIL + opt(udp=65535),
     (0xBEEF, 0x0100, QUESTION_END, NAME, "ads.example", 1, True, False, 1232)),
    ("EDNS, a UDP size under 512", head(ar=1) + NAME + TAIL + opt(udp=100),
     (0xBEEF, 0x0100, QUESTION_END, NAME, "ads.example", 1, True, False, 512)),
    ("EDNS, an extended RCODE bit", head(ar=1) + NAME + TAIL + opt(ext_rcode=1),
     (0xBEEF, 0x0100, QUESTION_END, NAME, "ads.example", 1, True, False, 1232)),
    ("EDNS with an option", head(ar=1) + NAME + TAIL + opt(rdata=b"\x00\x0a\x00\x08" + b"c" * 8),
     (0xBEEF, 0x0100, QUESTION_END, NAME, "ads.example", 1, True, False, 1232)),
    ("EDNS version 1", head(ar=1) + NAME + TAIL + opt(version=1), None),
    ("an OPT record not at the root", head(ar=1) + NAME + TAIL + opt(owner=b"\xc0\x0c"), None),
    ("an additional record that is not OPT", head(ar=1) + NAME + TAIL + opt(rtype=250), None),
    ("an OPT record's data past the end", head(ar=1) + NAME + TAIL + opt(rdlength=4), None),
    ("a short OPT record", head(ar=1) + NAME + TAIL + opt()[:10], None),
    ("an additional count and no record", head(ar=1) + NAME + TAIL, None),
    ("two additional records", head(ar=2) + NAME + TAIL + opt() + opt(), None),
    ("a response", head(flags=0x8100) + NAME + TAIL, None),
    ("opcode NOTIFY", head(flags=0x2000) + NAME + TAIL, None),
    ("opcode 15", head(flags=0x7800) + NAME + TAIL, None),
    ("no question", head(qd=0) + NAME + TAIL, None),
    ("two questions", head(qd=2) + NAME + TAIL + NAME + TAIL, None),
    ("an answer record", head(an=1) + NAME + TAIL, None),
    ("an authority record", head(ns=1) + NAME + TAIL, None),
    ("class CH", head() + NAME + b"\x00\x10\x00\x03", None),
    ("type 0", head() + NAME + b"\x00\x00\x00\x01", None),
    ("AXFR", head() + NAME + b"\x00\xfc\x00\x01", None),
    ("ANY", head() + NAME + b"\x00\xff\x00\x01", None),
    ("type 128", head() + NAME + b"\x00\x80\x00\x01", None),
    ("a compression pointer", head() + b"\x03www\xc0\x0c" + TAIL, None),
    ("a truncated question", head() + NAME + b"\x00\x01", None),
    ("16 bytes", head() + b"\x00\x00\x01\x00", None),
    ("the root, 17 bytes", head() + b"\x00" + TAIL, (0xBEEF, 0x0100, 17, b"\x00", "", 1, False, False, 512)),
    ("empty", b"", None),
]


@pytest.mark.parametrize(("packet", "expected"), [c[1:] for c in QUERY_CASES], ids=[c[0] for c in QUERY_CASES])
def test_odd_queries(packet: bytes, expected: tuple[object, ...] | None) -> None:
    assert plain_query(packet, EDNS_UDP_SIZE) == expected
    assert query_reference(packet) == expected


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 0xFFFF), st.sampled_from([0, 1, 2]), st.sampled_from([0, 1]), st.sampled_from([0, 1]),
       st.sampled_from([0, 1, 2]), st.sampled_from([NAME, b"\x00", wire(b"A" * 63), b"\x03www\xc0\x0c"]),
       st.binary(max_size=4), st.binary(max_size=30), st.integers(512, 4096))
def test_generated_queries_agree_with_the_reference(flags: int, qd: int, an: int, ns: int, ar: int, name: bytes,
                                                    fixed: bytes, rest: bytes, edns_udp_size: int) -> None:
    packet = head(flags, qd, an, ns, ar) + name + fixed + rest
    assert plain_query(packet, edns_udp_size) == query_reference(packet, edns_udp_size)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_queries_agree_with_the_reference(body: bytes) -> None:
    for flags_and_counts in (head(), head(ar=1)):
        packet = flags_and_counts + body
        assert plain_query(packet, EDNS_UDP_SIZE) == query_reference(packet)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((bytearray(head() + NAME + TAIL), 1232), TypeError),
        ((head() + NAME + TAIL, "1232"), TypeError),
        ((head() + NAME + TAIL,), TypeError),
    ],
)
def test_plain_query_refuses_what_is_not_a_packet_and_a_size(args: tuple[object, ...], error: type) -> None:
    with pytest.raises(error):
        plain_query(*args)  # type: ignore[arg-type]


# -- reply: the query's ID and question between a reply's header and its records --------------

REPLY_HEAD = struct.pack("!HHHHH", 0x8180, 1, 1, 0, 0)


@pytest.mark.parametrize(
    ("packet", "question_end", "tail"),
    [
        (head() + NAME + TAIL, QUESTION_END, b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x00\x00\x00\x00"),
        (head(ar=1) + NAME + TAIL + opt(), QUESTION_END, opt()),  # the client's OPT record is not copied
        (head() + b"\x00" + TAIL, 17, b""),
        (head(), 12, b"tail"),  # no question at all: the header's ID alone
    ],
)
def test_a_reply_is_the_id_the_head_the_question_and_the_tail(packet: bytes, question_end: int, tail: bytes) -> None:
    assert reply(packet, question_end, REPLY_HEAD, tail) == packet[:2] + REPLY_HEAD + packet[12:question_end] + tail


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((head() + NAME + TAIL, QUESTION_END + 1, REPLY_HEAD, b""), ValueError),  # past the packet
        ((head() + NAME + TAIL, 11, REPLY_HEAD, b""), ValueError),  # inside the header
        ((head() + NAME + TAIL, -1, REPLY_HEAD, b""), ValueError),
        ((head() + NAME + TAIL, QUESTION_END, REPLY_HEAD[:9], b""), ValueError),
        ((head() + NAME + TAIL, QUESTION_END, REPLY_HEAD + b"x", b""), ValueError),
        ((bytearray(head() + NAME + TAIL), QUESTION_END, REPLY_HEAD, b""), TypeError),
        ((head() + NAME + TAIL, QUESTION_END, REPLY_HEAD, "tail"), TypeError),
        ((head() + NAME + TAIL, 2**70, REPLY_HEAD, b""), OverflowError),
        ((head() + NAME + TAIL, QUESTION_END, REPLY_HEAD), TypeError),
    ],
)
def test_reply_refuses_what_does_not_fit(args: tuple[object, ...], error: type) -> None:
    with pytest.raises(error):
        reply(*args)  # type: ignore[arg-type]

