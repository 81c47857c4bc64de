"""The writer's ways of inserting rows store the same thing, on SQLite and PostgreSQL.

The writer sends tuples straight to the driver (``SqliteRows``, ``PostgresRows``); with
``fast_rows=False`` it goes through SQLAlchemy Core (``CoreRows``, the reference). These
tests write the same records both ways, into two databases of one backend, and compare
every column, as the driver reads it and as the ORM does.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from schoolgate.store.coltypes import UTCMicroseconds, from_utc_microseconds, posix_microseconds, utc_microseconds
from schoolgate.store.db import make_engine
from schoolgate.store.events import (
    CoreRows,
    EventRecord,
    EventWriter,
    PostgresRows,
    SqliteRows,
    insert_events,
    row_format,
)
from schoolgate.store.events.record import ASK_FACTS, COMPACT_FIELDS, compact, flags_text
from schoolgate.store.models import AccessEvent, Generation

SITE = "testschool"
T0 = datetime(2026, 11, 23, 10, 15, 5, 123456, tzinfo=UTC)
BST = timezone(timedelta(hours=1))
LONG_URL = "https://example.com/search?q=" + "a%20b" * 20_000 + "&x=\u00e9"


def base(n: int = 0, **changes: Any) -> EventRecord:
    rec = EventRecord(
        ts=T0 + timedelta(seconds=n),
        site=SITE,
        source="dns",
        client_ip=f"10.0.0.{n % 250 + 1}",
        host=f"host{n}.example",
        verdict="block",
        rule_id="social-media",
        role="pupil",
    )
    return replace(rec, **changes)


def odd_records() -> list[EventRecord]:
    """Records with every kind of value the daemons may hand over."""
    return [
        base(0),
        base(
            1,
            ts=datetime(2026, 6, 1, 9, 0, tzinfo=BST),  # summer time: stored as 08:00 UTC
            mac="02:00:00:00:00:07",
            device_id="LAP-07",
            device_name="Laptop 7 \u2014 Year 5",
            person_id="p42",
            person_name="Zo\u00eb O'Brien",
            qtype="AAAA",
            url=LONG_URL,
            search_term="<script>alert('x')</script> \U0001f600",
            clause="Social Media Policy \u00a79",
            service="facebook",
            category="social_media",
            flags=frozenset({"repeat", "circumvention"}),
            count=7,
            uid="given-by-the-caller",
        ),
        base(2, ts=datetime(2026, 11, 23, 10, 0, tzinfo=UTC)),  # no microseconds
        base(3, ts=datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC)),  # a year below 1000
        base(4, flags=" b , a ,, a", host="xn--bcher-kva.example"),  # flags given as text
        base(5, url="", search_term="", clause="", device_name=None, qtype=None),
        base(6, host="nul\x00byte.example", person_name="tab\tnew\nline"),
        base(7, host="bad\udcffname.example", search_term="\ud800 alone"),  # lone surrogates
    ]


COLUMNS = [c.name for c in AccessEvent.__table__.columns if c.name != "id"]


@pytest.fixture
def twin_url(db_backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A second migrated, empty database on the same backend as ``db_url``."""
    if db_backend == "postgresql":
        server = request.getfixturevalue("postgres_server")
        template = request.getfixturevalue("postgres_template")
        name = f"twin_{uuid.uuid4().hex[:12]}"
        yield server.create_database(name, template=template)
        server.drop_database(name)
        return
    path = tmp_path / "twin.db"
    shutil.copyfile(request.getfixturevalue("migrated_template"), path)
    yield f"sqlite:///{path}"


def raw_rows(engine: Engine) -> list[dict[str, Any]]:
    """Every column as the driver reads it back (no ORM conversion); on SQLite with the
    storage class of each value too."""
    names = list(COLUMNS)
    if engine.dialect.name == "sqlite":
        names += [f"typeof({c})" for c in COLUMNS]
    with engine.connect() as conn:
        result = conn.exec_driver_sql(f"SELECT {', '.join(names)} FROM events ORDER BY id")
        return [dict(zip(names, row, strict=True)) for row in result]


