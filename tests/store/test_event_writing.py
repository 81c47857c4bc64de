"""The event-writing process (writing.py) with several daemons' channels: one real forked
process, real socket pairs, real senders, SQLite. Each source is written with its own settings
into its own status row; a killed process loses nothing that still waited in the channels."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from schoolgate.store.db import make_engine
from schoolgate.store.events import EventRecord, read_status
from schoolgate.store.events.channel import EventChannel, channel_pair
from schoolgate.store.events.record import compact
from schoolgate.store.events.writing import Source, WritingSettings, run_writing_sources
from schoolgate.store.models import AccessEvent

SITE = "testschool"
T0 = datetime(2026, 11, 23, 10, 15, 5, tzinfo=UTC)
# The DNS daemon's shape (bursts a second apart) beside the proxy's (no bursts), short graces.
DNS = WritingSettings(status_name="dns.events", batch_rows=10_000, stop_grace_s=2.0, sqlite_cache_kib=4096,
                      gather_s=0.5)
PROXY = WritingSettings(status_name="proxy.events", batch_rows=2000, stop_grace_s=2.0)


def event(source: str, n: int) -> Any:
    return compact(EventRecord(
        ts=T0 + timedelta(milliseconds=n), site=SITE, source=source, client_ip=f"10.0.0.{n % 250 + 1}",
        host=f"{source}{n}.example", verdict="block", rule_id="social-media", role="pupil",
        mac="02:00:00:00:00:07", device_id="LAP-07", device_name="Laptop 7", person_id="p42",
        person_name="Sam Pupil", qtype="A" if source == "dns" else None, clause="Social Media Policy §9",
        category="social_media",
    ))


class Channels:
    """Each daemon's channel: the sending end a worker would hold, the reading end the
    supervisor keeps (so events wait in it while a writing process restarts)."""

    def __init__(self) -> None:
        self.pairs = {"dns": channel_pair(), "proxy": channel_pair()}
        self.senders = {name: EventChannel(sending) for name, (sending, _) in self.pairs.items()}

    def sources(self) -> list[Source]:
        return [Source(self.pairs["dns"][1], DNS), Source(self.pairs["proxy"][1], PROXY)]

    def fork_writer(self, db_url: str) -> int:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for sending, _ in self.pairs.values():
                    sending.close()
                config = SimpleNamespace(site=SimpleNamespace(id=SITE), data_dir=None)
                code = run_writing_sources(config, db_url, self.sources())
            finally:
                os._exit(code)
        return pid

    def send(self, name: str, start: int, count: int) -> None:
        sender = self.senders[name]
        for n in range(start, start + count):
            sender.submit(event(name, n))
        sender.flush()

    def close_senders(self) -> None:
        for name, sender in self.senders.items():
            sender.stop(timeout=10)
            self.pairs[name][0].close()

    def close(self) -> None:
        for sending, reading in self.pairs.values():
            sending.close()
            reading.close()


@pytest.fixture
def channels() -> Iterator[Channels]:
    made = Channels()
    yield made
    made.close()


def stored_hosts(db_url: str) -> dict[str, set[str]]:
    engine = make_engine(db_url)
    try:
        with Session(engine) as session:
            found: dict[str, set[str]] = {"dns": set(), "proxy": set()}
            for source, host in session.execute(select(AccessEvent.source, AccessEvent.host)):
                found[source].add(host)
            return found
    finally:
        engine.dispose()


def rows(db_url: str) -> dict[str, dict[str, Any]]:
    engine = make_engine(db_url)
    try:
        with Session(engine) as session:
            return read_status(session, SITE)
    finally:
        engine.dispose()


def wait_for(condition: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def exit_status(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"the writing process {pid} did not end within {timeout} s")
        time.sleep(0.02)


def test_one_process_writes_each_daemons_events_into_its_own_status_row(db_path: Path,
                                                                         channels: Channels) -> None:
    db_url = f"sqlite:///{db_path}"
    writer = channels.fork_writer(db_url)
    channels.send("dns", 0, 3000)
    channels.send("proxy", 0, 500)
    for name, count in (("dns", 3000), ("proxy", 500)):
        expected = {f"{name}{n}.example" for n in range(count)}
        wait_for(lambda name=name, expected=expected: stored_hosts(db_url)[name] == expected, 30)
    status = wait_for(lambda: (found := rows(db_url)) and all(
        found.get(name, {}).get("stats", {}).get("events", {}).get("written") == count
        for name, count in (("dns.events", 3000), ("proxy.events", 500))) and found, 10)
    # One process, two rows: each counts its own daemon's events only.
    assert status["dns.events"]["pid"] == status["proxy.events"]["pid"] == writer
    channels.close_senders()
    # Its streams have ended (every sender has gone; the test's own reading ends stay open).
    assert exit_status(writer, 30) == 0


def test_each_daemons_writing_threads_carry_its_name_in_the_kernel(db_path: Path, channels: Channels) -> None:
    """So that each daemon's share of the process's CPU can be read from outside (bench/proxy
    counts only the proxy's): the thread reading a daemon's channel and the writer thread it
    starts are both named after that daemon's status row."""
    db_url = f"sqlite:///{db_path}"
    writer = channels.fork_writer(db_url)
    channels.send("proxy", 0, 10)
    wait_for(lambda: len(stored_hosts(db_url)["proxy"]) == 10, 30)

    def names() -> list[str]:
        found = []
        for task in Path(f"/proc/{writer}/task").iterdir():
            try:
                found.append((task / "comm").read_text().strip())
            except OSError:  # a thread that has just ended
                continue
        return found

    named = wait_for(lambda: (found := names()).count("sg-proxy.events") >= 2 and found, 10)
    assert named.count("sg-dns.events") >= 2
    channels.close_senders()
    assert exit_status(writer, 30) == 0


def test_a_killed_writing_process_loses_nothing_that_waited_in_the_channels(db_path: Path,
                                                                            channels: Channels) -> None:
    """SIGKILL while both daemons hand events over: what it had read and not written is lost
    (its status rows let the supervisor count that); everything sent after the kill, and
    everything it had not read, waits in the sockets for the next writing process."""
    db_url = f"sqlite:///{db_path}"
    writer = channels.fork_writer(db_url)
    sent = {"dns": 0, "proxy": 0}
    busy_until = time.monotonic() + 2.0
    while time.monotonic() < busy_until:  # both busy: 50-event batches every 20 ms each
        for name, count in list(sent.items()):
            channels.send(name, count, 50)
            sent[name] = count + 50
        time.sleep(0.02)
    os.kill(writer, signal.SIGKILL)
    assert exit_status(writer, 10) == -signal.SIGKILL
    before_kill = dict(sent)
    for name, count in list(sent.items()):  # handed over while no process reads: they wait in the socket
        channels.send(name, count, 1000)
        sent[name] = count + 1000
    restarted = channels.fork_writer(db_url)
    channels.close_senders()
    assert exit_status(restarted, 60) == 0
    found = stored_hosts(db_url)
    for name, count in sent.items():
        missing = {n for n in range(count) if f"{name}{n}.example" not in found[name]}
        assert all(n < before_kill[name] for n in missing), f"{name}: lost events sent after the kill"
        # At most what the killed process had taken: one burst (DNS) or one flush interval's
        # reads (proxy) cannot exceed what was sent before the kill; and far fewer than all.
        assert len(missing) < before_kill[name], f"{name}: {len(missing)} of {before_kill[name]} lost"


@pytest.fixture
def own_signal_handlers() -> Iterator[None]:
    """The writing process's body sets SIGTERM's and SIGINT's handlers: pytest's come back."""
    kept = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in kept.items():
        signal.signal(signum, handler)


@pytest.mark.usefixtures("own_signal_handlers")
def test_a_failing_source_stops_the_process_so_that_it_is_started_again(db_path: Path,
                                                                        channels: Channels) -> None:
    """One source's writer failing at start (here: settings its EventWriter refuses) ends the
    whole process with status 1 at once, the other source's writer stopped cleanly: the
    supervisor starts it again, and what the daemons send meanwhile waits in the sockets."""
    config = SimpleNamespace(site=SimpleNamespace(id=SITE), data_dir=None)
    broken = [Source(channels.pairs["dns"][1], DNS), Source(channels.pairs["proxy"][1], replace(PROXY, batch_rows=0))]
    channels.send("dns", 0, 10)
    started = time.monotonic()
    assert run_writing_sources(config, f"sqlite:///{db_path}", broken) == 1
    # Not the DNS source's stop grace: it was told to stop at once.
    assert time.monotonic() - started < DNS.stop_grace_s + DNS.gather_s


def test_each_source_is_named_once() -> None:
    config = SimpleNamespace(site=SimpleNamespace(id=SITE), data_dir=None)
    first, second = channel_pair()
    try:
        with pytest.raises(ValueError, match="share a status row"):
            run_writing_sources(config, "sqlite://", [Source(first, DNS), Source(second, DNS)])
        with pytest.raises(ValueError, match="at least one"):
            run_writing_sources(config, "sqlite://", [])
    finally:
        first.close()
        second.close()


class Companion:
    """Work run beside the channels (as net watch is under `schoolgate run`): says when it
    started and when it was told to stop, or fails at once."""

    def __init__(self, fails: bool = False, terminates: bool = False) -> None:
        self.fails = fails
        self.terminates = terminates  # sends the process SIGTERM once started (its handlers are set by then)
        self.seen: list[str] = []

    def __call__(self, stop: threading.Event) -> None:
        self.seen.append("started")
        if self.terminates:
            os.kill(os.getpid(), signal.SIGTERM)
        if self.fails:
            raise RuntimeError("a defect in the companion")
        stop.wait()
        self.seen.append("stopped")


@pytest.mark.usefixtures("own_signal_handlers")
def test_a_companion_runs_beside_the_sources_until_every_channel_has_ended(db_path: Path,
                                                                            channels: Channels) -> None:
    """Both daemons' events are written while the companion runs; when the last sender of each
    channel has gone, the companion is told to stop and the process ends cleanly."""
    db_url = f"sqlite:///{db_path}"
    config = SimpleNamespace(site=SimpleNamespace(id=SITE), data_dir=None)
    companion = Companion()
    channels.send("dns", 0, 200)
    channels.send("proxy", 0, 50)
    channels.close_senders()
    assert run_writing_sources(config, db_url, channels.sources(), [("watch", companion)]) == 0
    assert companion.seen == ["started", "stopped"]
    assert stored_hosts(db_url) == {"dns": {f"dns{n}.example" for n in range(200)},
                                    "proxy": {f"proxy{n}.example" for n in range(50)}}


@pytest.mark.usefixtures("own_signal_handlers")
def test_sigterm_stops_the_companion_with_the_sources(db_path: Path, channels: Channels) -> None:
    """SIGTERM while the senders still live: the companion is told at once, the sources after
    their grace, and the process ends cleanly."""
    config = SimpleNamespace(site=SimpleNamespace(id=SITE), data_dir=None)
    companion = Companion(terminates=True)
    started = time.monotonic()
    assert run_writing_sources(config, f"sqlite:///{db_path}", channels.sources(), [("watch", companion)]) == 0
    assert companion.seen == ["started", "stopped"]
    assert time.monotonic() - started >= DNS.stop_grace_s  # the sources waited for their senders


@pytest.mark.usefixtures("own_signal_handlers")
def test_a_companion_that_fails_ends_the_process_so_that_it_is_started_again(db_path: Path,
                                                                            channels: Channels) -> None:
    """A companion is meant to keep itself going (net watch retries its own failures): one that
    lets an exception out has a defect, and the process ends with status 1 at once, the sources
    stopped cleanly, for the supervisor to start again."""
    config = SimpleNamespace(site=SimpleNamespace(id=SITE), data_dir=None)
    started = time.monotonic()
    companion = Companion(fails=True)
    assert run_writing_sources(config, f"sqlite:///{db_path}", channels.sources(), [("watch", companion)]) == 1
    assert companion.seen == ["started"]
    assert time.monotonic() - started < DNS.stop_grace_s + DNS.gather_s


def test_a_full_burst_is_written_and_freed_before_the_collector_walks_it() -> None:
    """The writing process's collector threshold is above what a burst of the DNS daemon's
    batch holds at once (each event's tuple, its flags set and its row), so no collection
    walks the rows of a burst; lowering it, or raising the batch past it, fails here."""
    import gc

    from schoolgate.dns.daemon import WRITER_BATCH_ROWS
    from schoolgate.store.events.writing import collect_for_writing

    before = gc.get_threshold()
    collections: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.collect()
    try:
        collect_for_writing()
        gc.callbacks.append(count)
        # As the writer holds a burst: each event a tuple with its own flags set, and its row.
        burst = [(float(n), f"ads{n}.example", frozenset({"list:ads"})) for n in range(WRITER_BATCH_ROWS)]
        rows = [(n, *event[1:]) for n, event in enumerate(burst)]
        del burst, rows
        assert collections == []
    finally:
        if count in gc.callbacks:
            gc.callbacks.remove(count)
        gc.unfreeze()
        gc.set_threshold(*before)
