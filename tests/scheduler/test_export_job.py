"""The SIEM export over syslog: RFC 5424 messages framed by octet counting (TCP) or one per
datagram (UDP), every blocked event and audit entry once, oldest first."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.config import AppConfig, ExportConfig
from schoolgate.scheduler import jobs
from schoolgate.store import audit
from schoolgate.store.models import AccessEvent

NOW = datetime(2026, 11, 23, 10, 15, tzinfo=UTC)
FRAME = re.compile(rb"(\d+) ")


class TcpReceiver:
    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.data = b""
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                while chunk := conn.recv(65536):
                    self.data += chunk

    def messages(self) -> list[bytes]:
        found, rest = [], self.data
        while rest:
            match = FRAME.match(rest)
            assert match, rest[:80]
            length = int(match.group(1))
            start = match.end()
            found.append(rest[start:start + length])
            rest = rest[start + length:]
        return found


@pytest.fixture
def receiver() -> Iterator[TcpReceiver]:
    made = TcpReceiver()
    yield made
    made.server.close()


def seed(factory: sessionmaker[Session]) -> None:
    with factory() as session:
        for host, verdict in (("www.facebook.com", "block"), ("www.bbc.co.uk", "allow"), ('x"\n<1>forged', "block")):
            session.add(AccessEvent(site="testschool", ts=NOW, source="dns", client_ip="127.0.0.5", role="pupil",
                                    host=host, verdict=verdict, rule_id="r", flags="", count=1))
        audit.record(session, site="testschool", actor="tech", action="site_block.add", object_type="block",
                     object_id="1", detail={"domain": "bad.example"}, at=NOW)
        session.commit()


def test_blocked_events_and_audit_entries_reach_the_siem_once(
    receiver: TcpReceiver, make_config: Callable[..., AppConfig], factory: sessionmaker[Session]
) -> None:
    config = replace(make_config(), export=ExportConfig(syslog=f"127.0.0.1:{receiver.port}", protocol="tcp"))
    seed(factory)
    outcome = jobs.export_job(config, factory, NOW)
    assert (outcome.events, outcome.audit, outcome.error) == (2, 1, None)
    again = jobs.export_job(config, factory, NOW)
    assert (again.events, again.audit) == (0, 0)
    receiver.server.close()
    receiver.thread.join(timeout=5)
    messages = receiver.messages()
    assert len(messages) == 3
    head, _, body = messages[0].partition(b" - event - ")
    assert re.fullmatch(rb"<133>1 2026-11-23T10:15:00\.000Z \S+ schoolgate", head), head
    first = json.loads(body)
    assert (first["host"], first["verdict"], first["client_ip"]) == ("www.facebook.com", "block", "127.0.0.5")
    forged = json.loads(messages[1].partition(b" - event - ")[2])
    assert forged["host"] == 'x"\n<1>forged' and b"\n" not in messages[1]  # one line, quoted
    record = json.loads(messages[2].partition(b" - audit - ")[2])
    assert (record["action"], record["detail"]) == ("site_block.add", {"domain": "bad.example"})


def test_a_receiver_that_is_down_leaves_the_cursor_for_the_next_run(
    make_config: Callable[..., AppConfig], factory: sessionmaker[Session]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = replace(make_config(), export=ExportConfig(syslog=f"127.0.0.1:{port}", protocol="tcp"))
    seed(factory)
    failed = jobs.export_job(config, factory, NOW)
    assert failed.error and failed.events == 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(5)
        config = replace(config, export=ExportConfig(syslog=f"127.0.0.1:{udp.getsockname()[1]}", protocol="udp",
                                                     audit=False))
        outcome = jobs.export_job(config, factory, NOW)
        assert outcome.events == 2
        datagrams = [udp.recv(65536) for _ in range(2)]
    assert all(d.startswith(b"<133>1 ") for d in datagrams)


def test_a_childs_safeguarding_search_reaches_the_siem_withheld(
    receiver: TcpReceiver, make_config: Callable[..., AppConfig], factory: sessionmaker[Session]
) -> None:
    """The trust's IT staff read the SIEM, not the DSL: a search on the safeguarding list leaves
    as withheld (term and URL), an ordinary one as it was searched."""
    config = replace(make_config(), export=ExportConfig(syslog=f"127.0.0.1:{receiver.port}", protocol="tcp",
                                                        events="all", audit=False))
    with factory() as session:
        for term in ("how do i kill myself", "volcano facts for year 5"):
            session.add(AccessEvent(site="testschool", ts=NOW, source="proxy", client_ip="127.0.0.5", role="pupil",
                                    host="www.google.com", url=f"https://www.google.com/search?q={term}",
                                    search_term=term, verdict="allow", rule_id="default", flags="", count=1))
        session.commit()
    assert jobs.export_job(config, factory, NOW).events == 2
    receiver.server.close()
    receiver.thread.join(timeout=5)
    concern, benign = (json.loads(m.partition(b" - event - ")[2]) for m in receiver.messages())
    assert concern["withheld"] is True and "kill" not in json.dumps(concern)
    assert concern["search_term"] == concern["url"] == "[withheld: a safeguarding concern, for the DSL]"
    assert (benign["withheld"], benign["search_term"]) == (False, "volcano facts for year 5")
