"""Event writer throughput against a real SQLite file, next to a raw sqlite3 reference.

Prints, for the writer's fast SQLite path (tuples straight to sqlite3) and for its Core
path (dicts through SQLAlchemy, the reference, forced with ``fast_rows=False``): rows/s
written and the writer thread's CPU time per row (the time it holds the GIL away from the
DNS daemon; the main thread only waits meanwhile). Then a bare sqlite3 executemany of the
same rows in the same batches (the reference), and the submit() cost per record on the
producer side. Each figure is the best of ``--repeat`` runs, and the load average is
printed: on a busy machine wall times swing, CPU time per row much less.

With ``--postgres`` it also starts a throw-away PostgreSQL server (Debian's binaries,
loopback only, durable settings; see tests/postgres_fixture.py) and compares the writer's
PostgreSQL fast path (tuples to psycopg's executemany) with its Core path there; the CPU
figure is then the client's side only.

Run: .venv/bin/python bench/store_events.py [ROWS] [--repeat N] [--postgres]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

from sqlalchemy import Engine

from schoolgate.store.db import init_db
from schoolgate.store.events import EventRecord, EventWriter, SqliteRows, UidSource

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
BATCH = 500


def records(n: int) -> list[EventRecord]:
    return [
        EventRecord(
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
        )
        for i in range(n)
    ]


def bench_writer(engine: Engine, recs: list[EventRecord], *, fast: bool) -> tuple[float, float, float]:
    """(submit seconds, write seconds, writer thread CPU seconds) into a migrated, empty database."""
    writer = EventWriter(engine, max_queue=len(recs) + 1, batch_size=BATCH, fast_rows=fast)
    start = time.perf_counter()
    for rec in recs:
        writer.submit(rec)
    submit_s = time.perf_counter() - start
    # The main thread sleeps in stop() meanwhile: the process's CPU time is the writer's.
    begun, cpu = time.perf_counter(), time.process_time()
    writer.start()
    stats = writer.stop(timeout=120)
    write_s, cpu = time.perf_counter() - begun, time.process_time() - cpu
    assert stats["written"] == len(recs), stats
    return submit_s, write_s, cpu


def bench_raw(path: Path, recs: list[EventRecord]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of plain sqlite3 inserting ready-made tuples, same SQL."""
    init_db(f"sqlite:///{path}").dispose()
    uids = UidSource()
    rows = [SqliteRows.build(r, uids) for r in recs]
    sql = SqliteRows.INSERT
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=NORMAL")
    start, cpu = time.perf_counter(), time.thread_time()
    for i in range(0, len(rows), BATCH):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, rows[i : i + BATCH])
        conn.execute("COMMIT")
    elapsed, cpu = time.perf_counter() - start, time.thread_time() - cpu
    conn.close()
    return elapsed, cpu


def postgres_module() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "tests" / "postgres_fixture.py"
    spec = importlib.util.spec_from_file_location("schoolgate_bench_postgres", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compare_paths(label: str, fresh: Callable[[str], Engine], recs: list[EventRecord], repeat: int) -> None:
    """Best of ``repeat`` rounds of the fast and the Core path, each into a fresh database."""
    results: dict[str, list[tuple[float, float, float]]] = {"fast": [], "core": []}
    for round_no in range(repeat):
        # Alternate the order so that neither path always runs on a warmer machine.
        order = ("fast", "core") if round_no % 2 == 0 else ("core", "fast")
        for name in order:
            engine = fresh(f"{name}{round_no}")
            try:
                results[name].append(bench_writer(engine, recs, fast=name == "fast"))
            finally:
                engine.dispose()
    n = len(recs)
    submit = min(r[0] for r in results["fast"] + results["core"])
    print(f"{label}: EventWriter.submit {submit / n * 1e6:.2f} us/record")
    for name, what in (("fast", "fast path"), ("core", "Core path (reference)")):
        wall = min(r[1] for r in results[name])
        cpu = min(r[2] for r in results[name])
        print(f"  {what:<24} {n / wall:>9,.0f} rows/s  writer CPU {cpu / n * 1e6:5.1f} us/row")
    fast_cpu = min(r[2] for r in results["fast"])
    core_cpu = min(r[2] for r in results["core"])
    print(f"  fast / Core writer CPU per row: {fast_cpu / core_cpu:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("rows", nargs="?", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--postgres", action="store_true", help="also measure on a throw-away PostgreSQL server")
    args = parser.parse_args()
    recs = records(args.rows)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    print(f"rows: {args.rows}, batch: {BATCH}, best of {args.repeat}")
    with tempfile.TemporaryDirectory() as tmp:
        compare_paths("SQLite", lambda name: init_db(f"sqlite:///{Path(tmp) / name}.db"), recs, args.repeat)
        raw = [bench_raw(Path(tmp) / f"raw{i}.db", recs) for i in range(args.repeat)]
    n = args.rows
    raw_wall, raw_cpu = min(r[0] for r in raw), min(r[1] for r in raw)
    print(f"  raw sqlite3 executemany  {n / raw_wall:>9,.0f} rows/s  CPU        {raw_cpu / n * 1e6:5.1f} us/row")
    if args.postgres:
        pg = postgres_module()
        bin_dir = pg.find_bin_dir()
        if bin_dir is None:
            raise SystemExit("--postgres needs Debian's postgresql package (/usr/lib/postgresql/*/bin)")
        server = pg.PostgresServer(bin_dir)
        server.start(fast=False)  # durable settings, as in production
        try:
            compare_paths("PostgreSQL", lambda name: init_db(server.create_database(name)), recs, args.repeat)
        finally:
            server.destroy()
    print(f"load average after:  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
