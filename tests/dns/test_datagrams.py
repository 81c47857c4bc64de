"""Datagrams received and sent in batches (dns/_datagrams.c), on real loopback sockets."""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterator

import pytest

from schoolgate.dns._datagrams import receive, send


@contextlib.contextmanager
def udp(family: int = socket.AF_INET, host: str = "127.0.0.1", *, v6only: bool = True) -> Iterator[socket.socket]:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if v6only else 0)
        sock.bind((host, 0))
        sock.setblocking(False)
        yield sock
    finally:
        sock.close()


def wait_readable(sock: socket.socket) -> None:
    """Block until a datagram waits (loopback delivers at once; the bound is the kernel's, not ours)."""
    import select

    readable, _, _ = select.select([sock], [], [], 30)
    assert readable, "no datagram arrived"


def test_nothing_waiting_is_an_empty_list() -> None:
    with udp() as server:
        assert receive(server.fileno(), 64) == []


def test_waiting_datagrams_come_in_one_call_and_each_answer_goes_back_to_its_sender() -> None:
    with udp() as server, udp() as first, udp() as second:
        address = server.getsockname()
        first.sendto(b"one", address)
        second.sendto(b"two", address)
        first.sendto(b"three", address)
        wait_readable(server)
        got = []
        while len(got) < 3:  # all three are in the queue once the last sendto has returned
            got += receive(server.fileno(), 64)
        assert [(data, ip) for data, ip, _ in got] == [(b"one", "127.0.0.1"), (b"two", "127.0.0.1"),
                                                       (b"three", "127.0.0.1")]
        assert got[0][2] == got[2][2] != got[1][2]  # each sender's own socket address
        assert send(server.fileno(), [(data.upper(), sender) for data, _, sender in got]) == (3, 0)
        first.setblocking(True)
        second.setblocking(True)
        assert sorted([first.recv(100), first.recv(100)]) == [b"ONE", b"THREE"]
        assert second.recv(100) == b"TWO"


def test_at_most_count_datagrams_per_call_the_rest_wait() -> None:
    with udp() as server, udp() as client:
        for n in range(5):
            client.sendto(b"q%d" % n, server.getsockname())
        wait_readable(server)
        assert [d for d, _, _ in receive(server.fileno(), 2)] == [b"q0", b"q1"]
        assert [d for d, _, _ in receive(server.fileno(), 64)] == [b"q2", b"q3", b"q4"]


def test_a_large_datagram_arrives_whole() -> None:
    with udp() as server, udp() as client:
        payload = bytes(range(256)) * 200  # 51,200 bytes
        client.sendto(payload, server.getsockname())
        wait_readable(server)
        ((data, _, _),) = receive(server.fileno(), 1)
        assert data == payload


def ipv6_loopback() -> bool:
    try:
        with udp(socket.AF_INET6, "::1"):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv6_senders_are_named_as_the_policy_spells_them() -> None:
    with udp(socket.AF_INET6, "::1") as server, udp(socket.AF_INET6, "::1") as client:
        client.sendto(b"six", server.getsockname()[:2])
        wait_readable(server)
        ((data, ip, sender),) = receive(server.fileno(), 8)
        assert (data, ip) == (b"six", "::1")
        assert send(server.fileno(), [(b"answer", sender)]) == (1, 0)
        client.setblocking(True)
        assert client.recv(100) == b"answer"
    # An IPv4 sender reaching a dual-stack socket is named by its IPv4 address, not ::ffff:...
    with udp(socket.AF_INET6, "::", v6only=False) as server, udp() as client:
        client.sendto(b"four", ("127.0.0.1", server.getsockname()[1]))
        wait_readable(server)
        ((data, ip, _),) = receive(server.fileno(), 8)
        assert (data, ip) == (b"four", "127.0.0.1")


def test_an_answer_the_kernel_refuses_alone_is_counted_and_the_others_still_go() -> None:
    with udp() as server, udp() as client:
        client.sendto(b"q", server.getsockname())
        wait_readable(server)
        ((_, _, sender),) = receive(server.fileno(), 1)
        # An IPv6 socket address on an IPv4 socket: refused for that answer alone.
        foreign = socket.inet_pton(socket.AF_INET6, "::1")
        v6_address = (socket.AF_INET6).to_bytes(2, "little") + bytes(6) + foreign + bytes(4)
        assert send(server.fileno(), [(b"a1", sender), (b"lost", v6_address), (b"a2", sender)]) == (2, 1)
        client.setblocking(True)
        assert [client.recv(10), client.recv(10)] == [b"a1", b"a2"]


@pytest.mark.parametrize(
    ("replies", "error"),
    [
        pytest.param(((b"a", b"\x02\x00" + bytes(14)),), TypeError, id="not a list"),
        pytest.param([b"answer"], TypeError, id="not a pair"),
        pytest.param([("answer", b"\x02\x00" + bytes(14))], TypeError, id="text, not bytes"),
        pytest.param([(b"answer", b"\x02")], ValueError, id="a sender too short"),
        pytest.param([(b"answer", bytes(200))], ValueError, id="a sender too long"),
    ],
)
def test_what_is_not_a_reply_is_refused_before_anything_is_sent(replies: object, error: type[Exception]) -> None:
    with udp() as server, pytest.raises(error):
        send(server.fileno(), replies)  # type: ignore[arg-type]


@pytest.mark.parametrize("count", [0, 65, -1])
def test_a_count_outside_one_to_sixty_four_is_refused(count: int) -> None:
    with udp() as server, pytest.raises(ValueError, match="count"):
        receive(server.fileno(), count)


def test_a_closed_socket_is_an_os_error() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fd = sock.fileno()
    sock.close()
    with pytest.raises(OSError) as raised:
        receive(fd, 8)
    assert raised.value.errno == errno.EBADF
    with pytest.raises(ValueError, match="descriptor"):
        receive(-1, 8)
