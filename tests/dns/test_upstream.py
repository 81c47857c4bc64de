"""The upstream pool against the local authority: answers, TCP on truncation, failover, health."""

from __future__ import annotations

import asyncio
import socket
import time

import dns.message
import dns.name
import pytest
from authority import Authority

from schoolgate.dns.upstream import (
    SourcePorts,
    UpstreamFailure,
    UpstreamPool,
    local_port_range,
    parse_address,
    question_wire,
    reserved_ports,
    same_question,
)
from schoolgate.dns.wire import QFIXED, encode_name


def question(name: str, qtype: int = 1) -> bytes:
    return question_wire(encode_name(name), qtype, 1)


def run(coro):
    return asyncio.run(coro)


@pytest.fixture()
def auth():
    server = Authority().start()
    yield server
    server.close()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1", ("192.0.2.1", 53)),
        ("192.0.2.1:5353", ("192.0.2.1", 5353)),
        ("[::1]:53", ("::1", 53)),
        ("::1", ("::1", 53)),
    ],
)
def test_parse_address(text, expected) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["example.org", "1.2.3.4:0", "1.2.3.4:70000", "[::1]:x"])
def test_parse_address_rejects(text) -> None:
    with pytest.raises((ValueError, OSError)):
        parse_address(text)


def test_answer_and_tcp_on_truncation(auth: Authority) -> None:
    async def go():
        pool = UpstreamPool([auth.address], timeout_s=1)
        await pool.start()
        try:
            plain = await pool.resolve(question("www.example.test"), 0x0100, False)
            big = await pool.resolve(question("big.example.test", 16), 0x0100, False)
            return plain, big, pool.health()
        finally:
            pool.close()

    plain, big, health = run(go())
    assert dns.message.from_wire(plain).answer[0][0].address == "192.0.2.10"
    assert len(dns.message.from_wire(big).answer[0][0].strings) == 8
    assert auth.tcp_queries == 1
    assert health[0]["successes"] == 2 and health[0]["tcp_queries"] == 1 and health[0]["last_rtt_ms"] > 0


def test_failover_health_and_backoff(auth: Authority) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))

    async def go():
        pool = UpstreamPool([f"127.0.0.1:{silent.getsockname()[1]}", auth.address], timeout_s=0.2, down_after=2)
        await pool.start()
        try:
            for name in ("www.example.test", "video.test"):
                await pool.resolve(question(name), 0x0100, False)
            started = time.monotonic()
            await pool.resolve(question("games.test"), 0x0100, False)
            fast = time.monotonic() - started
            return pool.health(), fast
        finally:
            pool.close()

    try:
        health, fast = run(go())
    finally:
        silent.close()
    assert health[0]["timeouts"] == 2 and health[0]["down"] and health[0]["retry_in_s"] > 0
    assert health[1]["successes"] == 3 and not health[1]["down"]
    assert fast < 0.15  # the silent upstream is skipped while it is down


def test_a_lone_upstream_back_from_a_glitch_is_used_at_once_not_after_its_rest(auth: Authority) -> None:
    """A school with one upstream must not stay cut off for the back-off after a short glitch."""

    async def go():
        pool = UpstreamPool([auth.address], timeout_s=0.2, down_after=2, max_backoff_s=3600)
        await pool.start()
        try:
            auth.down = True
            for name in ("www.example.test", "video.test"):
                with pytest.raises(UpstreamFailure):
                    await pool.resolve(question(name), 0x0100, False)
            resting = pool.health()[0]
            auth.down = False
            answer = await pool.resolve(question("www.example.test"), 0x0100, False)
            return resting, answer, pool.health()[0]
        finally:
            pool.close()

    resting, answer, after = run(go())
    assert resting["down"] and resting["retry_in_s"] > 0
    assert dns.message.from_wire(answer).answer[0][0].address == "192.0.2.10"
    assert not after["down"] and after["successes"] == 1


def test_nobody_answers_within_the_budget() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))

    async def go():
        pool = UpstreamPool([f"127.0.0.1:{silent.getsockname()[1]}"], timeout_s=0.3)
        await pool.start()
        try:
            started = time.monotonic()
            with pytest.raises(UpstreamFailure):
                await pool.resolve(question("www.example.test"), 0x0100, False)
            return time.monotonic() - started
        finally:
            pool.close()

    try:
        assert run(go()) < 0.7
    finally:
        silent.close()


