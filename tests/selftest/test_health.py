"""The appliance's health as the self-test words it: lists, daemons' heartbeats, the clock."""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dns.message
import dns.rcode
import pytest
from sqlalchemy import Engine

from schoolgate.clock import FileClock, SystemClock, set_clock_file
from schoolgate.config import AppConfig, DnsConfig, SelftestConfig, SiteConfig
from schoolgate.doctor import Status
from schoolgate.selftest import health
from schoolgate.store.db import session_factory
from schoolgate.store.models import DaemonStatus

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 23, 7, 45, tzinfo=UTC)


def config(tmp_path: Path, **selftest: object) -> AppConfig:
    return AppConfig(source=tmp_path / "schoolgate.toml", policy=REPO / "deploy" / "policy.example.toml",
                     data_dir=tmp_path, site=SiteConfig(id="kingswood"),
                     selftest=SelftestConfig(**selftest))  # type: ignore[arg-type]


def by_id(results: list) -> dict[str, object]:
    return {r.subject: r for r in results}


def test_lists_as_lists_status_reports_them(tmp_path: Path) -> None:
    from schoolgate.lists.state import ListState, state_dir_of

    settings = config(tmp_path)
    results = by_id(health.lists(settings, NOW))
    assert results["curriculum"].status is Status.OK
    ut1 = results["ut1"]  # subscribed, never fetched: its rules hold, none of its names do
    assert ut1.status is Status.FAIL and "none of its names are blocked" in ut1.message and not ut1.filtering
    assert "lists update" in ut1.fix
    state = ListState(state_dir_of(settings))
    for days, status in ((1, Status.OK), (4, Status.FAIL)):
        at = (NOW - timedelta(days=days)).isoformat()
        state.write_manifest({"lists": {"ut1": {"version": "ut1-1.sgl", "installed_at": at, "verified_at": at,
                                                "entries": {"gambling": 40}}}})
        ut1 = by_id(health.lists(settings, NOW))["ut1"]
        assert ut1.status is status, ut1.message
    assert "STALE" in ut1.message and "confirmed current 4.0 days ago" in ut1.message


def test_heartbeats_name_the_daemon_that_stopped(tmp_path: Path, engine: Engine) -> None:
    wall = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    sessions = session_factory(engine)
    with sessions() as session:
        for name, age in (("dns.1", 5), ("dns.2", 400), ("proxy", 10), ("scheduler", 20)):
            session.add(DaemonStatus(site="kingswood", name=name, pid=100, started_at=wall,
                                     heartbeat_at=wall - timedelta(seconds=age), stats="{}"))
        session.commit()
    with sessions() as session:
        results = health.heartbeats(session, config(tmp_path), wall)
    state = {r.subject: r.status for r in results}
    assert state == {"dns.1": Status.OK, "dns.2": Status.FAIL, "proxy": Status.OK, "gateway": Status.FAIL,
                     "scheduler": Status.OK}
    never = next(r for r in results if r.subject == "gateway")
    assert "never reported" in never.message and "schoolgate-netwatch" in never.fix


def test_a_daemon_that_reports_itself_failing_fails_however_fresh_its_heartbeat(tmp_path: Path,
                                                                                 engine: Engine) -> None:
    """net watch in the event-writing process keeps its row fresh while it retries a refused
    NFLOG bind, saying why: the self-test names the failure, not a healthy heartbeat."""
    wall = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    sessions = session_factory(engine)
    with sessions() as session:
        session.add(DaemonStatus(site="kingswood", name="gateway", pid=100, started_at=wall,
                                 heartbeat_at=wall - timedelta(seconds=3),
                                 stats=json.dumps({"error": "PermissionError: [Errno 1] NFLOG group 7: Operation "
                                                   "not permitted", "failures_in_a_row": 3, "retry_in_s": 5.0})))
        session.commit()
    with sessions() as session:
        gateway = by_id(health.heartbeats(session, config(tmp_path), wall))["gateway"]
    assert gateway.status is Status.FAIL  # type: ignore[attr-defined]
    assert "not working: PermissionError" in gateway.message and "trying again in 5.0 s" in gateway.message  # type: ignore[attr-defined]
    assert "schoolgate-netwatch" in gateway.fix  # type: ignore[attr-defined]


