"""Byte-level response editing: OPT removal, ECH removal from SVCB/HTTPS (RFC 9460), pointer fixing."""

from __future__ import annotations

import base64
import struct

import dns.message
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from schoolgate.dns.message import Message, MessageError
from schoolgate.dns.stages.https import clean_answer
from schoolgate.dns.svcb import SvcbError, strip_ech
from schoolgate.dns.upstream import UpstreamFailure

# The shape Cloudflare publishes for its sites (ECH config made up, same structure and length).
ECH = base64.b64encode(b"\x00\x45\xfe\x0d\x00\x41" + bytes(range(65))).decode()
CLOUDFLARE_LIKE = f'1 . alpn="h3,h2" ipv4hint=104.16.132.229,104.16.133.229 ech="{ECH}" ipv6hint=2606:4700::6810:84e5'
WITH_MANDATORY = f'2 svc.example.net. mandatory=alpn,ech alpn=h2 port=8443 ech="{ECH}" key65000=abc'
ECH_MANDATORY_ONLY = f'3 . mandatory=ech ech="{ECH}"'
NO_ECH = "1 . alpn=h2 ipv4hint=192.0.2.1"
ALIAS = "0 pool.example.net."


def https(text: str, rdtype: str = "HTTPS") -> bytes:
    rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), text)
    return rdata.to_wire()


def response(records: list[tuple[str, str, str]], authority=(), additional=(), edns=True) -> bytes:
    query = dns.message.make_query("www.site.example", "HTTPS", use_edns=0 if edns else False)
    message = dns.message.make_response(query)
    for section, rows in ((message.answer, records), (message.authority, authority), (message.additional, additional)):
        for name, rdtype, text in rows:
            section.append(dns.rrset.from_text(name, 300, "IN", rdtype, text))
    return message.to_wire()


def params(message: dns.message.Message) -> list[dict[int, object]]:
    out = []
    for rrset in message.answer:
        if rrset.rdtype in (dns.rdatatype.HTTPS, dns.rdatatype.SVCB):
            for rd in rrset:
                out.append({int(k): v for k, v in rd.params.items()})
    return out


def test_strip_ech_keeps_every_other_parameter() -> None:
    expected = https('1 . alpn="h3,h2" ipv4hint=104.16.132.229,104.16.133.229 ipv6hint=2606:4700::6810:84e5')
    assert strip_ech(https(CLOUDFLARE_LIKE)) == expected  # byte for byte


def test_mandatory_loses_ech_and_unknown_keys_stay() -> None:
    assert strip_ech(https(WITH_MANDATORY)) == https("2 svc.example.net. mandatory=alpn alpn=h2 port=8443 key65000=abc")
    assert strip_ech(https(ECH_MANDATORY_ONLY)) == https("3 .")


@pytest.mark.parametrize("text", [NO_ECH, ALIAS])
def test_records_without_ech_are_untouched(text: str) -> None:
    raw = https(text)
    assert strip_ech(raw) == raw


@pytest.mark.parametrize(
    "rdata",
    [
        b"\x00",  # too short
        b"\x00\x01\x03www",  # target runs out
        b"\x00\x01\xc0\x0c",  # compressed target
        b"\x00\x01\x00\x00\x01\x00\x05",  # parameter value truncated
        b"\x00\x01\x00\x00\x05\x00\x00\x00\x01\x00\x00",  # keys out of order
        b"\x00\x01\x00\x00\x00\x00\x01\x00\x05\x00\x00",  # mandatory of odd length
        b"\x00\x01\x00\x00\x05",  # parameter header truncated
    ],
)
def test_malformed_svcb_is_refused(rdata: bytes) -> None:
    with pytest.raises(SvcbError):
        strip_ech(rdata)


