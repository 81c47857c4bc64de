"""The kernel's neighbour table (ARP and NDP): which MAC is behind a LAN address.

Read through a netlink socket of its own (RTM_GETNEIGH, a dump of every entry) in whichever
network namespace the daemon runs. The table is cached; a lookup that misses refreshes it, but at
most once per ``min_refresh`` seconds, so a flood of queries from unknown addresses cannot turn
into a flood of netlink dumps.

The dump is one request and a few replies of fixed layout, read here with the standard library:
pyroute2 did it before, and importing it cost every daemon that looks up a MAC (DNS, proxy,
console, net watch, identity) about 22 MB and 300 modules for this one request.
"""

from __future__ import annotations

import ctypes
import functools
import ipaddress
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from schoolgate.identity.macs import normalise_mac

log = logging.getLogger(__name__)

# Linux NUD states (include/uapi/linux/neighbour.h) that vouch for the link-layer address.
NUD_REACHABLE = 0x02
NUD_STALE = 0x04
NUD_DELAY = 0x08
NUD_PROBE = 0x10
NUD_PERMANENT = 0x80
USABLE_STATES = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT

Dump = Callable[[], Iterable[Mapping[str, Any]]]


def _attr(message: Mapping[str, Any], name: str) -> Any:
    getter = getattr(message, "get_attr", None)
    if getter is not None:
        return getter(name)
    for key, value in message.get("attrs", ()):
        if key == name:
            return value
    return None


@functools.lru_cache(maxsize=65_536)
def canonical_ip(ip: str) -> str:
    """One spelling per address (IPv6 compressed, IPv4-mapped IPv6 unwrapped).

    Cached: it runs on every DNS query, and a LAN has a bounded set of client addresses.
    """
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def parse_neighbours(messages: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """{ip: mac} from RTM_NEWNEIGH messages, keeping only entries with a usable MAC."""
    table: dict[str, str] = {}
    for message in messages:
        if not int(message.get("state", 0)) & USABLE_STATES:
            continue
        dst = _attr(message, "NDA_DST")
        lladdr = _attr(message, "NDA_LLADDR")
        if not dst or not lladdr:
            continue
        mac = normalise_mac(str(lladdr))
        if mac is None or mac == "00:00:00:00:00:00":
            continue
        table[canonical_ip(str(dst))] = mac
    return table


# Netlink (include/uapi/linux/netlink.h, rtnetlink.h, neighbour.h).
NETLINK_ROUTE = 0
NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWNEIGH = 28
RTM_GETNEIGH = 30
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NDA_DST = 1
NDA_LLADDR = 2
NLA_TYPE_MASK = 0x3FFF  # without the nested and byte-order flags
CLONE_NEWNET = 0x40000000
NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port
NDMSG = struct.Struct("=BxxxiHBB")  # family, (padding), ifindex, state, flags, type
RTATTR = struct.Struct("=HH")  # length, type
RECEIVE_BYTES = 1 << 16


def _align(length: int) -> int:
    return (length + 3) & ~3


def parse_dump(data: bytes) -> tuple[list[dict[str, Any]], bool]:
    """The neighbour entries in one datagram of a dump's replies, and whether the dump is done.

    Each entry as parse_neighbours reads it: {"family", "state", "attrs": [(name, value)]},
    with NDA_DST as the address text and NDA_LLADDR as colon-separated hex.
    """
    entries: list[dict[str, Any]] = []
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _port = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or offset + length > len(data):
            raise ValueError(f"netlink message of {length} bytes at offset {offset} of {len(data)}")
        body = offset + NLMSGHDR.size
        if kind == NLMSG_DONE:
            return entries, True
        if kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, body)
            if code:
                raise OSError(-code, f"netlink neighbour dump: {os.strerror(-code)}")
        elif kind == RTM_NEWNEIGH and length >= NLMSGHDR.size + NDMSG.size:
            family, _ifindex, state, _nflags, _ntype = NDMSG.unpack_from(data, body)
            attrs: list[tuple[str, str]] = []
            at = body + NDMSG.size
            end = offset + length
            while at + RTATTR.size <= end:
                size, attr = RTATTR.unpack_from(data, at)
                if size < RTATTR.size or at + size > end:
                    break
                value = data[at + RTATTR.size : at + size]
                attr &= NLA_TYPE_MASK
                if attr == NDA_DST and family in (socket.AF_INET, socket.AF_INET6):
                    attrs.append(("NDA_DST", socket.inet_ntop(family, value)))
                elif attr == NDA_LLADDR:
                    attrs.append(("NDA_LLADDR", ":".join(f"{byte:02x}" for byte in value)))
                at += _align(size)
            entries.append({"family": family, "state": state, "attrs": attrs})
        offset += _align(length)
    return entries, False


