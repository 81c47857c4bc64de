"""Upstream outages, reloads and several workers, against the real daemon process."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import dns.rcode
from conftest import addresses, ask, ede, free_port, init_database, wait_for
from sqlalchemy.orm import Session

from schoolgate.store.db import make_engine
from schoolgate.store.models import PolicyExceptionRow
from schoolgate.store.overlay import bump_generation


def test_upstream_down_serves_stale_then_servfail_in_bounded_time(fresh_daemon, authority) -> None:
    d = fresh_daemon([authority.address]).start()
    assert addresses(ask(d.port, "short.example.test")) == ["192.0.2.11"]  # TTL 2 s, now cached
    authority.down = True
    try:
        # Once the 2 s are over the answer is stale: served with TTL 30 and EDE 3 (Stale Answer).
        def stale():
            reply = ask(d.port, "short.example.test", timeout=5, use_edns=0)
            return reply if ede(reply) else None

        reply = wait_for(stale, timeout=10, interval=0.5)
        assert addresses(reply) == ["192.0.2.11"]
        assert reply.answer[0].ttl == 30
        assert ede(reply)[0][0] == 3
        started = time.monotonic()
        unknown = ask(d.port, "never-asked.example.test", timeout=5)
        elapsed = time.monotonic() - started
        assert unknown.rcode() == dns.rcode.SERVFAIL
        assert elapsed < 2.0  # two upstream tries of 400 ms at most
        # Blocked names stay blocked without any upstream.
        assert addresses(ask(d.port, "www.facebook.com")) == ["10.99.0.1"]
    finally:
        authority.down = False
    # The upstream is back: fresh answers again (after the pool retries it).
    wait_for(
        lambda: (
            addresses(ask(d.port, "never-asked-2.example.test", timeout=5)) == []
            and ask(d.port, "www.example.test", timeout=5).rcode() == dns.rcode.NOERROR
        ),
        timeout=40,
        interval=0.5,
    )


def test_failover_to_the_second_upstream(fresh_daemon, authority) -> None:
    import socket

    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))  # swallows queries, never answers
    try:
        d = fresh_daemon([f"127.0.0.1:{silent.getsockname()[1]}", authority.address]).start()
        started = time.monotonic()
        assert addresses(ask(d.port, "www.example.test", timeout=5)) == ["192.0.2.10"]
        assert time.monotonic() - started < 1.5
        # After three failures the silent one is marked down and skipped: answers come fast.
        for name in ("alias.example.test", "video.test", "ech.example.test"):
            ask(d.port, name, timeout=5)
        started = time.monotonic()
        assert ask(d.port, "games.test", server="::1", timeout=5).rcode() == dns.rcode.NOERROR
        assert time.monotonic() - started < 0.3
    finally:
        silent.close()


BLOCK_EXAMPLE = """
[[rules]]
id = "pupils-no-example"
clause = "Online Safety Policy §7"
reason = "testing a reload"
action = "block"
roles = ["pupil"]
lists = []
services = ["example"]
"""


def test_policy_reload_good_then_broken(fresh_daemon, authority) -> None:
    d = fresh_daemon([authority.address]).start()
    assert addresses(ask(d.port, "www.example.test")) == ["192.0.2.10"]
    policy = d.workdir / "policy.toml"
    text = policy.read_text()
    services = '[services.example]\nname = "Example"\ndomains = ["example.test"]\n\n'
    head, rules = text.split("[[rules]]", 1)
    policy.write_text(head + services + BLOCK_EXAMPLE.strip() + "\n\n[[rules]]" + rules)
    started = time.monotonic()
    wait_for(lambda: addresses(ask(d.port, "www.example.test")) == ["10.99.0.1"], timeout=3)
    assert time.monotonic() - started < 2.0
    # The cached allow was not served after the change; staff are unaffected.
    assert addresses(ask(d.port, "www.example.test", server="::1")) == ["192.0.2.10"]
    # A broken policy keeps the last good one in force and says why.
    policy.write_text(policy.read_text() + '\n[[rules]]\nid = "broken"\naction = "explode"\n')
    wait_for(lambda: "not reloaded" in d.log_text(), timeout=3)
    assert re.search(r"policy.toml:\d+: rules\[7\]: missing required field \"clause\"", d.log_text())
    assert addresses(ask(d.port, "www.example.test")) == ["10.99.0.1"]
    assert addresses(ask(d.port, "www.facebook.com")) == ["10.99.0.1"]


def test_new_exception_in_the_database_applies_within_two_seconds(fresh_daemon, authority) -> None:
    d = fresh_daemon([authority.address]).start()
    assert addresses(ask(d.port, "www.facebook.com")) == ["10.99.0.1"]
    engine = make_engine(d.db_url)
    with Session(engine) as session, session.begin():
        session.add(
            PolicyExceptionRow(
                site="dnstest",
                scope="role",
                subject="pupil",
                domain="facebook.com",
                url_prefix=None,
                starts=datetime(2026, 11, 18, 9, 0, tzinfo=UTC),
                expires=datetime(2026, 11, 18, 10, 5, tzinfo=UTC),
                reason="project on social media safety",
                created_by="head",
            )
        )
        bump_generation(session, "dnstest")
    engine.dispose()
    started = time.monotonic()

    def allowed():
        reply = ask(d.port, "www.facebook.com")
        return reply if addresses(reply) == ["192.0.2.21"] else None

    reply = wait_for(allowed, timeout=3)
    assert time.monotonic() - started < 2.0
    # The exception ends at 10:05: the allow may not be cached past it.
    assert reply.answer[0].ttl <= 300


def test_two_workers_share_the_port_and_stop_on_sigterm(fresh_daemon, authority) -> None:
    d = fresh_daemon([authority.address], workers=2).start()
    for i in range(40):
        assert ask(d.port, f"w{i}.example.test").rcode() == dns.rcode.NXDOMAIN
    wait_for(lambda: len(set(re.findall(r"\[dns (\d+)\] schoolgate.dns: serving DNS", d.log_text()))) == 2, timeout=10)
    assert d.stop() == 0
    # Each worker hands its last events to the one event writer, which writes them and stops last.
    assert len(re.findall(r"stopped; events handed to the writer", d.log_text())) == 2
    assert len(re.findall(r"event writer stopped; events written", d.log_text())) == 1


def test_bad_policy_at_start_is_a_clear_error(tmp_path, authority) -> None:
    import subprocess
    import sys
    from pathlib import Path

    from conftest import DATA

    broken = (DATA / "policy.toml").read_text().replace('action = "block"', 'action = "nope"', 1)
    (tmp_path / "policy.toml").write_text(broken)
    (tmp_path / "schoolgate.toml").write_text((DATA / "schoolgate.toml").read_text())
    (tmp_path / "var").mkdir()
    init_database(f"sqlite:///{tmp_path / 'var' / 'schoolgate.db'}")
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("schoolgate")),
            "dns",
            "--config",
            str(tmp_path / "schoolgate.toml"),
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--upstream",
            authority.address,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "policy.toml" in result.stderr and "nope" in result.stderr


def test_the_supervisor_restarts_a_worker_that_dies(fresh_daemon, authority) -> None:
    import os
    import signal

    d = fresh_daemon([authority.address], workers=2).start()

    def serving() -> set[str]:
        return set(re.findall(r"\[dns (\d+)\] schoolgate.dns: serving DNS", d.log_text()))

    pids = wait_for(lambda: serving() if len(serving()) == 2 else None, timeout=10)
    victim = int(sorted(pids)[0])
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: f"DNS worker {victim} exited" in d.log_text(), timeout=10)
    wait_for(lambda: len(serving()) == 3, timeout=20)
    for i in range(20):
        assert ask(d.port, f"after{i}.example.test").rcode() == dns.rcode.NXDOMAIN
    assert d.stop() == 0


def test_a_one_worker_daemon_stops_when_its_event_writer_ends(fresh_daemon, authority) -> None:
    """One worker forks its own event writer: if the writer ends, what the worker hands over
    would be lost, so the worker stops too (1), for the appliance's supervisor to start both."""
    import os
    import signal

    d = fresh_daemon([authority.address]).start()
    found = wait_for(lambda: re.search(r"its event writer is (\d+)", d.log_text()), timeout=10)
    writer = int(found.group(1))
    assert ask(d.port, "before.example.test").rcode() == dns.rcode.NXDOMAIN  # answering meanwhile
    os.kill(writer, signal.SIGKILL)
    assert d.proc is not None
    # However long it takes the worker to notice, it stops of itself: it is not sent a signal.
    code = wait_for(d.proc.poll, timeout=60)
    assert code == 1
    assert f"DNS event writer {writer} exited with -9" in d.log_text()
