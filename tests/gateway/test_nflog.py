"""Parsing the kernel's NFLOG messages into circumvention attempts, and attempts into events."""

from __future__ import annotations

import ipaddress
import socket
import struct
from datetime import UTC, datetime

import pytest

from schoolgate.gateway.circumvention import AttemptDeduplicator, attempt_event
from schoolgate.gateway.nflog import (
    NFNL_SUBSYS_ULOG,
    NFULA_HWADDR,
    NFULA_PAYLOAD,
    NFULA_PREFIX,
    NFULA_TIMESTAMP,
    NFULNL_MSG_PACKET,
    Attempt,
    NflogParseError,
    parse_packet_message,
    split_netlink,
)
from schoolgate.gateway.ruleset import LOG_PREFIX
from schoolgate.policy.types import Client, Role


def nla(kind: int, value: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(value), kind) + value + b"\0" * ((4 - len(value) % 4) % 4)


def ipv4_packet(src: str, dst: str, proto: int, dport: int) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        40,
        1,
        0,
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return header + struct.pack("!HH", 40000, dport) + b"\0" * 16


def ipv6_packet(src: str, dst: str, proto: int, dport: int) -> bytes:
    header = struct.pack(
        "!IHBB16s16s", 6 << 28, 8, proto, 64, ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    )
    return header + struct.pack("!HH", 40000, dport) + b"\0" * 4


def message(
    prefix: str,
    payload: bytes,
    mac: bytes | None = b"\x02\x77\0\0\0\x11",
    family: int = socket.AF_INET,
    stamp: int | None = None,
) -> bytes:
    body = struct.pack("=BBH", family, 0, socket.htons(7))
    if mac is not None:
        body += nla(NFULA_HWADDR, struct.pack("!HH", len(mac), 0) + mac + b"\0" * (8 - len(mac)))
    if stamp is not None:
        body += nla(NFULA_TIMESTAMP, struct.pack("!QQ", stamp, 250000))
    body += nla(NFULA_PREFIX, prefix.encode() + b"\0")
    body += nla(NFULA_PAYLOAD, payload)
    return body


@pytest.mark.parametrize(
    ("kind", "packet", "expected"),
    [
        ("dot", ipv4_packet("10.77.0.11", "198.51.100.9", 6, 853), ("10.77.0.11", "198.51.100.9", 853, "tcp")),
        ("doh", ipv4_packet("10.77.0.11", "1.1.1.1", 6, 443), ("10.77.0.11", "1.1.1.1", 443, "tcp")),
        ("quic", ipv4_packet("10.77.0.11", "203.0.113.10", 17, 443), ("10.77.0.11", "203.0.113.10", 443, "udp")),
        ("dns-bypass", ipv4_packet("10.77.0.11", "8.8.8.8", 17, 53), ("10.77.0.11", "8.8.8.8", 53, "udp")),
        ("quic", ipv6_packet("fd77::11", "2a03:2880::1", 17, 443), ("fd77::11", "2a03:2880::1", 443, "udp")),
    ],
)
def test_parses_each_kind(kind: str, packet: bytes, expected: tuple[str, str, int, str]) -> None:
    attempt = parse_packet_message(message(f"{LOG_PREFIX}{kind} ", packet))
    assert attempt is not None
    assert (attempt.client_ip, attempt.dest_ip, attempt.dest_port, attempt.protocol) == expected
    assert attempt.kind == kind
    assert attempt.mac == "02:77:00:00:00:11"


def test_kernel_timestamp_is_used_when_present() -> None:
    attempt = parse_packet_message(
        message(f"{LOG_PREFIX}dot ", ipv4_packet("10.0.0.2", "9.9.9.9", 6, 853), stamp=1_795_000_000)
    )
    assert attempt is not None
    assert attempt.at == datetime.fromtimestamp(1_795_000_000.25, UTC)


def test_no_mac_is_fine() -> None:
    attempt = parse_packet_message(message(f"{LOG_PREFIX}dot ", ipv4_packet("10.0.0.2", "9.9.9.9", 6, 853), mac=None))
    assert attempt is not None and attempt.mac is None


@pytest.mark.parametrize("prefix", ["someone-else: ", f"{LOG_PREFIX}unknown-kind ", ""])
def test_messages_that_are_not_ours_are_ignored(prefix: str) -> None:
    assert parse_packet_message(message(prefix, ipv4_packet("10.0.0.2", "9.9.9.9", 6, 853))) is None


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x45" + b"\0" * 10, b"\x75" + b"\0" * 60, ipv4_packet("10.0.0.2", "9.9.9.9", 1, 0)],
    ids=["empty", "short-v4", "bad-version", "icmp"],
)
def test_malformed_payload_is_an_error(payload: bytes) -> None:
    with pytest.raises(NflogParseError):
        parse_packet_message(message(f"{LOG_PREFIX}dot ", payload))


def test_truncated_attribute_is_an_error() -> None:
    body = message(f"{LOG_PREFIX}dot ", ipv4_packet("10.0.0.2", "9.9.9.9", 6, 853))
    with pytest.raises(NflogParseError):
        parse_packet_message(body[:-30])