def orm_rows(engine: Engine) -> list[tuple[Any, ...]]:
    with Session(engine) as session:
        events = session.scalars(select(AccessEvent).order_by(AccessEvent.id)).all()
        return [tuple(getattr(e, c) for c in COLUMNS) for e in events]


def write_all(engine: Engine, records: list[EventRecord], *, fast: bool) -> dict[str, Any]:
    writer = EventWriter(engine, uid_prefix="same", batch_size=3, fast_rows=fast)
    for rec in records:
        writer.submit(rec)
    return writer.stop()


def test_utc_microseconds_are_what_utcmicroseconds_stores_on_sqlite() -> None:
    dialect = make_engine("sqlite://").dialect
    column = UTCMicroseconds()
    processor = column.dialect_impl(dialect).bind_processor(dialect)
    assert processor is not None
    for ts in (T0, datetime(2026, 6, 1, 9, 0, tzinfo=BST), datetime(999, 1, 2, tzinfo=UTC),
               datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)):
        stored = processor(ts)
        assert stored == utc_microseconds(ts)
        assert isinstance(stored, int)
        assert from_utc_microseconds(stored) == ts
        assert column.process_result_value(stored, dialect) == ts


def test_a_naive_time_is_refused_before_it_is_stored() -> None:
    dialect = make_engine("sqlite://").dialect
    with pytest.raises(ValueError, match="naive"):
        UTCMicroseconds().process_bind_param(datetime(2026, 6, 1, 9, 0), dialect)


@pytest.mark.parametrize(
    "posix",
    [
        T0.timestamp(),
        1_790_000_000.0,  # a whole second
        1_790_000_000.0000005,  # half a microsecond, as a float holds it
        1_790_000_000.9999996,  # rounds up into the next second
        1_790_000_000.9999994,
        1_700_000_000 + 0.5e-6 * 3,  # ties round to even
        1_700_000_000 + 0.5e-6 * 5,
        86_399.999_999_7,  # the last instant of a day, into the next
        -0.25,  # before 1970 (a clock set wrong)
        1e-7,
    ],
)
def test_posix_seconds_make_the_microseconds_their_datetime_makes(posix: float) -> None:
    """The writer turns a compact event's time into microseconds itself; they must be what
    UTCMicroseconds stores for the datetime of those seconds, carries and ties included."""
    assert posix_microseconds(posix) == utc_microseconds(datetime.fromtimestamp(posix, UTC))


def test_posix_seconds_make_the_microseconds_their_datetime_makes_over_a_year_of_random_times() -> None:
    import random

    rng = random.Random(14)
    for _ in range(20_000):
        posix = 1_780_000_000 + rng.random() * 31_536_000
        assert posix_microseconds(posix) == utc_microseconds(datetime.fromtimestamp(posix, UTC)), posix


def test_each_database_gets_its_fast_row_format(engine: Engine) -> None:
    expected = SqliteRows if engine.dialect.name == "sqlite" else PostgresRows
    assert row_format(engine) is expected
    assert row_format(engine, fast=False) is CoreRows


def test_fast_and_core_paths_store_identical_rows(engine: Engine, twin_url: str) -> None:
    core_engine = make_engine(twin_url)
    try:
        records = odd_records()
        fast = write_all(engine, records, fast=True)
        core = write_all(core_engine, records, fast=False)
        assert (fast["written"], fast["failed"]) == (core["written"], core["failed"]) == (len(records), 0)
        stored = raw_rows(engine)
        assert stored == raw_rows(core_engine)
        assert orm_rows(engine) == orm_rows(core_engine)
    finally:
        core_engine.dispose()

    by_host = {row["host"]: row for row in stored}
    assert len(by_host) == len(records)
    summer = by_host["host1.example"]
    assert summer["url"] == LONG_URL
    assert summer["flags"] == "circumvention,repeat"
    assert summer["uid"] == "given-by-the-caller"
    assert (summer["count"], summer["person_name"]) == (7, "Zo\u00eb O'Brien")
    assert by_host["xn--bcher-kva.example"]["flags"] == "a,b"
    assert by_host["host5.example"]["device_name"] is None
    assert by_host["host5.example"]["url"] == ""
    assert all(row["uid"] for row in stored)
    if engine.dialect.name == "sqlite":
        # Integer microseconds since 1970 (UTCMicroseconds): summer time stored as UTC.
        assert summer["ts"] == 1_780_300_800_000_000  # 2026-06-01 08:00:00 UTC
        assert by_host["host3.example"]["ts"] == utc_microseconds(datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC))
        assert by_host["host5.example"]["typeof(device_name)"] == "null"
        assert by_host["nul\x00byte.example"]["person_name"] == "tab\tnew\nline"
    else:
        assert summer["ts"] == datetime(2026, 6, 1, 8, 0)  # timestamp without time zone, UTC
        # PostgreSQL's text cannot hold NUL: escaped, like lone surrogates, not lost.
        assert "nul\\x00byte.example" in by_host
    # Lone surrogates cannot be stored as UTF-8: they are kept, escaped, instead of lost.
    assert by_host["bad\\udcffname.example"]["search_term"] == "\\ud800 alone"
    with Session(engine) as session:
        times = dict(session.execute(select(AccessEvent.host, AccessEvent.ts)).tuples().all())
    assert times["host1.example"] == datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
    assert times["host0.example"] == T0


