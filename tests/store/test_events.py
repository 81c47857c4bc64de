"""The batched event writer and the allowed-traffic aggregator, against real SQLite files."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.policy.types import Client, Decision, Role, Target, Verdict
from schoolgate.store.db import make_engine
from schoolgate.store.events import AllowedAggregator, EventRecord, EventWriter, StatusTarget, read_status
from schoolgate.store.events.record import ASK_FACTS, COMPACT_FIELDS, compact, from_ask, from_compact
from schoolgate.store.models import AccessEvent

SITE = "testschool"
T0 = datetime(2026, 11, 23, 10, 15, 5, tzinfo=UTC)


def record(n: int = 0, **changes: Any) -> EventRecord:
    base = EventRecord(
        ts=T0 + timedelta(milliseconds=n),
        site=SITE,
        source="dns",
        client_ip=f"10.0.{n // 250 % 250}.{n % 250 + 1}",
        host=f"host{n}.example",
        verdict="block",
        rule_id="social-media",
        role="pupil",
    )
    return replace(base, **changes)


def count_rows(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.scalar(select(func.count()).select_from(AccessEvent)) or 0)


def sum_counts(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.scalar(select(func.coalesce(func.sum(AccessEvent.count), 0))) or 0)


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_from_decision_maps_every_field() -> None:
    decision = Decision(
        verdict=Verdict.BLOCK,
        rule_id="social-media",
        clause="Social Media Policy §9",
        reason="pupils may not use social media",
        role=Role.PUPIL,
        service="facebook",
        category="social_media",
        flags=frozenset({"repeat", "circumvention"}),
    )
    client = Client(
        ip="10.0.0.7",
        mac="02:00:00:00:00:07",
        device_id="LAP-07",
        device_name="Laptop 7",
        person_id="p42",
        person_name="Sam Pupil",
        role=Role.PUPIL,
        identity_source="radius",
    )
    target = Target(host="www.facebook.com", url="https://www.facebook.com/x")
    rec = EventRecord.from_decision(
        decision, client, target, site=SITE, source="proxy", ts=T0, qtype="A", search_term="cats"
    )
    row = rec.row()
    assert row == {
        "ts": T0,
        "site": SITE,
        "source": "proxy",
        "client_ip": "10.0.0.7",
        "mac": "02:00:00:00:00:07",
        "device_id": "LAP-07",
        "device_name": "Laptop 7",
        "person_id": "p42",
        "person_name": "Sam Pupil",
        "role": "pupil",
        "host": "www.facebook.com",
        "qtype": "A",
        "url": "https://www.facebook.com/x",
        "search_term": "cats",
        "verdict": "block",
        "rule_id": "social-media",
        "clause": "Social Media Policy §9",
        "service": "facebook",
        "category": "social_media",
        "flags": "circumvention,repeat",
        "count": 1,
        "uid": None,
        "identity_source": "radius",
    }
    assert not rec.is_plain_allow


@pytest.mark.parametrize("flags", [frozenset({"repeat", "circumvention"}), "special_name", frozenset()])
def test_a_compact_event_stands_for_its_record_field_by_field(flags: frozenset[str] | str) -> None:
    full = record(7, mac="02:00:00:00:00:07", device_id="LAP-07", device_name="Laptop 7", person_id="p42",
                  person_name="Sam Pupil", qtype="AAAA", url="https://x.example/", search_term="cats",
                  clause="Social Media Policy §9", service="facebook", category="social_media", flags=flags,
                  count=3, identity_source="dhcp")
    event = compact(full)
    assert len(event) == len(COMPACT_FIELDS) and "uid" not in COMPACT_FIELDS
    assert isinstance(event[0], float)
    assert from_compact(event) == full
    assert from_compact(event).row() == full.row()
    with pytest.raises(ValueError, match="fields"):
        from_compact(event[:-1])


def _ask_of(event: tuple[Any, ...]) -> tuple[Any, ...]:
    """The ask a compact event is, by the fields' names."""
    values = dict(zip(COMPACT_FIELDS, event, strict=True))
    return (values["ts"], values["host"], values["qtype"], values["count"], tuple(values[n] for n in ASK_FACTS))


