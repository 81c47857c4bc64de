"""Exactly-once delivery: event uids, the on-disk spool and its shipper, on SQLite and PostgreSQL.

"The database is away" is made real for both backends by renaming the events table: every
insert then fails as it would against an unreachable server, and renaming it back is the
server's return. (tests/trust stops and restarts a real PostgreSQL server instead.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from schoolgate.store.db import make_engine
from schoolgate.store.events import (
    EventRecord,
    EventWriter,
    UidSource,
    default_spool_path,
    insert_events,
    make_event_writer,
    spool_paths,
)
from schoolgate.store.models import AccessEvent
from schoolgate.store.spool import EventSpool

SITE = "testschool"
T0 = datetime(2026, 11, 23, 10, 15, 5, tzinfo=UTC)


def record(n: int, **changes: Any) -> EventRecord:
    base = EventRecord(
        ts=T0 + timedelta(milliseconds=n),
        site=SITE,
        source="dns",
        client_ip=f"10.0.0.{n % 250 + 1}",
        host=f"host{n}.example",
        verdict="block",
        rule_id="social-media",
        role="pupil",
    )
    return replace(base, **changes)


def stored(engine: Engine) -> list[tuple[str, str]]:
    """(uid, host) of every stored event, in id order."""
    with Session(engine) as session:
        return [
            (r.uid, r.host) for r in session.execute(select(AccessEvent.uid, AccessEvent.host).order_by(AccessEvent.id))
        ]


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


@contextmanager
def database_away(engine: Engine) -> Iterator[None]:
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE events RENAME TO events_away"))
    try:
        yield
    finally:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE events_away RENAME TO events"))


def test_uids_are_unique_and_ordered_per_writer() -> None:
    first, second = UidSource(), UidSource()
    a = [first() for _ in range(1000)]
    b = [second() for _ in range(1000)]
    assert len(set(a) | set(b)) == 2000
    assert a == sorted(a)
    assert first.prefix != second.prefix
    with pytest.raises(ValueError):
        UidSource("x" * 25)


def test_every_written_row_gets_a_uid_and_a_given_uid_is_kept(engine: Engine) -> None:
    writer = EventWriter(engine, uid_prefix="w1")
    writer.start()
    writer.submit(record(1))
    writer.submit(record(2, uid="from-elsewhere-7"))
    writer.stop()
    assert stored(engine) == [("w1-000000000001", "host1.example"), ("from-elsewhere-7", "host2.example")]


def test_an_event_sent_twice_is_stored_once(engine: Engine) -> None:
    writer = EventWriter(engine)
    for _ in range(2):
        writer.submit(record(1, uid="same-1"))
        writer.submit(record(2, uid="same-2"))
    writer.submit(record(3))
    stats = writer.stop()
    assert (stats["written"], stats["duplicates"], stats["dropped"]) == (5, 2, 0)
    assert sorted(host for _, host in stored(engine)) == ["host1.example", "host2.example", "host3.example"]


def test_insert_events_reports_the_rows_it_added(engine: Engine) -> None:
    rows = [record(i, uid=f"u{i}").row() for i in range(4)]
    with engine.begin() as conn:
        assert insert_events(conn, rows[:3]) == 3
    with engine.begin() as conn:
        assert insert_events(conn, rows) == 1
    with engine.begin() as conn:  # rows without a uid never clash
        assert insert_events(conn, [record(9).row(), record(9).row()]) == 2
    assert len(stored(engine)) == 6


def test_an_unreachable_database_spools_and_ships_in_order_when_back(engine: Engine, tmp_path: Path) -> None:
    spool_path = tmp_path / "spool" / "events.db"
    writer = EventWriter(engine, flush_interval=0.02, batch_size=50, spool_path=spool_path)
    writer.start()
    for i in range(40):
        writer.submit(record(i))
    wait_for(lambda: writer.stats()["written"] == 40)
    with database_away(engine):
        for i in range(40, 340):
            writer.submit(record(i))
        wait_for(lambda: writer.stats()["spooled"] == 300)
        stats = writer.stats()
        assert stats["queued"] == 0  # nothing held in memory while the database is away
        assert stats["spool_pending"] == 300
        assert EventSpool(spool_path).pending() == 300
        wait_for(lambda: writer.stats()["ship_errors"] >= 2)
    wait_for(lambda: writer.stats()["shipped"] == 300)
    for i in range(340, 360):  # back to writing directly
        writer.submit(record(i))
    stats = writer.stop()
    assert stats["submitted"] == stats["written"] + stats["spooled"] + stats["dropped"]
    assert (stats["dropped"], stats["duplicates"], stats["spool_pending"]) == (0, 0, 0)
    rows = stored(engine)
    assert [host for _, host in rows] == [f"host{i}.example" for i in range(360)]
    assert len({uid for uid, _ in rows}) == 360


def test_a_crash_between_the_central_commit_and_the_spool_delete_duplicates_nothing(
    engine: Engine, tmp_path: Path
) -> None:
    spool = EventSpool(tmp_path / "events.db")
    rows = [record(i, uid=f"crash-{i}").row() for i in range(10)]
    spool.append(rows)
    # The shipper of a process that then died: committed centrally, never deleted locally.
    with engine.begin() as conn:
        insert_events(conn, rows[:6])
    spool.close()
    writer = EventWriter(engine, spool_path=tmp_path / "events.db")
    assert writer.stats()["spool_pending"] == 10
    assert writer.ship(timeout=10)
    stats = writer.stop()
    assert (stats["shipped"], stats["duplicates"], stats["spool_pending"]) == (10, 6, 0)
    assert sorted(uid for uid, _ in stored(engine)) == sorted(f"crash-{i}" for i in range(10))


def test_a_stopping_writer_waits_its_turn_to_ship_what_a_sibling_left(engine: Engine, tmp_path: Path) -> None:
    # Two DNS workers share one spool. Rows one of them spools just after the other's last
    # shipping round must still be shipped at stop, not left for the next start.
    spool_path = tmp_path / "events.db"
    spool = EventSpool(spool_path)
    spool.append([record(i, uid=f"left-{i}").row() for i in range(7)])
    sibling = EventSpool(spool_path)
    assert sibling.try_acquire_shipping()  # the sibling is shipping right now
    releaser = threading.Timer(0.3, sibling.release_shipping)
    releaser.start()
    writer = EventWriter(engine, spool_path=spool_path)
    writer.start()
    try:
        stats = writer.stop(timeout=5)
    finally:
        releaser.join()
        sibling.close()
        spool.close()
    assert (stats["spool_pending"], stats["shipped"]) == (0, 7)
    assert sorted(uid for uid, _ in stored(engine)) == sorted(f"left-{i}" for i in range(7))


def test_a_writer_whose_shipping_failed_still_ships_at_stop_what_it_spooled_after_a_sibling_shipped(
    engine: Engine, tmp_path: Path
) -> None:
    # Two DNS workers share a spool through an outage. This one's shipping attempts failed
    # while the database was away; when it came back, its sibling shipped, and this one went
    # on spooling (the spool was never empty when it looked). At stop it must still ship what
    # it spooled last, not believe the database away and leave it (the trust outage test saw
    # spool_pending == 4 after stop on a loaded machine).
    spool_path = tmp_path / "events.db"
    writer = EventWriter(engine, flush_interval=0.02, spool_path=spool_path)
    writer.start()
    sibling = EventSpool(spool_path)
    with database_away(engine):
        for i in range(10):
            writer.submit(record(i, uid=f"ours-{i}"))
        wait_for(lambda: writer.stats()["spooled"] == 10 and writer.stats()["ship_errors"] >= 1)
        wait_for(sibling.try_acquire_shipping)  # the sibling takes its turn (between our rounds)
        for i in range(10, 20):
            writer.submit(record(i, uid=f"ours-{i}"))
        wait_for(lambda: writer.stats()["spooled"] == 20)
    # The database is back and the sibling ships the first ten, holding its turn a little longer.
    first = sibling.oldest(10)
    with engine.begin() as conn:
        assert insert_events(conn, [row for _, row in first]) == 10
    sibling.delete_through(first[-1][0])
    releaser = threading.Timer(0.3, sibling.release_shipping)
    releaser.start()
    try:
        stats = writer.stop(timeout=5)
    finally:
        releaser.join()
        sibling.close()
    assert (stats["spool_pending"], stats["shipped"], stats["dropped"]) == (0, 10, 0), stats
    assert sorted(uid for uid, _ in stored(engine)) == sorted(f"ours-{i}" for i in range(20))


def test_a_stop_while_the_database_is_still_away_does_not_wait_for_it(engine: Engine, tmp_path: Path) -> None:
    spool_path = tmp_path / "events.db"
    with database_away(engine):
        writer = EventWriter(engine, flush_interval=0.02, spool_path=spool_path)
        writer.start()
        for i in range(5):
            writer.submit(record(i))
        wait_for(lambda: writer.stats()["spooled"] == 5 and writer.stats()["ship_errors"] >= 1)
        started = time.monotonic()
        stats = writer.stop(timeout=5)
    # Nobody shipped since its own attempt failed: no waiting out the deadline for a database
    # that is away; the rows stay for the next start.
    assert time.monotonic() - started < 2.0
    assert (stats["spool_pending"], stats["dropped"]) == (5, 0)


def test_the_spool_outlives_the_process_and_the_next_start_ships_it(engine: Engine, tmp_path: Path) -> None:
    spool_path = tmp_path / "events.db"
    with database_away(engine):
        first = EventWriter(engine, flush_interval=0.02, spool_path=spool_path)
        first.start()
        for i in range(100):
            first.submit(record(i))
        stats = first.stop(timeout=2)
        assert (stats["spooled"], stats["dropped"], stats["spool_pending"]) == (100, 0, 100)
    second = EventWriter(engine, flush_interval=0.02, spool_path=spool_path)
    second.start()
    wait_for(lambda: second.stats()["shipped"] == 100)
    stats = second.stop()
    assert stats["spool_pending"] == 0
    assert [host for _, host in stored(engine)] == [f"host{i}.example" for i in range(100)]


def test_a_full_spool_drops_and_counts(engine: Engine, tmp_path: Path) -> None:
    spool_path = tmp_path / "events.db"
    with database_away(engine):
        writer = EventWriter(
            engine, flush_interval=0.02, batch_size=100, spool_path=spool_path, spool_max_bytes=64 * 1024
        )
        writer.start()
        for i in range(3000):
            writer.submit(record(i, url="https://example.org/" + "x" * 200))
            if i % 100 == 99:
                wait_for(lambda: writer.stats()["queued"] == 0)
        stats = writer.stop(timeout=1)
    assert stats["spool_full"] > 0
    assert stats["spooled"] > 0
    assert stats["submitted"] == stats["spooled"] + stats["dropped"] == 3000
    assert stats["dropped"] == stats["spool_full"]
    assert EventSpool(spool_path).pending() == stats["spooled"]


def test_a_spool_with_no_disk_reserve_left_refuses(tmp_path: Path) -> None:
    spool = EventSpool(tmp_path / "events.db", reserve_bytes=2**62)
    with pytest.raises(Exception, match="free on the disk"):
        spool.append([record(1).row()])
    assert spool.pending() == 0


def test_two_writers_sharing_one_spool_ship_every_event_once(engine: Engine, tmp_path: Path) -> None:
    spool_path = tmp_path / "events.db"
    writers = [EventWriter(engine, flush_interval=0.02, batch_size=40, spool_path=spool_path) for _ in range(2)]
    for writer in writers:
        writer.start()
    with database_away(engine):

        def produce(k: int) -> None:
            for i in range(500):
                writers[k].submit(record(k * 1000 + i))

        threads = [threading.Thread(target=produce, args=(k,)) for k in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wait_for(lambda: sum(w.stats()["spooled"] for w in writers) == 1000)
    wait_for(lambda: sum(w.stats()["shipped"] for w in writers) == 1000)
    totals = [w.stop() for w in writers]
    assert sum(s["duplicates"] for s in totals) == 0
    rows = stored(engine)
    assert len(rows) == len({uid for uid, _ in rows}) == 1000


def test_a_spooled_row_the_database_refuses_does_not_block_the_rest(engine: Engine, tmp_path: Path) -> None:
    spool = EventSpool(tmp_path / "events.db")
    good = [record(i, uid=f"g{i}").row() for i in range(5)]
    bad = {**record(99, uid="bad").row(), "role": None}  # NOT NULL: refused for ever
    spool.append([*good[:2], bad, *good[2:]])
    spool.close()
    writer = EventWriter(engine, spool_path=tmp_path / "events.db")
    assert writer.ship(timeout=10)
    stats = writer.stop()
    assert (stats["shipped"], stats["failed"], stats["spool_pending"]) == (5, 1, 0)
    assert sorted(uid for uid, _ in stored(engine)) == [f"g{i}" for i in range(5)]


def test_make_event_writer_spools_only_for_a_remote_database(engine: Engine, tmp_path: Path) -> None:
    config = SimpleNamespace(data_dir=tmp_path / "data")
    writer = make_event_writer(engine, config)
    try:
        if engine.dialect.name == "sqlite":
            assert writer.spool is None
        else:
            assert writer.spool is not None
            assert writer.spool.path == default_spool_path(tmp_path / "data")
            assert writer.spool.path.parent == tmp_path / "data"
    finally:
        writer.stop()
    explicit = make_event_writer(engine, None, spool_path=tmp_path / "mine.db", max_queue=10)
    assert explicit.spool is not None and explicit.max_queue == 10
    explicit.stop()


def test_a_plain_postgresql_url_gets_psycopg_and_connection_timeouts() -> None:
    engine = make_engine("postgresql://school@db.trust.example/schoolgate")
    try:
        assert engine.url.drivername == "postgresql+psycopg"
    finally:
        engine.dispose()
    keep = make_engine("postgresql+psycopg://school@db.trust.example/schoolgate?connect_timeout=20")
    try:
        assert keep.url.query["connect_timeout"] == "20"
    finally:
        keep.dispose()


def test_events_count_once_per_site_in_a_shared_database(engine: Engine) -> None:
    """Two schools' writers in one database: each row carries its site, no uid clashes."""
    writers = {site: EventWriter(engine) for site in ("school-a", "school-b")}
    for site, writer in writers.items():
        for i in range(300):
            writer.submit(record(i, site=site))
    for writer in writers.values():
        writer.stop()
    with Session(engine) as session:
        counts = dict(
            session.execute(
                select(AccessEvent.site, func.count(func.distinct(AccessEvent.uid))).group_by(AccessEvent.site)
            )
            .tuples()
            .all()
        )
    assert counts == {"school-a": 300, "school-b": 300}