def test_split_netlink_walks_several_messages() -> None:
    packet_type = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET
    bodies = [message(f"{LOG_PREFIX}dot ", ipv4_packet("10.0.0.2", "9.9.9.9", 6, 853)), b"\0\0\0\0"]
    data = b"".join(struct.pack("=IHHII", 16 + len(b), packet_type, 0, 0, 0) + b for b in bodies)
    assert [(t, b) for t, b in split_netlink(data)] == [(packet_type, bodies[0]), (packet_type, bodies[1])]


ATTEMPT = Attempt(
    "dot", "10.77.0.11", "02:77:00:00:00:11", "198.51.100.9", 853, "tcp", datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
)


def test_event_carries_every_field_and_the_circumvention_flag() -> None:
    client = Client(
        ip="10.77.0.11",
        mac="02:77:00:00:00:11",
        device_id="ipad-11",
        device_name="iPad 11",
        person_id="p-1",
        person_name="Ada",
        role=Role.PUPIL,
    )
    ts = datetime(2026, 11, 23, 10, 0, 1, tzinfo=UTC)
    event = attempt_event(ATTEMPT, client, site="lab", ts=ts)
    row = event.row()
    assert row["source"] == "gateway" and row["site"] == "lab" and row["ts"] == ts
    assert (row["client_ip"], row["mac"], row["device_id"], row["device_name"]) == (
        "10.77.0.11",
        "02:77:00:00:00:11",
        "ipad-11",
        "iPad 11",
    )
    assert (row["person_id"], row["person_name"], row["role"]) == ("p-1", "Ada", "pupil")
    assert (row["host"], row["url"]) == ("198.51.100.9", "tcp://198.51.100.9:853")
    assert (row["verdict"], row["rule_id"], row["category"]) == ("block", "gateway.refuse.dot", "circumvention")
    assert set(row["flags"].split(",")) == {"circumvention", "dot"}
    # Without the school's policy, the refusal says it cites none; with it, the school's clause.
    assert row["clause"].startswith("not in the school's policy")
    ours = "Policy for Social Media §9: attempts made to circumvent the network's firewalls"
    assert attempt_event(ATTEMPT, client, site="lab", ts=ts, circumvention_clause=ours).row()["clause"] == ours
    quic = Attempt("quic", "10.77.0.11", None, "198.51.100.9", 443, "udp", ATTEMPT.at)
    assert attempt_event(quic, client, site="lab", ts=ts, circumvention_clause=ours).row()["clause"] != ours


@pytest.mark.parametrize(
    ("kind", "port", "protocol", "verdict", "rule_id", "category", "flags"),
    [
        # intent: encrypted DNS past the school's resolver, refused
        ("dot", 853, "tcp", "block", "gateway.refuse.dot", "circumvention", {"circumvention", "dot"}),
        ("doh", 443, "tcp", "block", "gateway.refuse.doh", "circumvention", {"circumvention", "doh"}),
        # every browser tries HTTP/3 and falls back to TCP: refused quietly, never circumvention
        ("quic", 443, "udp", "refused", "gateway.refuse.quic", None, {"quic"}),
        # printers, TVs and phones with a resolver of their own: answered by schoolgate anyway
        ("dns-bypass", 53, "udp", "redirect", "gateway.redirect.dns", None, {"foreign_resolver"}),
    ],
)
def test_each_kind_is_recorded_for_what_it_is(
    kind: str, port: int, protocol: str, verdict: str, rule_id: str, category: str | None, flags: set[str]
) -> None:
    attempt = Attempt(kind, "10.77.0.11", "02:77:00:00:00:11", "198.51.100.9", port, protocol, ATTEMPT.at)
    row = attempt_event(attempt, Client(ip="10.77.0.11", role=Role.STAFF), site="lab", ts=ATTEMPT.at).row()
    assert (row["verdict"], row["rule_id"], row["category"]) == (verdict, rule_id, category)
    assert set(row["flags"].split(",")) == flags
    assert row["url"] == f"{protocol}://198.51.100.9:{port}"


def test_unknown_device_is_recorded_with_the_strictest_role_and_the_kernel_mac() -> None:
    event = attempt_event(ATTEMPT, Client(ip="10.77.0.11"), site="lab", ts=ATTEMPT.at)
    assert event.role == "guest" and event.mac == "02:77:00:00:00:11" and event.device_id is None


def test_ipv6_destination_is_bracketed_in_the_url() -> None:
    attempt = Attempt("quic", "fd77::11", None, "2a03:2880::1", 443, "udp", ATTEMPT.at)
    assert attempt_event(attempt, Client(ip="fd77::11"), site="lab", ts=ATTEMPT.at).url == "udp://[2a03:2880::1]:443"


def test_a_burst_of_retries_is_one_attempt() -> None:
    dedup = AttemptDeduplicator(window_s=5)
    assert dedup.first(ATTEMPT, 100.0)
    assert not dedup.first(ATTEMPT, 101.0)
    other_port = Attempt("dot", "10.77.0.11", None, "198.51.100.9", 8853, "tcp", ATTEMPT.at)
    assert dedup.first(other_port, 101.0)
    assert dedup.first(ATTEMPT, 106.0)
