"""Events handed from answering processes to the one process that writes them (channel.py):
real socket pairs, real forked senders, a real EventWriter on SQLite."""

from __future__ import annotations

import marshal
import os
import signal
import socket
import sqlite3
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from schoolgate.store.db import make_engine
from schoolgate.store.events import EventRecord, EventWriter, StatusTarget, read_status
from schoolgate.store.events.channel import (
    MAX_MESSAGE,
    EventChannel,
    channel_pair,
    decode,
    encode,
    receive_events,
)
from schoolgate.store.events.record import ASK_FACTS, COMPACT_FIELDS, RECORD_FIELDS, compact, from_ask
from schoolgate.store.models import AccessEvent

SITE = "testschool"
T0 = datetime(2026, 11, 23, 10, 15, 5, tzinfo=UTC)


def record(n: int, **changes: Any) -> EventRecord:
    base = EventRecord(
        ts=T0 + timedelta(milliseconds=n), site=SITE, source="dns", client_ip=f"10.0.0.{n % 250 + 1}",
        host=f"host{n}.example", verdict="block", rule_id="social-media", role="pupil", mac="02:00:00:00:00:07",
        device_id="LAP-07", device_name="Laptop 7", person_id="p42", person_name="Sam Pupil", qtype="A",
        clause="Social Media Policy §9", category="social_media", flags=frozenset({"repeat"}),
    )
    return replace(base, **changes)


