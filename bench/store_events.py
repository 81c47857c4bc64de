"""Event writer throughput against a real SQLite file, next to a raw sqlite3 reference.

Prints: submit() cost per record on the producer side, rows/s written by EventWriter, and
rows/s of a bare sqlite3 executemany of the same rows in the same batches (the reference).
Run: .venv/bin/python bench/store_events.py [ROWS]
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from schoolgate.store.db import init_db
from schoolgate.store.events import EventRecord, EventWriter

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


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


def bench_writer(path: Path, recs: list[EventRecord], batch: int) -> tuple[float, float]:
    engine = init_db(f"sqlite:///{path}")
    writer = EventWriter(engine, max_queue=len(recs) + 1, batch_size=batch)
    start = time.perf_counter()
    for rec in recs:
        writer.submit(rec)
    submit_s = time.perf_counter() - start
    writer.start()
    stats = writer.stop(timeout=120)
    total_s = time.perf_counter() - start
    engine.dispose()
    assert stats["written"] == len(recs), stats
    return submit_s, total_s - submit_s


def bench_raw(path: Path, recs: list[EventRecord], batch: int) -> float:
    init_db(f"sqlite:///{path}").dispose()
    rows = [r.row() for r in recs]
    for row in rows:
        row["ts"] = row["ts"].replace(tzinfo=None).isoformat(sep=" ")
    cols = list(rows[0])
    sql = f"INSERT INTO events ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=NORMAL")
    start = time.perf_counter()
    for i in range(0, len(rows), batch):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, [tuple(r[c] for c in cols) for r in rows[i : i + batch]])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    batch = 500
    recs = records(n)
    with tempfile.TemporaryDirectory() as tmp:
        submit_s, write_s = bench_writer(Path(tmp) / "writer.db", recs, batch)
        raw_s = bench_raw(Path(tmp) / "raw.db", recs, batch)
    print(f"rows: {n}, batch: {batch}")
    print(f"EventWriter.submit: {submit_s / n * 1e6:.2f} us/record ({n / submit_s:,.0f}/s)")
    print(f"EventWriter write:  {n / write_s:,.0f} rows/s")
    print(f"raw sqlite3 (reference): {n / raw_s:,.0f} rows/s")
    print(f"writer / reference: {raw_s / write_s:.2f}")


if __name__ == "__main__":
    main()
