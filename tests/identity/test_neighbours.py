"""The neighbour dump's replies as the kernel writes them, and what reading them costs a daemon."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys

import pytest

from schoolgate.identity.neighbours import (
    NDA_DST,
    NDA_LLADDR,
    NDMSG,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSGHDR,
    NUD_REACHABLE,
    RTATTR,
    RTM_NEWNEIGH,
    parse_dump,
    parse_neighbours,
)


def attr(kind: int, value: bytes) -> bytes:
    raw = RTATTR.pack(RTATTR.size + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def message(kind: int, body: bytes) -> bytes:
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, 0, 1, 0) + body


def neighbour(family: int, address: str, mac: bytes | None, state: int = NUD_REACHABLE) -> bytes:
    body = NDMSG.pack(family, 2, state, 0, 1) + attr(NDA_DST, socket.inet_pton(family, address))
    if mac is not None:
        body += attr(NDA_LLADDR, mac)
    return message(RTM_NEWNEIGH, body)


DONE = message(NLMSG_DONE, struct.pack("=i", 0))


@pytest.mark.parametrize(
    ("datagram", "table", "done"),
    [
        (neighbour(socket.AF_INET, "10.41.20.15", bytes.fromhex("021122334455")) + DONE,
         {"10.41.20.15": "02:11:22:33:44:55"}, True),
        # IPv6, and an entry with no link-layer address (an incomplete one): kept out of the table
        (neighbour(socket.AF_INET6, "fd41::15", bytes.fromhex("02aabbccddee"))
         + neighbour(socket.AF_INET, "10.41.20.16", None),
         {"fd41::15": "02:aa:bb:cc:dd:ee"}, False),
        # a failed entry (state 0x20) vouches for nothing
        (neighbour(socket.AF_INET, "10.41.20.17", bytes.fromhex("021122334455"), state=0x20) + DONE, {}, True),
        # an acknowledgement (error 0) is not an error
        (message(NLMSG_ERROR, struct.pack("=i", 0) + NLMSGHDR.pack(16, 30, 0, 1, 0)) + DONE, {}, True),
    ],
)
def test_a_dump_datagram_read(datagram: bytes, table: dict[str, str], done: bool) -> None:
    entries, finished = parse_dump(datagram)
    assert (parse_neighbours(entries), finished) == (table, done)


def test_a_refused_dump_is_an_error_that_names_the_reason() -> None:
    refused = message(NLMSG_ERROR, struct.pack("=i", -1) + NLMSGHDR.pack(16, 30, 0, 1, 0))
    with pytest.raises(OSError, match="not permitted"):
        parse_dump(refused)


def test_a_cut_short_reply_is_refused_not_misread() -> None:
    whole = neighbour(socket.AF_INET, "10.41.20.15", bytes.fromhex("021122334455"))
    with pytest.raises(ValueError, match="netlink message"):
        parse_dump(whole[:-6])


def test_reading_the_table_does_not_import_pyroute2() -> None:
    # Every daemon that names a device reads this table; pyroute2 was ~22 MB in each of them.
    script = (
        "import sys\n"
        "from schoolgate.identity.neighbours import NeighbourTable\n"
        "table = NeighbourTable(min_refresh=0)\n"
        "table.refresh()\n"
        "assert table.errors == 0, 'the dump failed'\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pyroute2'))\n"
    )
    done = subprocess.run([sys.executable, "-P", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