def receive_all(reading: socket.socket, writer: EventWriter) -> threading.Thread:
    """The writing process's loop, in a thread: until every sender has closed its end."""

    def run() -> None:
        for _ in receive_events(reading, writer.submit_many, stop_after=lambda: None):
            pass

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def wait_until(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def stored(engine: Engine) -> list[AccessEvent]:
    with Session(engine) as session:
        return list(session.scalars(select(AccessEvent).order_by(AccessEvent.ts)))


def test_events_from_forked_senders_are_written_as_their_records(engine: Engine) -> None:
    """Two processes share the sending end (as forked workers do); the reader's stream ends when
    both and the parent have closed it, and every event is stored with every DfE field."""
    sending, reading = channel_pair()
    writer = EventWriter(engine, flush_interval=0.02)
    writer.start()
    per_sender = 1000
    children = []
    for sender in range(2):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                reading.close()
                channel = EventChannel(sending)
                for i in range(per_sender):
                    channel.submit_compact(compact(record(sender * per_sender + i)))
                stats = channel.stop()
                code = 0 if stats["handed"] == per_sender and stats["dropped"] == 0 else 3
            finally:
                os._exit(code)
        children.append(pid)
    sending.close()
    thread = receive_all(reading, writer)
    for pid in children:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    thread.join(10)
    assert not thread.is_alive(), "the reader did not see the end of the stream"
    writer.stop()
    rows = stored(engine)
    assert len(rows) == 2 * per_sender
    assert {row.host for row in rows} == {f"host{n}.example" for n in range(2 * per_sender)}
    first = next(row for row in rows if row.host == "host7.example")
    expected = record(7)
    for name in ("client_ip", "mac", "device_id", "device_name", "person_id", "person_name", "host", "qtype",
                 "verdict", "rule_id", "role", "clause", "category"):
        assert getattr(first, name) == getattr(expected, name), name
    assert first.ts.replace(tzinfo=UTC) == expected.ts
    assert first.flags == "repeat"
    assert len({row.uid for row in rows}) == len(rows)


def test_a_full_socket_keeps_events_waiting_up_to_the_bound_and_counts_the_rest() -> None:
    sending, reading = channel_pair()
    sending.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # full after a batch or two
    channel = EventChannel(sending, batch_events=16, max_waiting=2000)
    total = 20_000
    for i in range(total):
        channel.submit(record(i))
        stats = channel.stats()
        assert stats["submitted"] == stats["handed"] + stats["dropped"] + stats["queued"]
    channel.flush()
    stats = channel.stats()
    assert stats["dropped"] > 0 and stats["queued"] <= 2000
    # The reader catches up: what waited is sent, in order, and nothing more is lost.
    received: list[tuple[Any, ...]] = []
    reading.setblocking(False)
    while channel.stats()["queued"]:
        while True:
            try:
                message = reading.recv(MAX_MESSAGE)
            except BlockingIOError:
                break
            received.extend(marshal.loads(message))
        channel.flush()
    while True:
        try:
            received.extend(marshal.loads(reading.recv(MAX_MESSAGE)))
        except BlockingIOError:
            break
    final = channel.stats()
    assert final["handed"] == len(received)
    assert final["handed"] + final["dropped"] == total
    hosts = [event[RECORD_FIELDS.index("host")] for event in received]
    numbers = [int(host[4:].split(".")[0]) for host in hosts]
    assert numbers == sorted(numbers)  # sent in the order they were submitted
    sending.close()
    reading.close()


def test_a_batch_larger_than_one_message_is_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("schoolgate.store.events.channel.MAX_MESSAGE", MAX_MESSAGE // 5)
    sending, reading = channel_pair()
    # Each a different long name (marshal writes a string it has seen once as a reference).
    events = [compact(record(i, host=f"{i}.{'x' * 60}." * 4 + "example")) for i in range(200)]
    assert len(encode(events)) > MAX_MESSAGE / 5
    channel = EventChannel(sending, batch_events=200)
    for event in events:
        channel.submit(event)
    reading.settimeout(1)
    received = 0
    while received < 200:
        message = reading.recv(MAX_MESSAGE + 1)
        assert len(message) <= MAX_MESSAGE / 5
        received += len(marshal.loads(message))
    assert channel.stats()["handed"] == 200


def ask_of(rec: EventRecord) -> tuple[Any, ...]:
    """The ask (record.Ask) a record's compact event is."""
    values = dict(zip(COMPACT_FIELDS, compact(rec), strict=True))
    return (values["ts"], values["host"], values["qtype"], values["count"], tuple(values[n] for n in ASK_FACTS))


def test_asks_and_compact_events_are_stored_as_the_same_rows(engine: Engine) -> None:
    """The DNS daemon hands most events over as asks (their facts shared): the writer stores
    the rows the compact events they stand for make, every column."""
    records = [record(n, count=n % 3 + 1, qtype="A,AAAA,HTTPS" if n % 2 else "A") for n in range(40)]
    sending, reading = channel_pair()
    writer = EventWriter(engine, flush_interval=0.02)
    writer.start()
    channel = EventChannel(sending)
    for n, rec in enumerate(records):
        if n % 2:
            channel.submit_ask(ask_of(rec))  # type: ignore[arg-type]
        else:  # a compact event of the same facts, with a host of its own
            channel.submit_compact(compact(replace(rec, host=f"compact{n}.example")))
        channel.submit_compact(compact(replace(rec, host=f"as-compact{n}.example")))
    channel.flush()
    sending.close()
    thread = receive_all(reading, writer)
    thread.join(10)
    writer.stop()
    by_host = {row.host: row for row in stored(engine)}
    assert len(by_host) == 80
    columns = [c for c in RECORD_FIELDS if c not in ("uid", "host")]
    for n in range(1, 40, 2):
        asked, compacted = by_host[f"host{n}.example"], by_host[f"as-compact{n}.example"]
        assert [getattr(asked, c) for c in columns] == [getattr(compacted, c) for c in columns], n


def test_a_batch_of_asks_shares_their_facts_and_decodes_as_sent() -> None:
    """A batch's shared facts are written once (marshal's references), and decoding gives the
    asks back as they were sent, still sharing their facts, beside compact events in the same
    batch: the writer builds an ask's row straight from it (rows.SqliteRows.build_ask)."""
    asks = [ask_of(record(n, client_ip="10.0.0.1")) for n in range(100)]
    shared = asks[0][4]
    asks = [(*ask[:4], shared) for ask in asks]
    events = [compact(record(n, client_ip="10.0.0.1")) for n in range(100)]
    assert len(encode(asks)) * 2 < len(encode(events))
    decoded = decode(encode([*asks, events[0], *asks[:1]]))
    assert decoded == [*asks, events[0], asks[0]]
    assert all(ask[4] is decoded[0][4] for ask in decoded[:100] + decoded[101:])
    assert [from_ask(e) for e in decoded[:100]] == events


@pytest.mark.parametrize(
    "message",
    [
        b"not marshal", encode({"a": 1}), b"\x00",
        encode([(1.0, "a.example", "A", 1, ("short",))]),  # an ask whose facts are not whole
        encode([(1.0, "a.example", "A", 1, ["not", "a", "tuple"])]),
        encode([7]),  # neither an ask nor a compact event
    ],
)
def test_an_unreadable_batch_is_lost_alone(engine: Engine, message: bytes) -> None:
    sending, reading = channel_pair()
    writer = EventWriter(engine, flush_interval=0.02)
    writer.start()
    channel = EventChannel(sending)
    sending.send(message)
    channel.submit(record(1))
    channel.flush()
    sending.close()
    thread = receive_all(reading, writer)
    thread.join(10)
    writer.stop()
    assert [row.host for row in stored(engine)] == ["host1.example"]


def test_the_writer_takes_a_batch_up_to_its_bound_and_counts_the_overflow(engine: Engine) -> None:
    writer = EventWriter(engine, max_queue=100)
    assert writer.submit_many([compact(record(i)) for i in range(150)]) == 100
    stats = writer.stats()
    assert stats["submitted"] == 150 and stats["overflow"] == 50 and stats["dropped"] == 50
    writer.stop()
    assert writer.submit_many([compact(record(1))]) == 0
    stats = writer.stats()
    assert stats["late"] == 1 and stats["written"] == 100
    assert stats["submitted"] == stats["written"] + stats["dropped"]


def test_a_worker_status_row_says_what_it_still_held(engine: Engine) -> None:
    """The row a killed worker leaves behind is what the supervisor's loss estimate reads."""
    from schoolgate.runner import RateTracker, estimate_loss

    sending, reading = channel_pair()
    status = StatusTarget(site=SITE, name="dns.1", interval=0.05, pid=4242, extra=lambda: {"dns": {"queries": 9}})
    channel = EventChannel(sending, engine, status=status, batch_events=1000)
    channel.count_held(lambda: (3, 40))
    for i in range(25):
        channel.submit(record(i))
    channel.flush()
    for i in range(7):  # gathered, not yet sent: a kill now loses them
        channel.submit(record(100 + i))
    channel.start()
    deadline = datetime.now(UTC) + timedelta(seconds=20)
    row = None
    while datetime.now(UTC) < deadline:
        with Session(engine) as session:
            row = read_status(session, SITE).get("dns.1")
        if row is not None:
            break
    assert row is not None
    channel._stop.set()  # the process is killed: no last report
    events = row["stats"]["events"]
    assert events == {"submitted": 32, "handed": 25, "dropped": 0, "queued": 7, "held": 3, "held_queries": 40}
    assert row["stats"]["dns"] == {"queries": 9} and row["pid"] == 4242
    lost, detail = estimate_loss([{"name": "dns.1", **row}], RateTracker())
    assert lost == 7 + 3, detail
    sending.close()
    reading.close()


def test_a_worker_killed_while_folding_asks_loses_only_what_its_status_row_says(engine: Engine) -> None:
    """A DNS worker folds a device's repeated asks of a blocked name until its next tick
    (dns.stages.events.fold_asks). Killed in between, it loses those attempts and nothing
    else: everything handed over before is written, with every ask counted, and its last
    status row names what it held, which is what the supervisor's loss estimate counts."""
    from schoolgate.dns.stages.events import EventsStage
    from schoolgate.policy.types import Client, Decision, Role, Verdict
    from schoolgate.runner import RateTracker, estimate_loss
    from schoolgate.store.events.channel import BATCH_EVENTS

    decision = Decision(verdict=Verdict.BLOCK, rule_id="list:ads", clause="Online Safety Policy (filtering)",
                        reason="listed", role=Role.PUPIL, category="adverts")
    ipad = Client(ip="10.41.20.15", mac="02:00:00:00:20:15", device_id="KW-IPAD-12", person_id="p7",
                  role=Role.PUPIL)
    url = engine.url.render_as_string(hide_password=False)
    sending, reading = channel_pair()
    writer = EventWriter(engine, flush_interval=0.02)
    writer.start()
    pid = os.fork()
    if pid == 0:
        try:
            reading.close()
            own_engine = make_engine(url)
            channel = EventChannel(sending, own_engine, status=StatusTarget(site=SITE, name="dns.1", interval=60))
            stage = EventsStage(channel, SITE)
            stage.fold_asks(BATCH_EVENTS)
            channel.count_held(stage.held)
            ts = T0.timestamp()
            for n in range(10):  # ten attempts, each asked as A, AAAA and HTTPS, then a tick
                for qtype in (1, 28, 65):
                    stage.record(decision, ipad, ipad.ip, f"ads{n}.example", qtype, ts=ts + n)
            stage.flush_due(T0)
            channel.flush()
            for n in range(10, 15):  # five more attempts, fourteen asks, before the next tick
                for qtype in (1, 28, 65)[: 2 if n == 14 else 3]:
                    stage.record(decision, ipad, ipad.ip, f"ads{n}.example", qtype, ts=ts + n)
            channel._report_status()  # the status thread's report (each second in a worker)
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
    sending.close()
    thread = receive_all(reading, writer)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    thread.join(10)
    assert not thread.is_alive(), "the reader did not see the end of the stream"
    writer.stop()
    rows = stored(engine)
    assert sorted(row.host for row in rows) == sorted(f"ads{n}.example" for n in range(10))
    assert {(row.qtype, row.count) for row in rows} == {("A,AAAA,HTTPS", 3)}
    with Session(engine) as session:
        row = read_status(session, SITE)["dns.1"]
    events = row["stats"]["events"]
    # The channel counts events (an attempt each); held: the attempts folded, and their asks.
    assert events == {"submitted": 10, "handed": 10, "dropped": 0, "queued": 0, "held": 5, "held_queries": 14}
    lost, detail = estimate_loss([{"name": "dns.1", **row}], RateTracker())
    assert lost == 5 and "(14 queries)" in detail, detail
    reading.close()


def test_the_event_writing_process_writes_a_full_batch_in_one_transaction(engine: Engine) -> None:
    """The DNS event-writing process's batch size (measured in bench/dns_path.py): a burst of
    that many handed-over events is one flush, and every one of them is stored."""
    from schoolgate.dns.daemon import WRITER_BATCH_ROWS

    writer = EventWriter(engine, batch_size=WRITER_BATCH_ROWS)
    assert writer.submit_many([compact(record(i)) for i in range(WRITER_BATCH_ROWS)]) == WRITER_BATCH_ROWS
    assert writer.flush()
    stats = writer.stats()
    assert stats["flushes"] == 1 and stats["written"] == WRITER_BATCH_ROWS and stats["dropped"] == 0
    assert len(stored(engine)) == WRITER_BATCH_ROWS


def test_the_event_writing_process_connects_to_sqlite_with_its_own_page_cache(tmp_path: Any) -> None:
    """Its engine asks for WRITER_SQLITE_CACHE_KIB on every connection; another engine keeps
    SQLite's default, so the console and the other daemons do not grow by it."""
    from schoolgate.dns.daemon import WRITER_SQLITE_CACHE_KIB
    from schoolgate.store.db import make_engine

    url = f"sqlite:///{tmp_path / 'events.db'}"
    for engine, expected in ((make_engine(url, sqlite_cache_kib=WRITER_SQLITE_CACHE_KIB), -WRITER_SQLITE_CACHE_KIB),
                             (make_engine(url), -2000)):
        try:
            pooled = [engine.raw_connection() for _ in range(2)]  # each connection is set up alike
            try:
                for conn in pooled:
                    assert conn.cursor().execute("PRAGMA cache_size").fetchone()[0] == expected
            finally:
                for conn in pooled:
                    conn.close()
        finally:
            engine.dispose()


def gathering(reading: socket.socket, writer: EventWriter, gather: float, bursts: list[int],
              max_gathered: int = 100_000, room: Any = None) -> threading.Thread:
    """The writing process's loop reading in bursts, in a thread; each burst's size noted."""

    def submit(events: list[Any]) -> None:
        bursts.append(len(events))
        writer.submit_many(events)

    def run() -> None:
        for _ in receive_events(reading, submit, stop_after=lambda: None, gather=gather,
                                gathered=writer.write_now, max_gathered=max_gathered, room=room):
            pass

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_events_read_in_bursts_are_written_a_burst_a_transaction(engine: Engine) -> None:
    """Batches sent over a gathering period are read at once after it and written in one
    transaction, without waiting for a full batch or the writer's flush interval."""
    sending, reading = channel_pair()
    writer = EventWriter(engine, flush_interval=600, batch_size=10_000)  # only write_now writes
    writer.start()
    bursts: list[int] = []
    channel = EventChannel(sending, batch_events=10)
    gather = 1.0
    thread = gathering(reading, writer, gather, bursts)
    try:
        began = time.monotonic()
        for i in range(100):  # ten batches, sent well inside one gathering period
            channel.submit_compact(compact(record(i)))
        channel.flush()
        sent = time.monotonic() - began
        wait_until(lambda: writer.stats()["written"] == 100)
        if sent < gather / 2:  # a machine too busy to send 100 events in half a second proves nothing here
            assert bursts == [100]
            assert writer.stats()["flushes"] == 1
    finally:
        channel.stop()
        sending.close()
        thread.join(10)
    assert not thread.is_alive(), "the reader did not see the end of the stream"
    writer.stop()
    assert len(stored(engine)) == 100


def test_a_backlog_beyond_one_burst_is_read_without_waiting_again(engine: Engine) -> None:
    """What waits beyond `max_gathered` is read in the next bursts at once, not a gathering
    period later each: the writer keeps up with a backlog."""
    sending, reading = channel_pair()
    channel = EventChannel(sending, batch_events=50)
    for i in range(1000):  # waiting in the socket before the reader starts: a backlog
        channel.submit_compact(compact(record(i)))
    channel.flush()
    assert channel.stats()["handed"] == 1000
    writer = EventWriter(engine, flush_interval=600, batch_size=10_000)
    writer.start()
    bursts: list[int] = []
    gather = 3.0
    thread = gathering(reading, writer, gather, bursts, max_gathered=300)
    try:
        # Four bursts: waiting a gathering period before each would take 4 * gather; only the
        # last, which finds fewer than max_gathered waiting, waits.
        wait_until(lambda: writer.stats()["written"] == 1000, timeout=3 * gather)
        assert sum(bursts) == 1000 and max(bursts) <= 300 + 50  # a burst stops after the batch that reached the bound
    finally:
        channel.stop()
        sending.close()  # the stream ends: the reader returns within a gathering period
        thread.join(2 * gather)
    assert not thread.is_alive(), "the end of the stream went unnoticed while gathering"
    writer.stop()
    assert {row.host for row in stored(engine)} == {f"host{n}.example" for n in range(1000)}


def test_a_backlog_beyond_the_writers_bound_waits_in_the_socket_and_is_written_whole(db_path: Path) -> None:
    """While the database is locked the writer holds at most its bound; the reader asks it for
    room before each burst and leaves the rest in the socket (and the sender's own queue),
    so that nothing overflows, and once the database is back every event is written."""
    sending, reading = channel_pair()
    channel = EventChannel(sending, batch_events=50)
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holding the write lock
    engine = make_engine(f"sqlite:///{db_path}", busy_timeout_ms=50)
    writer = EventWriter(engine, flush_interval=600, batch_size=100, max_queue=400)
    writer.start()
    bursts: list[int] = []
    try:
        for i in range(3000):
            channel.submit_compact(compact(record(i)))
        channel.flush()
        thread = gathering(reading, writer, 0.05, bursts, max_gathered=100, room=writer.wait_for_room)
        # Failed attempts of the first batch, each a busy timeout and a back-off: time enough
        # for a reader that did not ask for room to read 20 bursts beyond the bound.
        wait_until(lambda: writer.stats()["errors"] >= 4)
        assert writer.stats()["overflow"] == 0
        assert writer.stats()["queued"] <= 400
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    def all_written() -> bool:
        channel.flush()  # what the socket could not take yet waited in the sender
        return bool(writer.stats()["written"] == 3000)

    wait_until(all_written, timeout=60)
    channel.stop()
    sending.close()
    thread.join(10)
    stats = writer.stop()
    engine.dispose()
    assert (stats["overflow"], stats["dropped"], stats["written"]) == (0, 0, 3000)
    assert len(stored(engine)) == 3000


def test_what_waits_in_the_socket_while_gathering_is_read_when_the_stream_ends(engine: Engine) -> None:
    sending, reading = channel_pair()
    writer = EventWriter(engine, flush_interval=600, batch_size=10_000)
    writer.start()
    bursts: list[int] = []
    thread = gathering(reading, writer, 0.5, bursts)
    channel = EventChannel(sending, batch_events=7)
    for i in range(50):
        channel.submit_compact(compact(record(i)))
    channel.stop()
    sending.close()
    thread.join(10)
    assert not thread.is_alive()
    writer.stop()
    assert sum(bursts) == 50 and len(stored(engine)) == 50


def test_write_now_writes_a_part_batch_at_once(engine: Engine) -> None:
    writer = EventWriter(engine, flush_interval=600, batch_size=10_000)
    writer.start()
    try:
        writer.submit_many([compact(record(i)) for i in range(5)])
        time.sleep(0.05)
        assert writer.stats()["written"] == 0  # neither a full batch nor the interval: it waits
        writer.write_now()
        wait_until(lambda: writer.stats()["written"] == 5)
    finally:
        writer.stop()
    assert writer.stats()["flushes"] == 1