@pytest.mark.parametrize("flags", [frozenset({"repeat", "circumvention"}), "special_name", frozenset()])
def test_an_ask_stands_for_its_compact_event_field_by_field(flags: frozenset[str] | str) -> None:
    """The DNS daemon's asks (the time, name, type and count, and the shared facts) are made
    into the very compact events, and so records and rows, that they stand for."""
    full = record(7, mac="02:00:00:00:00:07", device_id="LAP-07", device_name="Laptop 7", person_id="p42",
                  person_name="Sam Pupil", qtype="A,AAAA,HTTPS", clause="Social Media Policy §9",
                  service="facebook", category="social_media", flags=flags, count=3, identity_source="dhcp")
    event = compact(full)
    assert set(ASK_FACTS) == set(COMPACT_FIELDS) - {"ts", "host", "qtype", "count"}
    assert from_ask(_ask_of(event)) == event
    assert from_compact(from_ask(_ask_of(event))).row() == full.row()


_FACTS = tuple(f"fact{i}" for i in range(len(ASK_FACTS)))


@pytest.mark.parametrize(
    ("ask", "error"),
    [
        ((), "an ask has 5 fields, not 0"),
        ((1.0, "a.example", "A", 1), "an ask has 5 fields, not 4"),
        ((1.0, "a.example", "A", 1, _FACTS, None), "an ask has 5 fields, not 6"),
        ((1.0, "a.example", "A", 1, list(_FACTS)), "facts are a tuple"),
        ((1.0, "a.example", "A", 1, _FACTS[:-1]), "facts are a tuple of 18 values"),
        ((1.0, "a.example", "A", 1, (*_FACTS, None)), "facts are a tuple of 18 values"),
        ((1.0, "a.example", "A", 1, "x" * len(ASK_FACTS)), "facts are a tuple"),
        ((1.0, "a.example", "A", 1, None), "facts are a tuple"),
    ],
)
def test_what_is_not_an_ask_is_refused(ask: tuple[Any, ...], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        from_ask(ask)


def test_compact_events_are_written_as_their_records_would_be(engine: Engine) -> None:
    """The DNS hot path hands over tuples; the rows are the same as from records."""
    writer = EventWriter(engine)
    writer.submit(compact(record(1, flags=frozenset({"b", "a"}), host="compact.example", identity_source="radius")))
    assert writer.submit_compact(compact(record(2, host="compact2.example")))
    writer.submit(record(3, flags="a,b", host="record.example", identity_source="radius"))
    assert writer.flush()
    with Session(engine) as session:
        rows = {row.host: row for row in session.scalars(select(AccessEvent))}
    assert set(rows) == {"compact.example", "compact2.example", "record.example"}
    assert rows["compact.example"].ts == T0 + timedelta(milliseconds=1)
    assert rows["compact.example"].flags == rows["record.example"].flags == "a,b"
    assert rows["compact.example"].identity_source == "radius"
    assert writer.stats()["written"] == 3


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        record(ts=datetime(2026, 1, 1))


def test_written_rows_read_back_as_submitted(engine: Engine) -> None:
    writer = EventWriter(engine)
    writer.start()
    writer.submit(record(1, flags="b,a", url="http://x.example/<script>"))
    writer.stop()
    with Session(engine) as session:
        row = session.scalars(select(AccessEvent)).one()
    assert row.ts == T0 + timedelta(milliseconds=1)
    assert row.flags == "a,b"
    assert row.url == "http://x.example/<script>"


def test_many_producers_below_the_bound_lose_nothing(engine: Engine) -> None:
    writer = EventWriter(engine, max_queue=50_000)
    writer.start()
    producers, per_producer = 4, 5000

    def produce(k: int) -> None:
        for i in range(per_producer):
            assert writer.submit(record(k * per_producer + i))

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = writer.stop()
    total = producers * per_producer
    assert stats["submitted"] == stats["written"] == total
    assert stats["dropped"] == 0
    assert count_rows(engine) == total


def test_overflow_is_counted_exactly(engine: Engine) -> None:
    writer = EventWriter(engine, max_queue=1000)  # not started: nothing drains yet
    accepted = [writer.submit(record(i)) for i in range(1500)]
    assert accepted.count(True) == 1000
    assert accepted[:1000] == [True] * 1000
    assert writer.stats()["overflow"] == 500
    stats = writer.stop()
    assert stats == stats | {"submitted": 1500, "written": 1000, "dropped": 500, "failed": 0}
    assert count_rows(engine) == 1000


def test_overflow_with_producers_racing_a_blocked_writer(engine: Engine, db_path: Path) -> None:
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    fast = make_engine(f"sqlite:///{db_path}", busy_timeout_ms=50)
    writer = EventWriter(fast, max_queue=2000, batch_size=300)
    writer.start()

    def produce(k: int) -> None:
        for i in range(1000):
            writer.submit(record(k * 1000 + i))

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    blocker.execute("ROLLBACK")
    blocker.close()
    stats = writer.stop(timeout=30)
    fast.dispose()
    assert stats["submitted"] == 4000
    assert stats["written"] == 2000
    assert stats["dropped"] == stats["overflow"] == 2000
    assert stats["submitted"] == stats["written"] + stats["dropped"]
    assert count_rows(engine) == 2000


def test_flush_by_size_without_waiting_for_the_interval(engine: Engine) -> None:
    writer = EventWriter(engine, flush_interval=600, batch_size=100)
    writer.start()
    for i in range(100):  # a full batch wakes the writer long before the interval
        writer.submit(record(i))
    wait_for(lambda: writer.stats()["written"] == 100)
    assert count_rows(engine) == 100
    for i in range(100, 150):  # less than a batch: waits for the interval, or stop()
        writer.submit(record(i))
    stats = writer.stop()
    assert stats["written"] == 150
    assert count_rows(engine) == 150


def test_flush_by_interval_with_few_events(engine: Engine) -> None:
    writer = EventWriter(engine, flush_interval=0.05, batch_size=10_000)
    writer.start()
    for i in range(5):
        writer.submit(record(i))
    wait_for(lambda: count_rows(engine) == 5)
    assert writer.stats()["flushes"] >= 1
    writer.stop()


def test_stop_flushes_everything(engine: Engine) -> None:
    writer = EventWriter(engine, flush_interval=600, batch_size=10_000)
    writer.start()
    for i in range(3210):
        writer.submit(record(i))
    stats = writer.stop()
    assert stats["written"] == 3210
    assert stats["queued"] == 0
    assert count_rows(engine) == 3210


def test_a_locked_database_delays_but_loses_nothing(engine: Engine, db_path: Path) -> None:
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holding the write lock
    fast = make_engine(f"sqlite:///{db_path}", busy_timeout_ms=50)
    writer = EventWriter(fast, flush_interval=0.02, batch_size=100)
    writer.start()
    try:
        for i in range(300):
            assert writer.submit(record(i))
        wait_for(lambda: writer.stats()["errors"] >= 2)
        assert writer.stats()["written"] == 0
        assert "locked" in (writer.stats()["last_error"] or "")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    wait_for(lambda: writer.stats()["written"] == 300)
    stats = writer.stop()
    fast.dispose()
    assert stats["dropped"] == 0
    assert count_rows(engine) == 300


def test_events_still_unwritable_at_stop_are_counted_as_failed(engine: Engine, db_path: Path) -> None:
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    fast = make_engine(f"sqlite:///{db_path}", busy_timeout_ms=20)
    writer = EventWriter(fast, flush_interval=0.02)
    writer.start()
    for i in range(120):
        writer.submit(record(i))
    stats = writer.stop(timeout=0.3)
    blocker.execute("ROLLBACK")
    blocker.close()
    fast.dispose()
    assert stats["written"] == 0
    assert stats["failed"] == stats["dropped"] == 120
    assert stats["submitted"] == stats["written"] + stats["dropped"]


def test_a_row_the_database_refuses_does_not_sink_its_batch(engine: Engine) -> None:
    writer = EventWriter(engine)
    for i in range(10):
        writer.submit(record(i))
    writer.submit(record(99, role=None))  # NOT NULL violated: bad data, not a bad database
    stats = writer.stop()
    assert stats["written"] == 10
    assert stats["failed"] == stats["dropped"] == 1
    assert count_rows(engine) == 10


def test_counters_are_reported_in_daemon_status(engine: Engine, sessions: sessionmaker[Session]) -> None:
    started = datetime.now(UTC)
    status = StatusTarget(
        site=SITE, name="dns", interval=0.0, pid=4242, started_at=started, extra=lambda: {"queries": 7}
    )
    writer = EventWriter(engine, flush_interval=0.02, status=status)
    writer.start()
    for i in range(20):
        writer.submit(record(i))

    def reported_while_running() -> bool:
        with sessions() as session:
            row = read_status(session, SITE).get("dns")
        return row is not None and row["stats"]["events"]["written"] == 20

    wait_for(reported_while_running)
    writer.stop()
    with sessions() as session:
        daemons = read_status(session, SITE)
    dns = daemons["dns"]
    assert dns["pid"] == 4242
    assert dns["started_at"] == started
    assert dns["stats"]["queries"] == 7
    assert dns["stats"]["events"]["written"] == 20


def allowed(n: int, *, client: str = "10.0.0.5", host: str = "bbc.co.uk", ts: datetime = T0) -> EventRecord:
    return replace(record(n), client_ip=client, host=host, verdict="allow", rule_id="default", ts=ts)


def test_aggregator_folds_allowed_traffic_per_client_domain_minute(engine: Engine) -> None:
    writer = EventWriter(engine)
    agg = AllowedAggregator(writer, clock=lambda: T0)
    for i in range(50):
        agg.submit(allowed(i, ts=T0 + timedelta(seconds=i % 50)))  # same minute
    for i in range(7):
        agg.submit(allowed(i, client="10.0.0.6"))
    for i in range(3):
        agg.submit(allowed(i, host="cbeebies.com"))
    agg.submit(allowed(0, ts=T0 + timedelta(minutes=1)))  # the next minute
    for i in range(4):
        agg.submit(record(i))  # blocked: every one kept
    agg.submit(replace(allowed(0), flags="safeguarding"))  # flagged: kept in full
    assert agg.pending() == 4
    # What a kill would lose now is reported beside the writer's ledger.
    assert agg.held() == (4, 61)
    assert (writer.stats()["held"], writer.stats()["held_queries"]) == (4, 61)
    assert agg.flush_due(T0 + timedelta(minutes=1)) == 3  # the finished minute only
    assert agg.held() == (1, 1)
    agg.stop()
    stats = writer.stop()
    assert stats["written"] == 4 + 4 + 1
    assert count_rows(engine) == 9
    assert sum_counts(engine) == 50 + 7 + 3 + 1 + 4 + 1
    with Session(engine) as session:
        bbc = session.scalars(
            select(AccessEvent).where(AccessEvent.host == "bbc.co.uk", AccessEvent.client_ip == "10.0.0.5")
        ).all()
    assert sorted(r.count for r in bbc if not r.flags) == [1, 50]


def test_aggregator_thread_hands_over_at_the_minute_boundary(engine: Engine) -> None:
    now = [T0.replace(second=59, microsecond=900_000)]
    writer = EventWriter(engine, flush_interval=0.02)
    writer.start()
    agg = AllowedAggregator(writer, clock=lambda: now[0])
    agg.submit(allowed(0, ts=now[0]))
    agg.submit(allowed(1, ts=now[0]))
    now[0] = now[0] + timedelta(seconds=1)  # the clock passes the boundary
    agg.start()
    wait_for(lambda: count_rows(engine) == 1)
    agg.stop()
    writer.stop()
    assert sum_counts(engine) == 2


def test_aggregator_hands_everything_over_when_too_many_buckets(engine: Engine) -> None:
    writer = EventWriter(engine)
    agg = AllowedAggregator(writer, max_buckets=10)
    for i in range(25):
        agg.submit(allowed(i, host=f"h{i}.example"))
    assert agg.pending() <= 10
    assert agg.held() == (agg.pending(), agg.pending())
    agg.stop()
    writer.stop()
    assert count_rows(engine) == 25


def test_a_malformed_record_is_counted_and_the_rest_written(engine: Engine) -> None:
    writer = EventWriter(engine, batch_size=3)
    writer.submit(record(1))
    writer.submit(record(2, flags=42))  # not a string or a set: cannot become a row
    writer.submit(record(3))
    stats = writer.stop()
    assert (stats["written"], stats["failed"], stats["dropped"]) == (2, 1, 1)
    assert count_rows(engine) == 2


def test_records_submitted_after_stop_are_counted_not_lost_silently(engine: Engine) -> None:
    writer = EventWriter(engine)
    writer.start()
    writer.submit(record(1))
    writer.stop()
    assert writer.submit(record(2)) is False
    stats = writer.stats()
    assert (stats["submitted"], stats["written"], stats["dropped"], stats["late"]) == (2, 1, 1, 1)
    with pytest.raises(RuntimeError, match="already stopped"):
        writer.start()


def test_a_failing_database_keeps_the_batch_until_it_recovers(engine: Engine, db_path: Path) -> None:
    raw = sqlite3.connect(db_path, isolation_level=None)
    raw.execute("ALTER TABLE events RENAME TO events_away")  # every insert now fails at once
    writer = EventWriter(engine, flush_interval=0.02, batch_size=50)
    writer.start()
    try:
        for i in range(120):
            writer.submit(record(i))
        wait_for(lambda: writer.stats()["errors"] >= 3)
        assert "no such table" in (writer.stats()["last_error"] or "")
        assert writer.stats()["queued"] == 120
    finally:
        raw.execute("ALTER TABLE events_away RENAME TO events")
        raw.close()
    wait_for(lambda: writer.stats()["written"] == 120)
    stats = writer.stop()
    assert (stats["dropped"], count_rows(engine)) == (0, 120)