def _netlink_socket(netns: str | None) -> socket.socket:
    """A NETLINK_ROUTE socket of the current network namespace, or of the named one
    (/run/netns/NAME, as `ip netns` names them): made in a helper thread that enters it, since a
    namespace is entered per thread and a socket stays in the namespace it was made in."""
    if netns is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    made: list[socket.socket] = []
    failed: list[BaseException] = []

    def enter_and_make() -> None:
        try:
            fd = os.open(os.path.join("/run/netns", netns), os.O_RDONLY)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                    error = ctypes.get_errno()
                    raise OSError(error, f"cannot enter network namespace {netns}: {os.strerror(error)}")
            finally:
                os.close(fd)
            made.append(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE))
        except BaseException as err:  # handed to the caller's thread
            failed.append(err)

    helper = threading.Thread(target=enter_and_make, name="schoolgate-netns", daemon=True)
    helper.start()
    helper.join()
    if failed:
        raise failed[0]
    return made[0]


def netlink_dump(netns: str | None = None, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Every neighbour entry (IPv4 and IPv6) of the current (or the named) network namespace.

    Synchronous and short (one request, replies of a few kilobytes): safe to call from a thread
    that runs an asyncio loop too.
    """
    with _netlink_socket(netns) as sock:
        sock.settimeout(timeout)
        sock.bind((0, 0))  # the kernel picks the port
        sequence = 1
        request = NLMSGHDR.pack(NLMSGHDR.size + NDMSG.size, RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP, sequence, 0)
        sock.send(request + NDMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))
        entries: list[dict[str, Any]] = []
        done = False
        while not done:
            found, done = parse_dump(sock.recv(RECEIVE_BYTES))
            entries.extend(found)
        return entries


class NeighbourTable:
    """A cached ip -> MAC map of the neighbour table, refreshed on a miss."""

    def __init__(self, *, min_refresh: float = 2.0, dump: Dump | None = None, netns: str | None = None) -> None:
        self.min_refresh = min_refresh
        self._dump: Dump = dump or (lambda: netlink_dump(netns))
        self._table: dict[str, str] = {}
        self._refreshed_at = float("-inf")
        self._lock = threading.Lock()
        self.refreshes = 0
        self.errors = 0

    def lookup(self, ip: str) -> str | None:
        key = canonical_ip(ip)
        mac = self._table.get(key)
        if mac is not None:
            return mac
        if time.monotonic() - self._refreshed_at < self.min_refresh:
            return None
        self.refresh(force=False)
        return self._table.get(key)

    def refresh(self, *, force: bool = True) -> None:
        """Re-read the kernel table (unless another thread just did, when not forced)."""
        with self._lock:
            if not force and time.monotonic() - self._refreshed_at < self.min_refresh:
                return
            self._refreshed_at = time.monotonic()
            try:
                table = parse_neighbours(self._dump())
            except Exception as err:  # netlink trouble must not stop name resolution
                self.errors += 1
                log.warning("cannot read the neighbour table: %s", err)
                return
            self.refreshes += 1
            self._table = table  # swapped whole: readers never see a half-built map

    def snapshot(self) -> dict[str, str]:
        return dict(self._table)