def test_the_daemons_still_on_an_older_register_are_named_and_a_stopped_one_is_left_to_its_heartbeat(
    tmp_path: Path, engine: Engine
) -> None:
    """The self-test waits on these reports after registering its probe addresses."""
    wall = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    sessions = session_factory(engine)
    rows = (
        ("dns.1", 2, {"dns": {"register_generation": 7}}),  # has it
        ("dns.2", 1, {"dns": {"register_generation": 6}}),  # not yet
        ("proxy", 3, {"register_generation": 6}),  # not yet
        ("dns.3", 400, {"dns": {"register_generation": 1}}),  # stopped: the heartbeat check's
        ("scheduler", 1, {}),  # keeps no register
    )
    with sessions() as session:
        for name, age, stats in rows:
            session.add(DaemonStatus(site="kingswood", name=name, pid=100, started_at=wall,
                                     heartbeat_at=wall - timedelta(seconds=age), stats=json.dumps(stats)))
        session.commit()
    with sessions() as session:
        assert sorted(health.behind_register(session, config(tmp_path), 7, wall)) == ["dns.2", "proxy"]
        assert health.behind_register(session, config(tmp_path), 6, wall) == []


def test_the_lab_clock_is_the_time_and_the_system_clock_is_asked(tmp_path: Path) -> None:
    path = tmp_path / "clock"
    set_clock_file(path, NOW)
    (lab,) = health.clock(config(tmp_path), FileClock(path))
    assert lab.status is Status.OK and "clock file" in lab.message
    (system,) = health.clock(config(tmp_path), SystemClock())
    assert system.check == "clock" and system.status in (Status.OK, Status.FAIL, Status.WARN)


def _resolver(sock: socket.socket, stop: threading.Event) -> None:
    """Answer every question with NXDOMAIN (as a filtering resolver answers a name it refuses)."""
    while not stop.is_set():
        try:
            data, peer = sock.recvfrom(4096)
        except TimeoutError:
            continue
        reply = dns.message.make_response(dns.message.from_wire(data))
        reply.set_rcode(dns.rcode.NXDOMAIN)
        sock.sendto(reply.to_wire(), peer)


@pytest.mark.parametrize(
    ("upstream", "status", "words"),
    [
        ("answers", Status.OK, "Example ISP filtered DNS"),
        ("silent", Status.FAIL, "does not answer"),
        ("none", Status.WARN, "no resolver carrying the IWF and CTIRU lists"),
    ],
)
def test_the_illegal_content_resolver_is_asked(tmp_path: Path, upstream: str, status: Status, words: str) -> None:
    stop = threading.Event()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.05)
        serving = threading.Thread(target=_resolver, args=(sock, stop), daemon=True)
        if upstream == "answers":
            serving.start()
        address = [] if upstream == "none" else [f"127.0.0.1:{sock.getsockname()[1]}"]
        settings = replace(config(tmp_path, timeout_ms=300),
                           dns=DnsConfig(illegal_content_provider="Example ISP filtered DNS",
                                         illegal_content_upstream=address))
        try:
            results = health.illegal_content(settings, lambda probe: probe())
        finally:
            stop.set()
            if serving.is_alive():
                serving.join()
    assert {r.check for r in results} == {"illegal-content"}
    worst = max(results, key=lambda r: [Status.OK, Status.WARN, Status.FAIL].index(r.status))
    assert worst.status is status and words in worst.message, worst
    assert not any(r.filtering for r in results)  # fails closed: names stop resolving, nothing gets through