def test_both_row_formats_bind_the_same_values(engine: Engine, twin_url: str) -> None:
    """Straight through the insert functions, without the writer (no odd text here)."""
    fast_format = row_format(engine)
    records = odd_records()[:-2]  # the last two hold text that neither insert can bind
    uids = iter(f"u{i}" for i in range(100))
    fast_rows = [fast_format.build(r, lambda: next(uids)) for r in records]
    uids = iter(f"u{i}" for i in range(100))
    core_rows = [CoreRows.build(r, lambda: next(uids)) for r in records]
    assert fast_format.as_dicts(fast_rows) == core_rows  # what the spool would hold
    core_engine = make_engine(twin_url)
    try:
        with engine.begin() as conn:
            assert fast_format.insert(conn, fast_rows) == len(records)
            assert fast_format.insert(conn, fast_rows) == 0  # all of them already there
        with core_engine.begin() as conn:
            assert insert_events(conn, core_rows) == len(records)
            assert insert_events(conn, core_rows) == 0
        assert raw_rows(engine) == raw_rows(core_engine)
    finally:
        core_engine.dispose()


def test_compact_events_make_the_rows_their_records_make(engine: Engine) -> None:
    """The DNS daemon hands compact events over; each row format makes the same row from one
    as from the record it stands for (a compact event carries no uid: the writer gives one)."""
    records = [replace(r, uid=None) for r in odd_records()]
    for rows in (row_format(engine), CoreRows):
        uids = [f"u{i}" for i in range(len(records))]
        from_records = [rows.build(r, lambda uid=uid: uid) for r, uid in zip(records, uids, strict=True)]
        from_compact_events = [
            rows.build_compact(compact(r), lambda uid=uid: uid) for r, uid in zip(records, uids, strict=True)
        ]
        assert from_compact_events == from_records, rows
        with pytest.raises(ValueError, match="fields"):
            rows.build_compact(compact(records[0])[:-1], lambda: "x")


def ask_of(event: tuple[Any, ...], *, flags_as_text: bool) -> tuple[Any, ...]:
    """The ask (record.Ask) that stands for a compact event: its facts' flags as the DNS events
    stage makes them (their stored text), or as the set a decision holds."""
    values = dict(zip(COMPACT_FIELDS, event, strict=True))
    text = flags_text(values["flags"]) if values["flags"] else ""
    values["flags"] = text if flags_as_text else frozenset(text.split(",")) - {""}
    return (values["ts"], values["host"], values["qtype"], values["count"], tuple(values[n] for n in ASK_FACTS))


