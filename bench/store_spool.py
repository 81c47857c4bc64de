"""The event spool of a trust appliance: how fast it fills, and how fast it ships to PostgreSQL.

Starts a throw-away PostgreSQL server (Debian's binaries, loopback, durable settings; see
tests/postgres_fixture.py) and prints, for the same rows in the same batch sizes:

- spool append rows/s (EventSpool.append) next to a bare sqlite3 executemany of the JSON rows;
- shipping rows/s (EventWriter.ship: spool -> central database, ON CONFLICT DO NOTHING, then
  delete from the spool) next to a bare psycopg executemany of the same INSERT (the reference);
- a second shipping of rows the database already has (the cost of a crash-and-resend).

Run: .venv/bin/python bench/store_spool.py [ROWS]
"""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

from schoolgate.store.db import init_db
from schoolgate.store.events import EventRecord, EventWriter
from schoolgate.store.spool import EventSpool

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
APPEND_BATCH = 500  # the writer's batch
SHIP_BATCH = 5000  # the shipper's batch


def postgres_module() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "tests" / "postgres_fixture.py"
    spec = importlib.util.spec_from_file_location("schoolgate_bench_postgres", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows(n: int, tag: str) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        row = EventRecord(
            ts=T0 + timedelta(milliseconds=i),
            site="bench",
            source="dns",
            client_ip=f"10.0.{i // 250 % 250}.{i % 250 + 1}",
            host=f"host{i % 5000}.example",
            verdict="block",
            rule_id="social-media",
            role="pupil",
            qtype="A",
            clause="Social Media Policy §9",
        ).row()
        row["uid"] = f"{tag}-{i:012x}"
        out.append(row)
    return out


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>10,.0f} rows/s"


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    pg = postgres_module()
    server = pg.PostgresServer(pg.find_bin_dir())
    server.start(fast=False)
    work = Path(tempfile.mkdtemp(prefix="schoolgate-bench-spool-"))
    try:
        url = server.create_database("bench")
        engine = init_db(url)

        # -- filling the spool
        spooled = rows(n, "spool")
        spool = EventSpool(work / "events.db")
        start = time.perf_counter()
        for i in range(0, n, APPEND_BATCH):
            spool.append(spooled[i : i + APPEND_BATCH])
        append_s = time.perf_counter() - start
        spool.close()
        raw = sqlite3.connect(work / "reference.db", isolation_level=None)
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute("PRAGMA synchronous=NORMAL")
        raw.execute("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, uid TEXT, row TEXT)")
        encoded = [(r["uid"], json.dumps({**r, "ts": r["ts"].isoformat()})) for r in spooled]
        start = time.perf_counter()
        for i in range(0, n, APPEND_BATCH):
            raw.execute("BEGIN IMMEDIATE")
            raw.executemany("INSERT INTO t (uid, row) VALUES (?, ?)", encoded[i : i + APPEND_BATCH])
            raw.execute("COMMIT")
        raw_append_s = time.perf_counter() - start
        raw.close()

        # -- shipping it
        writer = EventWriter(engine, spool_path=work / "events.db", ship_batch=SHIP_BATCH)
        start = time.perf_counter()
        assert writer.ship(timeout=600)
        ship_s = time.perf_counter() - start
        stats = writer.stop()
        assert stats["shipped"] == n and stats["duplicates"] == 0, stats

        # -- shipping it all again (as after a crash between the commit and the delete)
        again = EventSpool(work / "again.db")
        for i in range(0, n, APPEND_BATCH):
            again.append(spooled[i : i + APPEND_BATCH])
        again.close()
        writer = EventWriter(engine, spool_path=work / "again.db", ship_batch=SHIP_BATCH)
        start = time.perf_counter()
        assert writer.ship(timeout=600)
        resend_s = time.perf_counter() - start
        stats = writer.stop()
        assert stats["duplicates"] == n, stats
        engine.dispose()

        # -- the reference: psycopg alone, same rows, same batches, same statement
        import psycopg

        reference = rows(n, "reference")
        columns = list(reference[0])
        sql = (
            f"INSERT INTO events ({', '.join(columns)}) VALUES ({', '.join('%s' for _ in columns)}) "
            "ON CONFLICT (uid) DO NOTHING"
        )
        params = [
            tuple(r[c].astimezone(UTC).replace(tzinfo=None) if c == "ts" else r[c] for c in columns) for r in reference
        ]
        with psycopg.connect(server.dsn("bench")) as conn:
            start = time.perf_counter()
            for i in range(0, n, SHIP_BATCH):
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany(sql, params[i : i + SHIP_BATCH])  # type: ignore[arg-type]
            raw_ship_s = time.perf_counter() - start

        print(f"rows: {n}; writer batch {APPEND_BATCH}, shipper batch {SHIP_BATCH}; PostgreSQL on loopback, fsync on")
        print(f"spool append (EventSpool)               {rate(n, append_s)}")
        print(f"  reference: bare sqlite3 executemany    {rate(n, raw_append_s)}")
        print(f"ship spool -> PostgreSQL (EventWriter)  {rate(n, ship_s)}")
        print(f"  reference: bare psycopg executemany    {rate(n, raw_ship_s)}")
        print(f"ship again, all duplicates (skipped)    {rate(n, resend_s)}")
    finally:
        server.destroy()


if __name__ == "__main__":
    main()