def test_whole_answer_cleaned_with_pointers_fixed() -> None:
    """An NS name after the edited record is the target of a later pointer: it must still resolve."""
    wire = response(
        [
            ("www.site.example.", "CNAME", "edge.site.example."),
            ("edge.site.example.", "HTTPS", CLOUDFLARE_LIKE),
            ("edge.site.example.", "HTTPS", WITH_MANDATORY),
        ],
        authority=[("site.example.", "NS", "ns1.dns-host.example.")],
        additional=[("ns1.dns-host.example.", "A", "192.0.2.53"), ("svc.example.net.", "AAAA", "2001:db8::1")],
    )
    before = dns.message.from_wire(wire)
    cleaned = clean_answer(wire)
    assert len(cleaned) < len(wire)
    after = dns.message.from_wire(cleaned)
    assert after.edns < 0  # the upstream's OPT is gone; ours is added per client
    assert [p.get(5) for p in params(after)] == [None, None]
    assert params(after)[0][1].ids == params(before)[0][1].ids == (b"h3", b"h2")  # alpn
    assert str(after.answer[0][0].target) == "edge.site.example."
    assert after.authority == before.authority
    assert [str(r.name) for r in after.additional] == ["ns1.dns-host.example.", "svc.example.net."]
    assert after.additional[0][0].address == "192.0.2.53"
    assert str(after.question[0].name) == "www.site.example."


def test_svcb_type_64_is_cleaned_too() -> None:
    wire = response([("_dns.svc.example.", "SVCB", CLOUDFLARE_LIKE)])
    after = dns.message.from_wire(clean_answer(wire))
    assert 5 not in params(after)[0]


def test_uncleanable_record_gives_an_empty_answer() -> None:
    wire = bytearray(response([("www.site.example.", "HTTPS", CLOUDFLARE_LIKE)], edns=False))
    message = Message(bytes(wire))
    record = message.records[0]
    wire[record.rdata_offset + 4 : record.rdata_offset + 5] = b"\xc0"  # corrupt the target name
    cleaned = dns.message.from_wire(clean_answer(bytes(wire)))
    assert cleaned.rcode() == 0 and not cleaned.answer


def test_message_refuses_forward_pointers_and_truncation() -> None:
    wire = response([("www.site.example.", "A", "192.0.2.1")], edns=False)
    with pytest.raises(MessageError):
        Message(wire[:-2])
    bad = bytearray(wire)
    bad[-16:-14] = struct.pack("!H", 0xC000 | (len(wire) - 4))  # the owner points forward
    with pytest.raises(MessageError):
        Message(bytes(bad))


def test_negative_ttl_ttl_offsets_and_addresses() -> None:
    wire = response(
        [("www.site.example.", "A", "192.0.2.1"), ("www.site.example.", "AAAA", "2001:db8::1")],
        authority=[("site.example.", "SOA", "ns. host. 1 2 3 4 60")],
    )
    message = Message(wire)
    assert message.negative_ttl() == 60
    assert message.answer_addresses() == ["192.0.2.1", "2001:db8::1"]
    offsets = message.ttl_offsets()
    assert [ttl for _, ttl in offsets] == [300, 300, 300]
    for offset, _ in offsets:
        assert struct.unpack_from("!I", wire, offset)[0] == 300


def test_a_pointer_into_the_target_name_survives() -> None:
    """Some servers compress a later name against the SVCB target; it must still resolve after the edit."""
    query = dns.message.make_query("www.site.example", "HTTPS", use_edns=False)
    head = bytearray(dns.message.make_response(query).to_wire())
    rdata = https(WITH_MANDATORY)  # target svc.example.net. starts at rdata offset 2
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 65, 1, 300, len(rdata)) + rdata
    target_at = len(head) + len(answer) - len(rdata) + 2
    additional = struct.pack("!H", 0xC000 | target_at) + struct.pack("!HHIH", 28, 1, 300, 16) + bytes(15) + b"\x01"
    head[6:8] = struct.pack("!H", 1)
    head[10:12] = struct.pack("!H", 1)
    wire = bytes(head) + answer + additional
    after = dns.message.from_wire(clean_answer(wire))
    assert 5 not in params(after)[0]
    assert str(after.additional[0].name) == "svc.example.net."
    assert after.additional[0][0].address == "::1"