def test_times_are_stored_as_utc_whatever_the_server_zone(engine: Engine, tmp_path: Path) -> None:
    """Summer time: the test server runs in Europe/London (BST in July), the column is UTC."""
    summer = datetime(2026, 7, 1, 12, 30, tzinfo=UTC)
    bst = summer.astimezone(ZoneInfo("Europe/London"))
    direct = EventWriter(engine)
    direct.submit(record(1, ts=bst, uid="direct"))
    direct.stop()
    spool = EventSpool(tmp_path / "events.db")
    spool.append([record(2, ts=bst, uid="spooled").row()])
    spool.close()
    shipper = EventWriter(engine, spool_path=tmp_path / "events.db")
    assert shipper.ship(timeout=10)
    shipper.stop()
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            assert conn.execute(text("SHOW TIME ZONE")).scalar() == "Europe/London"
        raw: dict[str, Any] = dict(conn.execute(text("SELECT uid, ts FROM events")).tuples().all())
    with Session(engine) as session:
        typed = dict(session.execute(select(AccessEvent.uid, AccessEvent.ts)).tuples().all())
    for uid in ("direct", "spooled"):
        value = raw[uid]
        if engine.dialect.name == "sqlite":  # microseconds since 1970 (UTCMicroseconds)
            assert value == int(summer.timestamp()) * 1_000_000, (uid, value)
        else:
            assert value.isoformat(sep=" ").startswith("2026-07-01 12:30:00"), (uid, value)
        assert typed[uid] == summer


