"""Connections accepted in batches with their original destination and first bytes
(proxy/_accept.c), on real loopback sockets; the redirected ones in network namespaces of the
tests' own, with an nftables `redirect` as the gateway's."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from mitmproxy.platform import original_addr

from schoolgate.lab import netns
from schoolgate.proxy._accept import accept_batch
from schoolgate.proxy.front import DEFER_ACCEPT_S, MAX_HELLO

HELLO = b"\x16\x03\x01\x00\x05hello"


def has_ipv6_loopback() -> bool:
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6):
            return True
    except OSError:
        return False


def listener(host: str = "127.0.0.1", *, defer: bool = True, dualstack: bool = False) -> socket.socket:
    """A non-blocking listening socket as the front door's `listen_sockets` makes it (with
    TCP_DEFER_ACCEPT, unless `defer` is false: then a connection is handed over at once)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, 0), family=family, backlog=64, dualstack_ipv6=dualstack)
    if defer:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_ACCEPT_S)
    sock.setblocking(False)
    return sock  # its own context manager


def wait_acceptable(sock: socket.socket) -> None:
    """Block until a connection waits (loopback delivers at once; the bound is the kernel's)."""
    readable, _, _ = select.select([sock], [], [], 30)
    assert readable, "no connection arrived"


Accepted = list[tuple[int, Any, Any, bytes | None]]


def accept_all(
    sock: socket.socket, expected: int, *, read_max: int = MAX_HELLO, want_destination: bool = False
) -> Accepted:
    """Connections until `expected` have come (the caller closes them: `closing`)."""
    got: Accepted = []
    while len(got) < expected:
        wait_acceptable(sock)
        connections, stopped_by, skipped = accept_batch(sock.fileno(), 64, read_max, want_destination)
        assert (stopped_by, skipped) == (0, 0)
        got += connections
    return got


@contextlib.contextmanager
def closing(accepted: Accepted) -> Iterator[None]:
    try:
        yield
    finally:
        for fd, *_ in accepted:
            os.close(fd)


def send_hello(client: socket.socket) -> None:
    client.sendall(HELLO)


def send_nothing(client: socket.socket) -> None:
    pass


def send_then_close(client: socket.socket) -> None:
    client.sendall(b"bye")
    client.shutdown(socket.SHUT_WR)


def close_unsent(client: socket.socket) -> None:
    client.shutdown(socket.SHUT_WR)


def reset_unsent(client: socket.socket) -> None:
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, (1).to_bytes(4, "little") + (0).to_bytes(4, "little"))
    client.close()  # linger 0: a reset, not a FIN


@pytest.mark.parametrize(
    ("client_does", "defer", "first_bytes"),
    [
        pytest.param(send_hello, True, HELLO, id="hello sent: in with the connection"),
        pytest.param(send_then_close, True, b"bye", id="sent, then closed: the bytes first"),
        pytest.param(send_nothing, False, None, id="nothing sent yet: None"),
        pytest.param(close_unsent, False, b"", id="closed without a byte: b''"),
        pytest.param(reset_unsent, False, b"", id="reset without a byte: b'' (as a close)"),
    ],
)
def test_first_bytes_say_what_the_client_has_done(
    client_does: Callable[[socket.socket], None], defer: bool, first_bytes: bytes | None
) -> None:
    with listener(defer=defer) as server, socket.create_connection(server.getsockname()) as client:
        peer = client.getsockname()
        client_does(client)
        accepted = accept_all(server, 1)
        with closing(accepted):
            ((_, got_peer, destination, data),) = accepted
            assert (got_peer, destination, data) == (peer, None, first_bytes)


def test_several_waiting_connections_come_in_one_call_each_with_its_peer_and_bytes() -> None:
    with listener() as server:
        clients = [socket.create_connection(server.getsockname()) for _ in range(5)]
        with contextlib.ExitStack() as stack:
            for n, client in enumerate(clients):
                stack.enter_context(client)
                client.sendall(HELLO + b"%d" % n)
            accepted = accept_all(server, 5)
            with closing(accepted):
                assert [(peer, data) for _, peer, _, data in accepted] == [
                    (client.getsockname(), HELLO + b"%d" % n) for n, client in enumerate(clients)
                ]
                assert len({fd for fd, *_ in accepted}) == 5


def test_the_accepted_socket_blocks_is_close_on_exec_and_keeps_what_was_not_read() -> None:
    with listener() as server, socket.create_connection(server.getsockname()) as client:
        client.sendall(b"0123456789" * 3)
        accepted = accept_all(server, 1, read_max=10)
        with closing(accepted):
            ((fd, _, _, data),) = accepted
            assert data == b"0123456789"
            assert os.get_blocking(fd) and not os.get_inheritable(fd)
            assert os.read(fd, 100) == b"0123456789" * 2
            os.write(fd, b"answer")
            assert client.recv(100) == b"answer"