def test_a_pointer_must_land_on_a_name() -> None:
    """A pointer into record data of an unknown type can land on anything: the bytes there
    must read as a name, or the answer is refused (found by the hostile-upstream fuzzer)."""
    query = dns.message.make_query("www.site.example", "A", use_edns=False)
    head = bytearray(dns.message.make_response(query).to_wire())
    garbage = b"\x03www\x08facebookxcom\x00"  # 'x' (0x78) is a reserved label type
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 0x97F2, 1, 300, len(garbage)) + garbage
    owner_at = len(head) + 12
    second = struct.pack("!H", 0xC000 | owner_at) + struct.pack("!HHIH", 1, 1, 300, 4) + bytes(4)
    head[6:8] = struct.pack("!H", 2)
    with pytest.raises(MessageError):
        Message(bytes(head) + answer + second)
    fine = b"\x03www\x08facebook\x03com\x00"
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 0x97F2, 1, 300, len(fine)) + fine
    assert len(Message(bytes(head) + answer + second).records) == 2


def test_a_name_made_longer_than_255_bytes_by_a_pointer_is_refused() -> None:
    long_label = b"\x3f" + b"a" * 63
    query = dns.message.make_query("www.site.example", "CNAME", use_edns=False)
    head = bytearray(dns.message.make_response(query).to_wire())
    target = long_label * 3 + b"\x00"  # 193 bytes: a name on its own
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 300, len(target)) + target
    target_at = len(head) + 12
    owner = long_label + struct.pack("!H", 0xC000 | target_at)  # 64 + 193 bytes: too long
    second = owner + struct.pack("!HHIH", 1, 1, 300, 4) + bytes(4)
    head[6:8] = struct.pack("!H", 2)
    with pytest.raises(MessageError):
        Message(bytes(head) + answer + second)


def test_bytes_after_the_last_record_are_not_passed_on() -> None:
    wire = response([("www.site.example.", "A", "192.0.2.1")], edns=False)
    cleaned = clean_answer(wire + b"\x00smuggled")
    assert cleaned == wire


@pytest.mark.parametrize("qdcount", [0, 2, 65535])
def test_an_answer_must_count_one_question(qdcount: int) -> None:
    """Our question's bytes under a header counting none reached a client as a reply without a
    question (found by the hostile-upstream fuzzer): such an answer is an upstream failure."""
    query = dns.message.make_query("www.site.example", "A", use_edns=False)
    wire = bytearray(dns.message.make_response(query).to_wire())
    wire[4:6] = struct.pack("!H", qdcount)
    with pytest.raises(UpstreamFailure):
        clean_answer(bytes(wire))


def _with_opt_in(sections: tuple[int, int, int]) -> bytes:
    """An answer for a.example A with one A record in the answer section and an OPT record in
    each section named (1 answer, 2 authority, 3 additional), as a hostile upstream may send."""
    question = b"\x01a\x07example\x00" + struct.pack("!HH", 1, 1)
    a_record = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + bytes([192, 0, 2, 1])
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
    bodies = {1: a_record, 2: b"", 3: b""}
    counts = [1, 1, 0, 0]
    for section in sections:
        bodies[section] += opt
        counts[section] += 1
    return struct.pack("!HHHHHH", 0x1234, 0x8180, *counts) + question + bodies[1] + bodies[2] + bodies[3]


@pytest.mark.parametrize("sections", [(3,), (3, 3), (1,), (2,), (1, 2, 3)])
def test_opt_records_are_removed_from_whichever_section_holds_them(sections: tuple[int, int, int]) -> None:
    # A hostile upstream put an OPT record in the answer or authority section: removing it took
    # one from the additional count, which went negative and failed the whole query
    # (struct.error) instead of answering it (found by the hostile-upstream fuzzer).
    cleaned = Message(clean_answer(_with_opt_in(sections)))
    assert cleaned.counts == [1, 1, 0, 0]
    assert [r.rtype for r in cleaned.records] == [1]
    assert cleaned.answer_addresses() == ["192.0.2.1"]