def test_an_answer_to_another_question_is_ignored() -> None:
    """A spoofed answer with the right ID but another question must not be taken."""
    fake = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fake.bind(("127.0.0.1", 0))

    async def go():
        pool = UpstreamPool([f"127.0.0.1:{fake.getsockname()[1]}"], timeout_s=0.5)
        await pool.start()
        loop = asyncio.get_running_loop()

        def spoof() -> None:
            data, addr = fake.recvfrom(512)
            wrong = dns.message.make_response(dns.message.from_wire(data))
            wrong.question[0].name = dns.name.from_text("evil.example.test")
            fake.sendto(wrong.to_wire(), addr)
            right = dns.message.make_response(dns.message.from_wire(data))
            fake.sendto(right.to_wire(), addr)

        try:
            task = loop.run_in_executor(None, spoof)
            answer = await pool.resolve(question("www.example.test"), 0x0100, False)
            await task
            return answer
        finally:
            pool.close()

    try:
        answer = run(go())
    finally:
        fake.close()
    assert str(dns.message.from_wire(answer).question[0].name) == "www.example.test."


def test_same_question_compares_names_without_case_but_types_exactly() -> None:
    q = encode_name("ech.example.test") + QFIXED.pack(65, 1)  # type 65 is the byte "A"
    header = bytes(12)
    assert same_question(header + encode_name("ECH.example.TEST") + QFIXED.pack(65, 1), q)
    assert not same_question(header + encode_name("ech.example.test") + QFIXED.pack(97, 1), q)


def test_an_ipv6_upstream() -> None:
    server = Authority(host="::1").start()

    async def go():
        pool = UpstreamPool([server.address], timeout_s=1)
        await pool.start()
        try:
            return await pool.resolve(question("www.example.test", 28), 0x0100, False)
        finally:
            pool.close()

    try:
        answer = run(go())
    finally:
        server.close()
    assert dns.message.from_wire(answer).answer[0][0].address == "2001:db8::10"


def test_each_query_leaves_from_a_random_port_of_its_own() -> None:
    """RFC 5452: a spoofer must guess the source port as well as the ID, for every query."""
    from hostile import HostileUpstream

    server = HostileUpstream(seed=1).start()
    server.honest = True

    async def go():
        pool = UpstreamPool([server.address], timeout_s=1)
        await pool.start()
        try:
            for n in range(40):
                await pool.resolve(question(f"n{n}.example.test"), 0x0100, False)
        finally:
            pool.close()

    try:
        run(go())
    finally:
        server.close()
    low, high = local_port_range()
    assert len(server.source_ports) == 40
    assert len(set(server.source_ports)) >= 38  # 40 draws from ~28,000 ports rarely repeat
    assert all(low <= port <= high for port in server.source_ports)


def test_source_ports_skip_reserved_and_busy_ports() -> None:
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("0.0.0.0", 0))
    taken = busy.getsockname()[1]
    draws = iter([5, taken - 40000, taken - 40000, 7])  # reserved, busy, busy, free

    ports = SourcePorts(40000, 65535, reserved=frozenset({40005}), randbelow=lambda _n: next(draws))
    try:
        sock = ports.open("127.0.0.1", 53)
    finally:
        busy.close()
    try:
        assert sock.getsockname()[1] == 40007
        assert sock.getpeername() == ("127.0.0.1", 53)
        assert ports.collisions == 2
    finally:
        sock.close()


def test_source_ports_fall_back_to_the_kernel_after_repeated_collisions() -> None:
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("0.0.0.0", 0))
    taken = busy.getsockname()[1]
    ports = SourcePorts(taken, taken, reserved=frozenset())
    try:
        sock = ports.open("127.0.0.1", 53)
        assert sock.getsockname()[1] != taken
        assert (ports.collisions, ports.kernel_chosen) == (SourcePorts.ATTEMPTS, 1)
        sock.close()
    finally:
        busy.close()


@pytest.mark.parametrize(
    ("text", "ports"),
    [("", frozenset()), ("8080", frozenset({8080})), ("8080,9000-9002", frozenset({8080, 9000, 9001, 9002}))],
)
def test_reserved_ports_are_read_like_the_kernel_writes_them(tmp_path, text: str, ports: frozenset[int]) -> None:
    path = tmp_path / "reserved"
    path.write_text(text + "\n")
    assert reserved_ports(str(path)) == ports


def test_the_outgoing_range_falls_back_to_linux_defaults(tmp_path) -> None:
    path = tmp_path / "range"
    path.write_text("1024\t5000\n")
    assert local_port_range(str(path)) == (1024, 5000)
    path.write_text("nonsense\n")
    assert local_port_range(str(path)) == (32768, 60999)
    assert local_port_range(str(tmp_path / "missing")) == (32768, 60999)