def test_read_max_zero_reads_nothing() -> None:
    with listener() as server, socket.create_connection(server.getsockname()) as client:
        client.sendall(HELLO)
        accepted = accept_all(server, 1, read_max=0)
        with closing(accepted):
            ((fd, _, _, data),) = accepted
            assert data is None
            assert os.read(fd, 100) == HELLO


def test_at_most_limit_connections_per_call_the_rest_wait() -> None:
    with listener() as server, contextlib.ExitStack() as stack:
        for _ in range(5):
            stack.enter_context(socket.create_connection(server.getsockname())).sendall(HELLO)
        wait_acceptable(server)
        first, stopped_by, skipped = accept_batch(server.fileno(), 2, MAX_HELLO, False)
        with closing(first):
            assert (len(first), stopped_by, skipped) == (2, 0, 0)  # all five wait once the last sendall returned
            rest = accept_all(server, 3)
            with closing(rest):
                assert len(rest) == 3


def test_nothing_waiting_is_an_empty_list_and_no_error() -> None:
    with listener() as server:
        assert accept_batch(server.fileno(), 64, MAX_HELLO, True) == ([], 0, 0)


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
@pytest.mark.parametrize(
    ("listen_on", "dualstack", "connect_to"),
    [
        pytest.param("::1", False, "::1", id="IPv6"),
        pytest.param("::", True, "127.0.0.1", id="IPv4 on a dual-stack socket: ::ffff:127.0.0.1"),
    ],
)
def test_ipv6_peers_are_what_socket_accept_gives(listen_on: str, dualstack: bool, connect_to: str) -> None:
    with listener(listen_on, dualstack=dualstack) as server:
        port = server.getsockname()[1]
        with (
            socket.create_connection((connect_to, port)) as first,
            socket.create_connection((connect_to, port)) as second,
        ):
            first.sendall(HELLO)
            wait_acceptable(server)
            reference, reference_peer = server.accept()  # the first, by Python's socket module
            reference.close()
            second.sendall(HELLO)
            accepted = accept_all(server, 1)
            with closing(accepted):
                ((_, peer, _, _),) = accepted
                assert len(peer) == len(reference_peer) == 4
                assert peer[0] == reference_peer[0] == ("::1" if connect_to == "::1" else "::ffff:127.0.0.1")
                assert peer[2:] == reference_peer[2:] == (0, 0)
                assert peer[1] == second.getsockname()[1] != reference_peer[1]


@pytest.mark.parametrize(
    ("listen_fd", "limit", "read_max", "error", "match"),
    [
        pytest.param(-1, 8, 0, ValueError, "descriptor", id="not a descriptor"),
        pytest.param(None, 0, 0, ValueError, "limit", id="limit 0"),
        pytest.param(None, 65, 0, ValueError, "limit", id="limit 65"),
        pytest.param(None, 8, -1, ValueError, "read_max", id="read_max -1"),
        pytest.param(None, 8, MAX_HELLO + 1, ValueError, "read_max", id="read_max over 64 KiB"),
        pytest.param("3", 8, 0, TypeError, "", id="text, not a descriptor"),
    ],
)
def test_arguments_out_of_range_are_refused_before_anything_is_accepted(
    listen_fd: Any, limit: int, read_max: int, error: type[Exception], match: str
) -> None:
    with listener() as server, socket.create_connection(server.getsockname()) as client:
        client.sendall(HELLO)
        wait_acceptable(server)
        with pytest.raises(error, match=match):
            accept_batch(server.fileno() if listen_fd is None else listen_fd, limit, read_max, False)
        accepted = accept_all(server, 1)  # still waiting: nothing was taken
        with closing(accepted):
            assert accepted[0][3] == HELLO


def test_a_socket_that_cannot_accept_stops_the_batch_with_its_errno() -> None:
    closed = socket.socket()
    closed_fd = closed.fileno()
    closed.close()
    assert accept_batch(closed_fd, 8, MAX_HELLO, True) == ([], errno.EBADF, 0)
    with socket.socket() as not_listening:
        assert accept_batch(not_listening.fileno(), 8, MAX_HELLO, True) == ([], errno.EINVAL, 0)


OUT_OF_DESCRIPTORS = textwrap.dedent(
    """
    import json, os, resource, select, socket
    from schoolgate.proxy._accept import accept_batch

    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    client = socket.create_connection(server.getsockname())
    client.sendall(b"hello")
    select.select([server], [], [], 30)
    open_before = sorted(os.listdir("/proc/self/fd"))
    lowest_free = os.dup(0)
    os.close(lowest_free)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no descriptor left
    try:
        starved = accept_batch(server.fileno(), 64, 65536, False)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    open_after = sorted(os.listdir("/proc/self/fd"))
    connections, stopped_by, skipped = accept_batch(server.fileno(), 64, 65536, False)
    print(json.dumps({"starved": [starved[0], starved[1], starved[2]], "leaked": open_after != open_before,
                      "then": [[data.decode() for _, _, _, data in connections], stopped_by, skipped]}))
    """
)


