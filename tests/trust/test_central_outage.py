"""Two schools, one central PostgreSQL database, and a minute in which that database is gone.

Each school is a separate process writing its events through the real EventWriter, made by
``make_event_writer`` as the daemons make it, with its own data directory and spool. The
central server is stopped hard (an immediate shutdown, as in a crash or a power cut) while
both schools keep logging, and restarted on the same data directory and port. Afterwards
every event a school submitted is in the central database exactly once: the stored uids of a
site are exactly the writer's prefix numbered 1..N, where N is what it submitted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from schoolgate.store.db import init_db, make_engine
from schoolgate.store.events import spool_paths
from schoolgate.store.models import AccessEvent

HERE = Path(__file__).resolve().parent
SITES = ("oakfield-primary", "riverside-primary")
RATE = 300.0  # events per second per school: a busy school's blocked and flagged traffic
OUTAGE_S = float(os.environ.get("SCHOOLGATE_TRUST_OUTAGE_S", "60"))
MAX_EVENTS = int(RATE * (OUTAGE_S + 240))  # the bound on each producer's loop


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(interval)


def spool_pending(data_dir: Path) -> int:
    """Events waiting in the spools of the appliance with this data directory."""
    total = 0
    for path in spool_paths(data_dir):
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            (count,) = conn.execute("SELECT count(*) FROM spooled_events").fetchone()
            total += int(count)
        except sqlite3.OperationalError:  # the writer has not created its table yet
            pass
        finally:
            conn.close()
    return total


class School:
    """A producer process for one site."""

    def __init__(self, site: str, url: str, workdir: Path) -> None:
        self.site = site
        self.data_dir = workdir / site / "data"
        self.data_dir.mkdir(parents=True)
        self.stop_file = workdir / site / "stop"
        self.result_file = workdir / site / "result.json"
        self.log = workdir / site / "producer.log"
        args = [sys.executable, str(HERE / "producer.py"), url, site, str(self.data_dir), str(RATE)]
        args += [str(MAX_EVENTS), str(self.stop_file), str(self.result_file)]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def finish(self) -> dict[str, Any]:
        self.stop_file.touch()
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"{self.site}: producer did not stop\n{self.log.read_text()}") from None
        assert self.proc.returncode == 0, self.log.read_text()
        result: dict[str, Any] = json.loads(self.result_file.read_text())
        return result

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(10)


@pytest.mark.slow
def test_a_minute_without_the_central_database_loses_and_duplicates_nothing(
    central_server: Any, tmp_path: Path
) -> None:
    url = central_server.create_database("trust")
    init_db(url).dispose()
    engine = make_engine(url)

    def per_site() -> dict[str, int]:
        with engine.connect() as conn:
            rows = conn.execute(select(AccessEvent.site, func.count()).group_by(AccessEvent.site)).all()
        return {site: int(n) for site, n in rows}

    schools = [School(site, url, tmp_path) for site in SITES]
    try:
        # Both schools log to the central database.
        wait_for(lambda: all(per_site().get(s, 0) >= RATE for s in SITES), 60, "both schools writing centrally")
        assert all(spool_pending(s.data_dir) == 0 for s in schools)

        engine.dispose()  # our own connections die with the server too
        central_server.stop(mode="immediate")
        went_down = time.monotonic()
        # The schools keep logging, into their spools.
        wait_for(lambda: all(spool_pending(s.data_dir) >= RATE for s in schools), 30, "both schools spooling")
        while time.monotonic() - went_down < OUTAGE_S:
            assert all(s.alive() for s in schools), "a producer died while the database was away"
            time.sleep(0.5)
        spooled_at_restart = sum(spool_pending(s.data_dir) for s in schools)

        central_server.start(fast=False)
        came_back = time.monotonic()
        wait_for(lambda: all(spool_pending(s.data_dir) == 0 for s in schools), 120, "both spools shipped")
        drained_s = time.monotonic() - came_back
        results = {s.site: s.finish() for s in schools}
    finally:
        for school in schools:
            school.kill()

    with engine.connect() as conn:
        stored = conn.execute(select(AccessEvent.site, AccessEvent.uid)).all()
    engine.dispose()
    uids_by_site: dict[str, list[str]] = {}
    for site, uid in stored:
        uids_by_site.setdefault(site, []).append(uid)

    for site, result in results.items():
        stats = result["stats"]
        submitted = result["submit_calls"]
        assert stats["submitted"] == submitted
        assert (stats["dropped"], result["refused"], stats["queued"]) == (0, 0, 0), stats
        assert stats["spooled"] > RATE * OUTAGE_S * 0.5, stats  # the outage really went through the spool
        assert stats["shipped"] == stats["spooled"], stats
        assert stats["spool_pending"] == 0, stats
        assert stats["written"] + stats["spooled"] == submitted, stats
        uids = uids_by_site.get(site, [])
        assert len(uids) == len(set(uids)), f"{site}: duplicated events"
        expected = {f"{result['uid_prefix']}-{n:012x}" for n in range(1, submitted + 1)}
        assert set(uids) == expected, f"{site}: {len(expected - set(uids))} lost, {len(set(uids) - expected)} stray"

    spooled = sum(r["stats"]["spooled"] for r in results.values())
    print(
        f"\ntrust outage: {OUTAGE_S:.0f} s down; {spooled} events spooled by {len(SITES)} schools; "
        f"{spooled_at_restart} waiting at restart shipped in {drained_s:.1f} s "
        f"({spooled_at_restart / drained_s:.0f} events/s while the schools kept logging at {RATE * len(SITES):.0f}/s); "
        f"duplicates skipped {sum(r['stats']['duplicates'] for r in results.values())}; "
        f"slowest submit() {max(r['slowest_submit_s'] for r in results.values()) * 1e3:.2f} ms"
    )


# --------------------------------------------------------------------------- real DNS daemons

SCHOOLGATE = Path(sys.executable).with_name("schoolgate")
EXAMPLE_POLICY = HERE.parent.parent / "deploy" / "policy.example.toml"
# The loopback clients are pupils: the example (ASPIRE's policy) keeps social media closed to
# pupils at every hour (§6 in school hours, §3 on site), so every query below is blocked.
LOOPBACK_PUPILS = '\n[[networks]]\nname = "test: loopback pupils"\ncidrs = ["127.0.0.0/8"]\nrole = "pupil"\n'
DNS_RATE = 80.0  # blocked queries per second per school, from a bounded loop on loopback


def free_udp_tcp_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


class DnsSchool:
    """`schoolgate dns` for one site, its database the trust's central server."""

    def __init__(self, site: str, url: str, workdir: Path, workers: int) -> None:
        self.site = site
        self.workdir = workdir / site
        self.data_dir = self.workdir / "var"
        self.data_dir.mkdir(parents=True)
        self.port = free_udp_tcp_port()
        (self.workdir / "policy.toml").write_text(EXAMPLE_POLICY.read_text(encoding="utf-8") + LOOPBACK_PUPILS)
        shutil.copytree(EXAMPLE_POLICY.parent / "lists", self.workdir / "lists")
        config = self.workdir / "schoolgate.toml"
        config.write_text(
            'policy = "policy.toml"\ndata_dir = "var"\n\n'
            f'[site]\nid = "{site}"\nname = "{site}"\n\n'
            f'[database]\nurl = "{url}"\n\n'
            f'[dns]\nlisten = ["127.0.0.1:{self.port}"]\nupstream_timeout_ms = 300\n',
            encoding="utf-8",
        )
        self.log = self.workdir / "dns.log"
        args = [str(SCHOOLGATE), "dns", "--config", str(config), "--listen", f"127.0.0.1:{self.port}"]
        # Nothing listens there: blocked names never need an upstream.
        args += ["--upstream", f"127.0.0.1:{free_udp_tcp_port()}", "--workers", str(workers)]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(args, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT)
        self.sent: list[str] = []
        self.answered: list[str] = []
        self.blocked_answers = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def ask(self, name: str, timeout: float = 2.0) -> Any:
        import dns.message
        import dns.query

        return dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=self.port, timeout=timeout)

    def wait_ready(self) -> None:
        import dns.exception

        def answers() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.site}: dns daemon exited\n{self.log.read_text(errors='replace')}")
            try:
                self.ask(f"ready.{self.site}.facebook.com", timeout=0.3)
            except (dns.exception.Timeout, OSError):
                return False
            return True

        wait_for(answers, 60, f"{self.site}: dns daemon answering", interval=0.1)

    def start_load(self, limit: int) -> None:
        self._thread = threading.Thread(target=self._load, args=(limit,), daemon=True)
        self._thread.start()

    def _load(self, limit: int) -> None:
        import dns.exception
        import dns.rdatatype

        started = time.monotonic()
        for n in range(limit):
            if self._stop.is_set():
                return
            pause = started + n / DNS_RATE - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            name = f"q{n}.{self.site}.facebook.com"
            self.sent.append(name)
            try:
                reply = self.ask(name)
            except (dns.exception.Timeout, OSError):
                continue
            self.answered.append(name)
            if any(
                rd.address == "10.41.0.1" for rrset in reply.answer for rd in rrset if rrset.rdtype == dns.rdatatype.A
            ):
                self.blocked_answers += 1

    def stop_load(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def event_ledgers(engine: Any, site: str) -> tuple[dict[str, int], dict[str, int]]:
    """(the DNS event writer's counters, the DNS workers' counters summed), from their
    daemon_status rows: the workers hand events over ("handed"), the writer writes or spools them."""
    from sqlalchemy.orm import Session

    from schoolgate.store.events import read_status

    with Session(engine) as session:
        daemons = read_status(session, site)
    writer: dict[str, int] = {}
    workers: dict[str, int] = {}
    for name, row in daemons.items():
        if not name.startswith("dns"):
            continue
        into = writer if name == "dns.events" else workers
        for key, value in row["stats"].get("events", {}).items():
            if isinstance(value, int):
                into[key] = into.get(key, 0) + value
    return writer, workers


@pytest.mark.slow
def test_dns_daemons_keep_filtering_and_log_every_query_once_through_an_outage(
    central_server: Any, tmp_path: Path
) -> None:
    url = central_server.create_database("trust")
    init_db(url).dispose()
    engine = make_engine(url)
    schools = [
        DnsSchool("oakfield-primary", url, tmp_path, workers=2),
        DnsSchool("riverside-primary", url, tmp_path, workers=1),
    ]
    limit = int(DNS_RATE * (OUTAGE_S + 240))
    try:
        for school in schools:
            school.wait_ready()
        for school in schools:
            school.start_load(limit)

        def hosts(site: str) -> list[str]:
            with engine.connect() as conn:
                rows = conn.execute(
                    select(AccessEvent.host).where(AccessEvent.site == site, AccessEvent.host.like("q%"))
                ).all()
            return [h for (h,) in rows]

        wait_for(lambda: all(len(hosts(s.site)) >= DNS_RATE for s in schools), 60, "both schools logging centrally")
        engine.dispose()
        central_server.stop(mode="immediate")
        went_down = time.monotonic()
        answered_before = [len(s.answered) for s in schools]
        while time.monotonic() - went_down < OUTAGE_S:
            assert all(s.proc.poll() is None for s in schools), "a dns daemon died while the database was away"
            time.sleep(0.5)
        # Filtering went on: the daemons answered (and blocked) all the while.
        for school, before in zip(schools, answered_before, strict=True):
            assert len(school.answered) - before >= DNS_RATE * OUTAGE_S * 0.8, school.site
            assert spool_pending(school.data_dir) > 0, (
                f"{school.site}: the dns daemon did not spool; it must make its writer with "
                "schoolgate.store.events.make_event_writer(engine, config, ...)"
            )
        central_server.start(fast=False)
        wait_for(lambda: all(spool_pending(s.data_dir) == 0 for s in schools), 120, "both spools shipped")
        for school in schools:
            school.stop_load()
        for school in schools:
            assert school.stop() == 0, school.log.read_text(errors="replace")
        for school in schools:
            stored = hosts(school.site)
            assert len(stored) == len(set(stored)), f"{school.site}: duplicated events"
            assert set(school.answered) <= set(stored) <= set(school.sent), school.site
            assert school.blocked_answers == len(school.answered)
            totals, handed_over = event_ledgers(engine, school.site)
            assert totals["dropped"] == 0 and handed_over["dropped"] == 0, (totals, handed_over)
            assert totals["spooled"] > 0 and totals["spool_pending"] == 0, totals
            assert totals["written"] + totals["spooled"] == totals["submitted"], totals
            assert handed_over["handed"] == totals["submitted"], (totals, handed_over)
        print(
            "\ntrust dns: "
            + "; ".join(f"{s.site}: {len(s.answered)} blocked queries answered, all logged once" for s in schools)
        )
    finally:
        for school in schools:
            school.stop_load()
            school.stop()
        engine.dispose()