@pytest.mark.parametrize("flags_as_text", [True, False], ids=["flags as text", "flags as a set"])
def test_asks_make_the_rows_their_compact_events_make(engine: Engine, flags_as_text: bool) -> None:
    """The DNS daemon hands its blocked queries over as asks; each row format makes from an ask
    the row of the compact event it stands for, and refuses what is not an ask."""
    records = [replace(r, uid=None) for r in odd_records()]
    for rows in (row_format(engine), CoreRows):
        uids = [f"u{i}" for i in range(len(records))]
        asks = [ask_of(compact(r), flags_as_text=flags_as_text) for r in records]
        from_asks = [rows.build_ask(a, lambda uid=uid: uid) for a, uid in zip(asks, uids, strict=True)]  # type: ignore[arg-type]
        from_compact_events = [
            rows.build_compact(compact(r), lambda uid=uid: uid) for r, uid in zip(records, uids, strict=True)
        ]
        assert from_asks == from_compact_events, rows
        whole = asks[1]
        for bad in (whole[:4], (*whole[:4], whole[4][:-1]), (*whole[:4], list(whole[4])), (*whole, "extra")):
            with pytest.raises(ValueError, match="ask"):
                rows.build_ask(bad, lambda: "x")  # type: ignore[arg-type]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "core"])
def test_duplicate_uids_are_stored_once(engine: Engine, fast: bool) -> None:
    writer = EventWriter(engine, batch_size=4, fast_rows=fast)
    # Twice within one batch, and again in later batches (a batch sent after a lost ack).
    for _ in range(3):
        for i in range(6):
            writer.submit(base(i, uid=f"dup-{i}"))
    stats = writer.stop()
    assert (stats["written"], stats["duplicates"], stats["failed"]) == (18, 12, 0)
    with Session(engine) as session:
        uids = session.scalars(select(AccessEvent.uid).order_by(AccessEvent.id)).all()
    assert uids == [f"dup-{i}" for i in range(6)]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "core"])
def test_one_bad_row_costs_only_itself(engine: Engine, fast: bool) -> None:
    writer = EventWriter(engine, batch_size=50, fast_rows=fast)
    for i in range(10):
        writer.submit(base(i))
    writer.submit(base(98, role=None))  # NOT NULL: refused by the database
    writer.submit(base(99, host=object()))  # no driver can send it
    writer.submit(base(97, host="caf\udce9.example"))  # surrogate: stored escaped
    stats = writer.stop()
    assert (stats["written"], stats["failed"], stats["dropped"]) == (11, 2, 2)
    with Session(engine) as session:
        hosts = set(session.scalars(select(AccessEvent.host)).all())
    assert hosts == {f"host{i}.example" for i in range(10)} | {"caf\\udce9.example"}


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "core"])
def test_text_wider_than_its_column_is_clipped_not_lost(engine: Engine, fast: bool) -> None:
    # A device can name itself anything over DHCP; PostgreSQL refuses VARCHAR overflow.
    width = AccessEvent.__table__.c.device_name.type.length
    writer = EventWriter(engine, batch_size=10, fast_rows=fast)
    writer.submit(base(1))
    writer.submit(base(2, device_name="x" * (width + 50), host="h" * 300 + ".example"))
    stats = writer.stop()
    assert (stats["written"], stats["failed"]) == (2, 0)
    with Session(engine) as session:
        stored = session.scalars(select(AccessEvent).order_by(AccessEvent.id)).all()
    name = stored[1].device_name or ""
    assert name.startswith("x" * 10)
    if engine.dialect.name == "postgresql":
        assert len(name) == width  # clipped to fit; SQLite keeps the whole text


def test_generation_counters_hold_event_ids_beyond_32_bits(engine: Engine) -> None:
    """Some generations are cursors over events.id, which is 64-bit on PostgreSQL."""
    big = 2**40 + 5
    with Session(engine) as session, session.begin():
        session.add(Generation(site=SITE, name="rollup_cursor", value=big, changed_at=T0))
    with Session(engine) as session:
        assert session.get(Generation, (SITE, "rollup_cursor")).value == big  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("flags", "text"),
    [
        (frozenset({"repeat", "safe_search"}), "repeat,safe_search"),
        (frozenset({"safe_search", "repeat"}), "repeat,safe_search"),
        ("safe_search, repeat,,", "repeat,safe_search"),
        ({"repeat", " "}, "repeat"),  # a plain set (unhashable) is still written
        (["b", "a", "a"], "a,b"),
        (frozenset(), ""),
    ],
)
def test_flags_are_stored_sorted_without_blanks_however_often_they_repeat(flags: Any, text: str) -> None:
    from schoolgate.store.events.record import flags_text

    assert flags_text(flags) == text
    assert flags_text(flags) == text  # the remembered answer is the same