def test_out_of_descriptors_returns_emfile_leaks_nothing_and_the_connection_waits() -> None:
    done = subprocess.run(
        [sys.executable, "-c", OUT_OF_DESCRIPTORS], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(done.stdout) == {
        "starved": [[], errno.EMFILE, 0],
        "leaked": False,
        "then": [["hello"], 0, 0],
    }


# ---------------------------------------------------------------- in namespaces of the tests' own


@pytest.fixture
def namespace() -> Iterator[str]:
    """An empty network namespace (loopback up, no firewall: no connection tracking), removed after."""
    name = f"sgt-accept{os.getpid()}"
    netns.delete(name)
    netns.add(name)
    try:
        yield name
    finally:
        netns.delete(name)


def redirect(namespace: str, rules: dict[int, int]) -> None:
    """As the gateway's ruleset does for the LAN, here for this namespace's own connections:
    TCP to each port in `rules` redirected to the port it maps to."""
    lines = "\n".join(f"    tcp dport {port} redirect to :{to}" for port, to in rules.items())
    ruleset = f"table inet sgtest {{\n  chain out {{\n    type nat hook output priority -100\n{lines}\n  }}\n}}\n"
    subprocess.run(["ip", "netns", "exec", namespace, "nft", "-f", "-"], input=ruleset, text=True, check=True,
                   capture_output=True, timeout=30)


def in_namespace(namespace: str, make: Callable[[], Any]) -> Any:
    return netns.call_in(namespace, make)  # sockets keep the namespace they were made in


@pytest.mark.root
def test_a_connection_that_was_not_redirected_has_no_destination_and_is_not_read(namespace: str) -> None:
    server = in_namespace(namespace, listener)
    try:
        client = in_namespace(namespace, lambda: socket.create_connection(server.getsockname()))
        with client:
            client.sendall(HELLO)
            accepted = accept_all(server, 1, want_destination=True)
            with closing(accepted):
                ((fd, peer, destination, data),) = accepted
                assert (peer, destination, data) == (client.getsockname(), None, None)
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, os.dup(fd)) as sock, pytest.raises(OSError):
                    original_addr(sock)  # mitmproxy's reading agrees: there is none
                assert os.read(fd, 100) == HELLO  # left for the caller, which drops it
    finally:
        server.close()


@pytest.mark.root
def test_redirected_connections_carry_their_original_destination(namespace: str) -> None:
    """An IPv4 listener, and a dual-stack one taking IPv4 and IPv6: the destination each
    connection was going to, as the front door and mitmproxy read it."""
    ipv4, dualstack = in_namespace(
        namespace, lambda: (listener(), listener("::", dualstack=True))
    )
    try:
        redirect(namespace, {9441: ipv4.getsockname()[1], 9443: dualstack.getsockname()[1]})

        def connect() -> list[socket.socket]:
            return [
                socket.create_connection(("127.0.0.1", 9441)),
                socket.create_connection(("127.0.0.1", 9443)),
                socket.create_connection(("::1", 9443)),
            ]

        clients = in_namespace(namespace, connect)
        with contextlib.ExitStack() as stack:
            for client in clients:
                stack.enter_context(client).sendall(HELLO)
            on_ipv4 = accept_all(ipv4, 1, want_destination=True)
            on_dualstack = accept_all(dualstack, 2, want_destination=True)
            with closing(on_ipv4), closing(on_dualstack):
                assert [(destination, data) for _, _, destination, data in on_ipv4 + on_dualstack] == [
                    (("127.0.0.1", 9441), HELLO),
                    (("127.0.0.1", 9443), HELLO),
                    (("::1", 9443), HELLO),
                ]
                ((fd, _, destination, _),) = on_ipv4
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, os.dup(fd)) as sock:
                    assert original_addr(sock) == destination
                for fd, _, destination, _ in on_dualstack:
                    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM, 0, os.dup(fd)) as sock:
                        assert original_addr(sock) == destination
    finally:
        ipv4.close()
        dualstack.close()


@pytest.mark.root
def test_without_original_destination_a_redirected_connection_is_read_and_not_asked(namespace: str) -> None:
    server = in_namespace(namespace, listener)
    try:
        redirect(namespace, {9441: server.getsockname()[1]})
        client = in_namespace(namespace, lambda: socket.create_connection(("127.0.0.1", 9441)))
        with client:
            client.sendall(HELLO)
            accepted = accept_all(server, 1, want_destination=False)
            with closing(accepted):
                assert [(destination, data) for _, _, destination, data in accepted] == [(None, HELLO)]
    finally:
        server.close()
