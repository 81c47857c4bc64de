"""The DNS probe against a real UDP server on loopback: a lost datagram is asked again, as a
device's stub resolver would, and a silent server is reported as silent."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import dns.message
import dns.rrset

from schoolgate.selftest.probes import ask_dns


@contextmanager
def udp_server(drop_first: int) -> Iterator[tuple[int, list[int]]]:
    """A resolver on 127.0.0.1 that ignores the first `drop_first` questions, then answers
    192.0.2.1; yields (port, the ids of every question received)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    seen: list[int] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(data)
            seen.append(query.id)
            if len(seen) <= drop_first:
                continue
            reply = dns.message.make_response(query)
            reply.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A", "192.0.2.1"))
            sock.sendto(reply.to_wire(), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1], seen
    finally:
        stop.set()
        thread.join()
        sock.close()


def test_a_lost_question_is_asked_again_and_answered() -> None:
    with udp_server(drop_first=1) as (port, seen):
        answer = ask_dns("127.0.0.1", port, "canary.example", timeout=0.3)
    assert answer.answered and answer.addresses == ("192.0.2.1",)
    assert len(seen) == 2


def test_a_silent_server_is_no_answer_after_every_attempt() -> None:
    with udp_server(drop_first=99) as (port, seen):
        answer = ask_dns("127.0.0.1", port, "canary.example", timeout=0.2, attempts=2)
    assert not answer.answered and "timed out 2 times" in answer.error
    assert len(seen) == 2
    assert answer.elapsed_ms >= 400  # both attempts waited their full timeout

