"""Turn the packets the ruleset refuses into circumvention attempts.

The ruleset logs each refused attempt (DoT, DoH to a resolver's address, QUIC to a watched
service) and each DNS query sent past the appliance to an NFLOG group. This module binds a
netlink socket to that group and parses the kernel's messages: the log prefix says what kind
of attempt it was, the packet headers say who (source address, MAC) and where (destination,
port). Parsing is pure (bytes in, attempt out) so it is tested without root.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from schoolgate.gateway.ruleset import KINDS, LOG_PREFIX

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULA_CFG_TIMEOUT = 4  # u32, hundredths of a second
NFULA_CFG_QTHRESH = 5  # u32, packets
NFULNL_CFG_CMD_BIND = 1
NFULNL_CFG_CMD_UNBIND = 2
NFULNL_COPY_PACKET = 2
FLUSH_TIMEOUT_CS = 10
QUEUE_THRESHOLD = 32
NFULA_HWADDR = 8
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10
NFULA_TIMESTAMP = 3
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2
NLMSG_DONE = 3
_NLA_TYPE_MASK = 0x3FFF
_PROTOCOLS = {6: "tcp", 17: "udp"}


@dataclass(frozen=True)
class Attempt:
    """One refused or redirected circumvention attempt, as the kernel saw it."""

    kind: str  # one of schoolgate.gateway.ruleset.KINDS
    client_ip: str
    mac: str | None
    dest_ip: str
    dest_port: int
    protocol: str  # tcp, udp
    at: datetime


class NflogParseError(ValueError):
    pass


def _attributes(data: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4 or offset + length > len(data):
            raise NflogParseError("truncated netlink attribute")
        yield kind & _NLA_TYPE_MASK, data[offset + 4 : offset + length]
        offset += (length + 3) & ~3


def _addresses(payload: bytes) -> tuple[str, str, str, int]:
    """(source, destination, protocol, destination port) from an IP packet's headers."""
    if not payload:
        raise NflogParseError("no packet payload")
    version = payload[0] >> 4
    if version == 4:
        if len(payload) < 20:
            raise NflogParseError("short IPv4 header")
        header_len = (payload[0] & 0x0F) * 4
        proto = payload[9]
        src = str(ipaddress.IPv4Address(payload[12:16]))
        dst = str(ipaddress.IPv4Address(payload[16:20]))
        transport = payload[header_len:]
    elif version == 6:
        if len(payload) < 40:
            raise NflogParseError("short IPv6 header")
        proto = payload[6]  # extension headers are not followed: the ruleset matched on l4proto
        src = str(ipaddress.IPv6Address(payload[8:24]))
        dst = str(ipaddress.IPv6Address(payload[24:40]))
        transport = payload[40:]
    else:
        raise NflogParseError(f"not an IP packet (version {version})")
    if proto not in _PROTOCOLS or len(transport) < 4:
        raise NflogParseError(f"unexpected transport protocol {proto}")
    (dport,) = struct.unpack_from("!H", transport, 2)
    return src, dst, _PROTOCOLS[proto], dport


def parse_packet_message(body: bytes, received_at: datetime | None = None) -> Attempt | None:
    """Parse one NFULNL_MSG_PACKET body (after the netlink header).

    Returns None for messages that are not ours (another prefix shares the group).
    """
    if len(body) < 4:
        raise NflogParseError("short nfgenmsg")
    prefix = ""
    payload = b""
    mac: str | None = None
    at = received_at or datetime.now(UTC)
    for kind, value in _attributes(body[4:]):
        if kind == NFULA_PREFIX:
            prefix = value.split(b"\0", 1)[0].decode("ascii", "replace")
        elif kind == NFULA_PAYLOAD:
            payload = value
        elif kind == NFULA_HWADDR and len(value) >= 4:
            (length,) = struct.unpack_from("!H", value, 0)
            raw = value[4 : 4 + min(length, 8)]
            if len(raw) == 6:
                mac = ":".join(f"{b:02x}" for b in raw)
        elif kind == NFULA_TIMESTAMP and len(value) == 16:
            sec, usec = struct.unpack("!QQ", value)
            at = datetime.fromtimestamp(sec + usec / 1e6, UTC)
    if not prefix.startswith(LOG_PREFIX):
        return None
    attempt_kind = prefix[len(LOG_PREFIX) :].strip()
    if attempt_kind not in KINDS:
        return None
    src, dst, proto, dport = _addresses(payload)
    return Attempt(attempt_kind, src, mac, dst, dport, proto, at)


def split_netlink(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(message type, body) for each netlink message in a datagram."""
    offset = 0
    while offset + 16 <= len(data):
        length, msg_type, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, offset)
        if length < 16 or offset + length > len(data):
            raise NflogParseError("truncated netlink message")
        yield msg_type, data[offset + 16 : offset + length]
        offset += (length + 3) & ~3


def _nla(kind: int, value: bytes) -> bytes:
    padded = value + b"\0" * ((4 - len(value) % 4) % 4)
    return struct.pack("=HH", 4 + len(value), kind) + padded


def _config_message(group: int, attributes: bytes, seq: int, family: int = socket.AF_UNSPEC) -> bytes:
    body = struct.pack("=BBH", family, 0, socket.htons(group)) + attributes
    msg_type = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
    return struct.pack("=IHHII", 16 + len(body), msg_type, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


class NflogSocket:
    """A netlink socket bound to one NFLOG group, yielding parsed attempts. Needs CAP_NET_ADMIN."""

    def __init__(self, group: int, *, buffer_bytes: int = 4 << 20) -> None:
        self.group = group
        self.errors = 0
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
        self._sock.bind((0, 0))
        self._seq = 0
        # A group stays bound to a socket that died uncleanly; unbind first so we can take it.
        self._request(_nla(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_UNBIND])), tolerate=True)
        self._request(_nla(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND])))
        self._request(_nla(NFULA_CFG_MODE, struct.pack("!IBB", 0xFFFF, NFULNL_COPY_PACKET, 0)))
        # The kernel's defaults hold up to 100 packets for up to 1 s before sending them: a
        # watcher that dies loses what the kernel held back. Send within 0.1 s (batching up
        # to 32 packets under a flood), so a restart loses as little as the event writer does.
        self._request(_nla(NFULA_CFG_TIMEOUT, struct.pack("!I", FLUSH_TIMEOUT_CS)))
        self._request(_nla(NFULA_CFG_QTHRESH, struct.pack("!I", QUEUE_THRESHOLD)))

    def _request(self, attributes: bytes, *, tolerate: bool = False) -> None:
        self._seq += 1
        self._sock.send(_config_message(self.group, attributes, self._seq))
        while True:
            data = self._sock.recv(65536)
            for msg_type, body in split_netlink(data):
                if msg_type == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", body, 0)
                    if code and not tolerate:
                        raise OSError(-code, f"NFLOG group {self.group}: {os.strerror(-code)}")
                    return

    def fileno(self) -> int:
        return self._sock.fileno()

    def settimeout(self, seconds: float | None) -> None:
        self._sock.settimeout(seconds)

    def receive(self) -> list[Attempt]:
        """Block until the kernel sends something; return the attempts in it."""
        data = self._sock.recv(1 << 17)
        found = []
        packet_type = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET
        for msg_type, body in split_netlink(data):
            if msg_type != packet_type:
                continue
            try:
                attempt = parse_packet_message(body)
            except NflogParseError:
                self.errors += 1
                continue
            if attempt is not None:
                found.append(attempt)
        return found

    def close(self) -> None:
        self._sock.close()