def test_db_spool_cli_shows_and_ships_what_waits(
    config_file: Path, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    from schoolgate.cli import main

    assert main(["db", "spool", "--config", str(config_file)]) == 0
    assert "nothing waits" in capsys.readouterr().out
    assert spool_paths(config_file.parent / "data") == []
    spool = EventSpool(default_spool_path(config_file.parent / "data"))
    spool.append([record(i, uid=f"cli-{i}").row() for i in range(7)])
    spool.close()
    assert main(["db", "spool", "--config", str(config_file)]) == 0
    assert "7 events wait" in capsys.readouterr().out
    assert stored(engine) == []
    assert main(["db", "spool", "--config", str(config_file), "--ship"]) == 0
    assert "shipped 7 (0 were already there); 0 wait" in capsys.readouterr().out
    assert sorted(uid for uid, _ in stored(engine)) == [f"cli-{i}" for i in range(7)]


def test_a_damaged_spool_file_is_set_aside_and_logging_goes_on(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    path.write_bytes(b"this is not an SQLite database" * 100)
    writer = EventWriter(engine, spool_path=path)
    assert writer.spool is not None and writer.spool.pending() == 0
    assert [p.name.split("-")[0] for p in tmp_path.glob("events.db.broken-*")] == ["events.db.broken"]
    writer.submit(record(1))
    assert writer.stop()["written"] == 1


def test_a_central_server_that_never_answers_is_spooled_around(tmp_path: Path) -> None:
    """A listening socket that never speaks: the connection attempt times out, nothing hangs."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel completes handshakes; nobody ever reads or answers
        port = silent.getsockname()[1]
        engine = make_engine(f"postgresql+psycopg://school@127.0.0.1:{port}/central?connect_timeout=1")
        try:
            writer = make_event_writer(engine, SimpleNamespace(data_dir=tmp_path), flush_interval=0.02, batch_size=20)
            writer.start()
            started = time.monotonic()
            for i in range(100):
                assert writer.submit(record(i))
            submit_s = time.monotonic() - started
            wait_for(lambda: writer.stats()["spooled"] == 100, timeout=60)
            stats = writer.stop(timeout=2)
        finally:
            engine.dispose()
    assert submit_s < 1.0
    assert (stats["spooled"], stats["dropped"], stats["spool_pending"]) == (100, 0, 100)
    assert "timeout" in (stats["last_error"] or "").lower()
    assert EventSpool(default_spool_path(tmp_path)).pending() == 100


def test_one_schools_event_inserts_commit_in_id_order_on_postgresql(postgres_url: str) -> None:
    """A reader that keeps an id cursor per site (the rollups) must never see id N+1 before N.

    (SQLite has one writer at a time, so there ids are always committed in order.)
    """
    engine = make_engine(postgres_url)
    done: dict[str, int] = {}

    def insert(label: str, site: str) -> None:
        with engine.begin() as conn:
            insert_events(conn, [record(2, uid=label, site=site).row()])
        done[label] = event_id(label)

    def event_id(uid: str) -> int:
        with Session(engine) as session:
            return int(session.scalars(select(AccessEvent.id).where(AccessEvent.uid == uid)).one())

    def waiting_for_the_lock() -> bool:
        with engine.connect() as conn:
            waiting = conn.execute(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"))
            return bool(waiting.scalar())

    try:
        first = engine.connect()
        first_tx = first.begin()
        insert_events(first, [record(1, uid="first").row()])  # holds the site's lock until commit
        other_site = threading.Thread(target=insert, args=("other-school", "another-school"))
        other_site.start()
        other_site.join(30)
        assert "other-school" in done  # another school never waits for this one
        same_site = threading.Thread(target=insert, args=("second", SITE))
        same_site.start()
        wait_for(waiting_for_the_lock)
        assert "second" not in done
        first_tx.commit()
        first.close()
        same_site.join(30)
        assert done["second"] > event_id("first")
    finally:
        engine.dispose()


def test_text_with_lone_surrogates_is_spooled_escaped_and_shipped(engine: Engine, tmp_path: Path) -> None:
    writer = EventWriter(engine, spool_path=tmp_path / "events.db", batch_size=10)
    with database_away(engine):
        writer.submit(record(1))
        writer.submit(record(2, host="caf\udce9.example", search_term="\ud800"))
        assert writer.flush()
        assert writer.stats()["spooled"] == 2
    assert writer.ship()
    stats = writer.stop()
    assert (stats["shipped"], stats["dropped"]) == (2, 0)
    assert [host for _, host in stored(engine)] == ["host1.example", "caf\\udce9.example"]
