"""The hot path's query parser and validator, and the answer builders (table-driven)."""

from __future__ import annotations

import struct

import dns.message
import dns.rcode
import pytest

from schoolgate.dns.wire import (
    BADVERS,
    FORMERR,
    NOTIMP,
    REFUSED,
    Drop,
    Query,
    QueryError,
    encode_name,
    error_reply,
    parse_query,
    read_name,
    reply,
    rr,
    truncated,
)


def header(ident=0x1234, flags=0x0100, qd=1, an=0, ns=0, ar=0) -> bytes:
    return struct.pack("!HHHHHH", ident, flags, qd, an, ns, ar)


Q = b"\x03WwW\x07Example\x04test\x00\x00\x01\x00\x01"
OPT = b"\x00\x00\x29\x04\xd0\x00\x00\x80\x00\x00\x00"  # udp 1232, DO set, no options


def test_parses_a_real_query() -> None:
    wire = dns.message.make_query("WwW.Example.test", "AAAA", use_edns=0, want_dnssec=True, payload=4096).to_wire()
    query = parse_query(wire)
    assert query.qname == "www.example.test"
    assert query.qname_wire == encode_name("www.example.test")
    assert query.qtype == 28 and query.qclass == 1
    assert query.edns and query.dnssec_ok and query.udp_size == 4096
    assert query.max_size == 1232  # never more than the flag-day size over UDP
    query.tcp = True
    assert query.max_size == 65535


def test_plain_query_without_edns() -> None:
    query = parse_query(header() + Q)
    assert not query.edns and query.max_size == 512
    assert query.question == Q


@pytest.mark.parametrize(
    ("packet", "expected"),
    [
        (b"", Drop),
        (b"\x12\x34\x01", Drop),
        (header(flags=0x8100) + Q, Drop),  # a response
        (header(flags=0x2800) + Q, NOTIMP),  # opcode UPDATE
        (header(flags=0x1000) + Q, NOTIMP),  # opcode STATUS
        (header(qd=0), FORMERR),
        (header(qd=2) + Q + Q, FORMERR),
        (header(an=1) + Q, FORMERR),
        (header() + Q[:-2], FORMERR),  # class missing
        (header() + b"\x03www", FORMERR),  # name runs out
        (header() + b"\xc0\x0c\x00\x01\x00\x01", FORMERR),  # pointer in the question
        (header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01", FORMERR),  # label over 63
        (header() + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01", FORMERR),  # name over 255
        (header() + b"\x01a\x00\x00\x01\x00\x03", REFUSED),  # class CH
        (header() + b"\x01a\x00\x00\xfc\x00\x01", REFUSED),  # AXFR
        (header() + b"\x01a\x00\x00\xfb\x00\x01", REFUSED),  # IXFR
        (header() + b"\x01a\x00\x00\xfe\x00\x01", NOTIMP),  # MAILA
        (header() + b"\x01a\x00\x00\x00\x00\x01", FORMERR),  # type 0
        (header(ar=1) + Q, FORMERR),  # promised OPT missing
        (header(ar=2) + Q + OPT + OPT, FORMERR),  # two OPT records
        (header(ar=1) + Q + b"\x01a\x00" + OPT[1:], FORMERR),  # OPT not at the root
        (header(ar=1) + Q + OPT[:-2], FORMERR),  # OPT truncated
        (header(ar=1) + Q + OPT[:5] + b"\x00\x01\x00\x00\x00\x00", BADVERS),  # EDNS version 1
    ],
)
def test_rejects(packet: bytes, expected: type[Exception] | int) -> None:
    if isinstance(expected, type):
        with pytest.raises(expected):
            parse_query(packet)
        return
    with pytest.raises(QueryError) as caught:
        parse_query(packet)
    assert caught.value.rcode == expected
    answer = error_reply(caught.value, packet)
    message = dns.message.from_wire(answer)
    assert message.id == 0x1234
    assert message.rcode() == expected
    if caught.value.question_end:
        assert answer[12 : caught.value.question_end] == packet[12 : caught.value.question_end]


def test_any_is_served_and_tsig_is_ignored() -> None:
    assert parse_query(header() + b"\x01a\x00\x00\xff\x00\x01").qtype == 255
    tsig = b"\x03key\x00\x00\xfa\x00\xff\x00\x00\x00\x00\x00\x02ab"
    assert parse_query(header(ar=1) + Q + tsig).qname == "www.example.test"


def test_reply_keeps_the_clients_case_and_flags() -> None:
    query = parse_query(header(flags=0x0110, ar=1) + Q + OPT)  # RD + CD
    answer = reply(query, 0, rr(1, 10, b"\x0a\x00\x00\x01"), 1, ede=(17, "rule-1"))
    message = dns.message.from_wire(answer)
    assert str(message.question[0].name) == "WwW.Example.test."
    assert message.flags & 0x0100 and message.flags & 0x0010 and message.flags & 0x8000
    assert message.answer[0][0].address == "10.0.0.1"
    assert [(o.code, o.text) for o in message.options] == [(17, "rule-1")]
    assert message.ednsflags & 0x8000  # DO echoed


def test_truncated_answer_has_only_the_question() -> None:
    query = parse_query(header(ar=1) + Q + OPT)
    message = dns.message.from_wire(truncated(query))
    assert message.flags & 0x0200 and not message.answer and message.edns == 0


def test_names() -> None:
    assert encode_name("a.B.") == b"\x01a\x01B\x00"
    assert encode_name("") == b"\x00"
    with pytest.raises(ValueError):
        encode_name("a" * 64 + ".test")
    data = b"\x00" * 12 + b"\x01a\x04test\x00" + b"\x01b\xc0\x0c"
    assert read_name(data, 12) == ("a.test", 20)
    assert read_name(data, 20) == ("b.a.test", 24)
    with pytest.raises(ValueError):
        read_name(b"\x00" * 12 + b"\xc0\x0c", 12)  # points at itself


def test_derive_keeps_client_context() -> None:
    query = parse_query(header(ar=1) + Q + OPT)
    query.client_ip = "127.0.0.9"
    sub = query.derive("ForceSafeSearch.google.com")
    assert isinstance(sub, Query)
    assert sub.qname == "forcesafesearch.google.com" and sub.qtype == 1 and sub.client_ip == "127.0.0.9"
    assert sub.dnssec_ok and sub.edns
