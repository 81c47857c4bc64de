"""RADIUS accounting: real packets from pyrad's own client, checked, recorded and answered."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.identity import IdentityResolver, RegisterReloader
from schoolgate.identity.radius import BadPacket, RadiusClient, calling_station_mac, decode, dictionary
from schoolgate.identity.radiusserver import AccountingServer
from schoolgate.store.models import Person, RadiusSession
from schoolgate.store.overlay import bump_generation

SITE = "testschool"
SECRET = b"controller-secret-1"
NOW = datetime(2026, 11, 23, 10, 15, tzinfo=UTC)
CLIENTS = [RadiusClient(ipaddress.ip_network("127.0.0.0/8"), SECRET)]
PHONE_MAC, PHONE_IP = "02:42:00:00:00:21", "10.42.0.21"


def accounting(status: str, *, secret: bytes = SECRET, session_id: str = "sess-1", code: int = 4,
               **extra: Any) -> bytes:
    from pyrad.packet import AcctPacket

    attributes: dict[str, Any] = {
        "Acct-Status-Type": status,
        "Acct-Session-Id": session_id,
        "User-Name": "Cara.Teacher@kingswood.example",
        "Calling-Station-Id": "02-42-00-00-00-21",
        "Framed-IP-Address": PHONE_IP,
        "NAS-Identifier": "wlc-1",
    }
    attributes.update({k.replace("_", "-"): v for k, v in extra.items()})
    packet = AcctPacket(code=code, secret=secret, dict=dictionary())
    for name, value in attributes.items():
        if value is not None:
            packet[name] = value
    return bytes(packet.RequestPacket())


def test_a_start_is_read() -> None:
    _packet, record = decode(accounting("Start", Acct_Delay_Time=5), "127.0.0.1", CLIENTS, NOW)
    assert (record.status, record.nas, record.session_id, record.username, record.mac, record.ip) == (
        "start", "wlc-1", "sess-1", "Cara.Teacher@kingswood.example", PHONE_MAC, PHONE_IP)
    assert record.at == NOW - timedelta(seconds=5)


@pytest.mark.parametrize(
    ("data", "sender", "kind"),
    [
        (accounting("Start", secret=b"someone-elses-secret"), "127.0.0.1", "bad_authenticator"),
        (accounting("Start"), "192.0.2.9", "unknown_client"),
        (accounting("Start")[:-3], "127.0.0.1", "malformed"),  # the Length field says more than came
        (b"\x04\x01\x00\x10" + b"\0" * 12, "127.0.0.1", "malformed"),  # shorter than a header
        (b"\x04\x01\x00\x18" + b"\0" * 16 + b"\x01\x01\x00\x00", "127.0.0.1", "malformed"),  # attribute length 1
        (accounting("Start", code=1), "127.0.0.1", "not_accounting"),  # an Access-Request
        (accounting("Start", Acct_Session_Id=None, session_id=""), "127.0.0.1", "incomplete"),
    ],
)
def test_bad_packets_are_refused_with_the_reason(data: bytes, sender: str, kind: str) -> None:
    with pytest.raises(BadPacket) as caught:
        decode(data, sender, CLIENTS, NOW)
    assert caught.value.kind == kind


@pytest.mark.parametrize(
    ("value", "mac"),
    [("02-42-00-00-00-21", PHONE_MAC), ("0242.0000.0021", PHONE_MAC), ("024200000021", PHONE_MAC),
     ("02:42:00:00:00:21:School WiFi", PHONE_MAC), ("host/phone", None), ("02-42-00-00-00", None)],
)
def test_calling_station_id_forms(value: str, mac: str | None) -> None:
    assert calling_station_mac(value) == mac


@pytest.fixture
def server(sessions: sessionmaker[Session]) -> Iterator[tuple[AccountingServer, int]]:
    """The accounting server on a loopback port, in an event loop of its own thread."""
    loop = asyncio.new_event_loop()
    accounting_server = AccountingServer(CLIENTS, sessions, SITE, lambda: NOW)
    ready = threading.Event()
    port: list[int] = []

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def start() -> None:
            transport, _ = await loop.create_datagram_endpoint(lambda: accounting_server, local_addr=("127.0.0.1", 0))
            port.append(transport.get_extra_info("sockname")[1])
            ready.set()

        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield accounting_server, port[0]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def send(port: int, data: bytes, timeout: float = 3.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(data, ("127.0.0.1", port))
        try:
            return sock.recv(4096)
        except TimeoutError:
            return None


def test_pyrads_client_gets_its_accounting_response(server: tuple[AccountingServer, int],
                                                    sessions: sessionmaker[Session]) -> None:
    from pyrad.client import Client

    _server, port = server
    client = Client(server="127.0.0.1", acctport=port, secret=SECRET, dict=dictionary())
    client.timeout, client.retries = 3, 1
    request = client.CreateAcctPacket(User_Name="Cara.Teacher@kingswood.example")
    request["Acct-Status-Type"] = "Start"
    request["Acct-Session-Id"] = "sess-9"
    request["Calling-Station-Id"] = "02-42-00-00-00-21"
    request["Framed-IP-Address"] = PHONE_IP
    answer = client.SendPacket(request)  # pyrad checks the Response Authenticator itself
    assert answer.code == 5  # Accounting-Response
    with sessions() as session:
        (row,) = session.scalars(select(RadiusSession))
        assert (row.session_id, row.username, row.mac, row.ip, row.stopped_at) == (
            "sess-9", "Cara.Teacher@kingswood.example", PHONE_MAC, PHONE_IP, None)


def test_start_and_stop_name_the_person_then_no_longer(server: tuple[AccountingServer, int],
                                                        sessions: sessionmaker[Session]) -> None:
    accounting_server, port = server
    with sessions.begin() as session:
        session.add(Person(site=SITE, external_id="s-001", name="Cara Teacher", role="staff",
                           email="cara.teacher@kingswood.example"))
        bump_generation(session, SITE)
    resolver = IdentityResolver(now=lambda: NOW, ttl=0, unknown_ttl=0)
    reloader = RegisterReloader(sessions, SITE, resolver)
    reloader.poll()
    assert resolver.resolve(PHONE_IP).person_id is None

    start = accounting("Start")
    answer = send(port, start)
    assert answer is not None and answer[0] == 5 and answer[1] == start[1]  # an Accounting-Response to it
    assert reloader.poll()
    client = resolver.resolve(PHONE_IP)
    assert (client.person_id, client.person_name, client.role.value if client.role else None, client.mac,
            client.identity_source) == ("s-001", "Cara Teacher", "staff", PHONE_MAC, "radius")

    assert send(port, accounting("Interim-Update")) is not None  # refreshes, no reload needed
    assert send(port, accounting("Stop", Acct_Terminate_Cause="User-Request")) is not None
    assert reloader.poll()
    assert resolver.resolve(PHONE_IP).person_id is None
    assert accounting_server.stats()["recorded"] == 3 and accounting_server.stats()["answered"] == 3


def test_bad_packets_are_counted_dropped_and_lose_nothing(server: tuple[AccountingServer, int],
                                                          sessions: sessionmaker[Session]) -> None:
    accounting_server, port = server
    assert send(port, accounting("Start", secret=b"wrong-secret-here"), timeout=0.5) is None
    assert send(port, b"\x00" * 7, timeout=0.5) is None
    assert send(port, accounting("Start", session_id="good")) is not None  # the next good one is fine
    stats = accounting_server.stats()
    assert stats["dropped"] == {"bad_authenticator": 1, "malformed": 1} and stats["recorded"] == 1
    with sessions() as session:
        assert [r.session_id for r in session.scalars(select(RadiusSession))] == ["good"]


def test_a_retransmission_records_nothing_twice_and_is_answered_again(
    server: tuple[AccountingServer, int], sessions: sessionmaker[Session]
) -> None:
    _server, port = server
    packet = accounting("Start")
    first, again = send(port, packet), send(port, packet)
    assert first is not None and first == again
    with sessions() as session:
        assert len(list(session.scalars(select(RadiusSession)))) == 1


def test_accounting_on_ends_every_session_of_that_controller(server: tuple[AccountingServer, int],
                                                             sessions: sessionmaker[Session]) -> None:
    _server, port = server
    for session_id in ("a", "b"):
        assert send(port, accounting("Start", session_id=session_id)) is not None
    reboot = accounting("Accounting-On", session_id="", User_Name=None, Calling_Station_Id=None,
                        Framed_IP_Address=None)
    assert send(port, reboot) is not None
    with sessions() as session:
        rows = list(session.scalars(select(RadiusSession)))
    assert len(rows) == 2 and all(r.stopped_at == NOW and r.stop_cause == "NAS-Reboot" for r in rows)


def test_the_response_authenticator_is_rfc_2866s() -> None:
    """Checked independently of pyrad: MD5(Code+ID+Length+RequestAuth+Attributes+Secret)."""
    import hashlib

    from schoolgate.identity.radius import reply

    request = accounting("Start")
    packet, _record = decode(request, "127.0.0.1", CLIENTS, NOW)
    response = reply(packet)
    code, ident, length = struct.unpack("!BBH", response[:4])
    assert (code, ident, length) == (5, request[1], len(response))
    expected = hashlib.md5(response[:4] + request[4:20] + response[20:] + SECRET).digest()
    assert response[4:20] == expected
